"""Reward throughput: items per second scored in process (num_workers=0) vs the worker pool.

Items: every MATH500 gold written as "... so the answer is \\boxed{GOLD}." and the same with a
wrong value (gold + 1 for a number, else another problem's gold), each scored against its gold:
1,000 items, 500 distinct golds, so each gold is parsed once. Before the clock starts, workers
are started (reported on its own) and warmed on the AIME24, AMC23 and first 100 OlympiadBench
golds, so the parser's lazily built tables are warm as in a long training run while every
MATH500 gold is still new to the gold cache. One timed pass per case.

    python benchmarks/bench_verify.py [--workers 0 2 4]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_results, machine_name, print_table  # noqa: E402

from gvm.verify import Verifier, normalize_gold  # noqa: E402

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")
WARMUP_FILES = {"aime24": 30, "amc23": 40, "olympiad_bench": 100}  # file -> rows


def _golds(name: str, rows: int | None = None) -> list:
    with open(EVAL_DIR / f"{name}.jsonl") as f:
        return [json.loads(line)["answer"] for line in f][:rows]


def _first(gold) -> str:
    normalized = normalize_gold(gold)
    return normalized if isinstance(normalized, str) else normalized[0]


def warmup_items() -> tuple[list[str], list]:
    golds = [g for name, rows in WARMUP_FILES.items() for g in _golds(name, rows)]
    return [f"... so the answer is \\boxed{{{_first(g)}}}." for g in golds], golds


def math500_items(seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, golds): each gold with its own value, then with a different value."""
    golds = _golds("math500")
    normalized = [normalize_gold(g) for g in golds]
    rng = random.Random(seed)

    def wrong(gold: str) -> str:
        if _NUMBER_RE.fullmatch(gold):
            return str(Decimal(gold) + 1)
        return rng.choice([other for other in normalized if other != gold])

    completions = [f"... so the answer is \\boxed{{{g}}}." for g in normalized]
    completions += [f"... so the answer is \\boxed{{{wrong(g)}}}." for g in normalized]
    return completions, golds + golds


def bench(num_workers: int, completions: list[str], golds: list[str]) -> dict:
    start = time.perf_counter()
    verifier = Verifier(num_workers=num_workers).start()
    startup_s = time.perf_counter() - start
    with verifier:
        verifier.score(*warmup_items())
        verifier.stats.clear()
        t0 = time.perf_counter()
        rewards = verifier.score(completions, golds)
        seconds = time.perf_counter() - t0
    half = len(rewards) // 2
    return {"items_per_s": len(completions) / seconds, "seconds": seconds, "startup_s": startup_s,
            "own_accepted": sum(rewards[:half]) / half, "wrong_accepted": sum(rewards[half:]) / half,
            "stats": dict(verifier.stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    args = parser.parse_args()
    if not EVAL_DIR.is_dir():
        raise SystemExit(f"evaluation data not found at {EVAL_DIR}")
    completions, golds = math500_items()
    print(f"{machine_name()}, load average {os.getloadavg()[0]:.1f}, {len(completions)} items")
    table, rows = [], []
    for k in args.workers:
        r = bench(k, completions, golds)
        case = "in-process" if k == 0 else f"pool-{k}"
        table.append([case, f"{r['items_per_s']:.1f}", f"{r['seconds']:.2f}", f"{r['startup_s']:.2f}",
                      f"{r['own_accepted']:.3f}", f"{r['wrong_accepted']:.3f}", r["stats"]])
        rows += [{"case": case, "metric": "items_per_s", "value": round(r["items_per_s"], 2), "unit": "items/s"},
                 {"case": case, "metric": "startup_s", "value": round(r["startup_s"], 3), "unit": "s"}]
    print_table(["case", "items/s", "seconds", "startup s", "own acc.", "wrong acc.", "reasons"], table)
    append_results("bench_verify", rows)


if __name__ == "__main__":
    main()
