"""Reward throughput: items per second scored in process (num_workers=0) vs the worker pool.

Items: every MATH500 gold written as "... so the answer is \\boxed{GOLD}." and the same with a
wrong value (gold + 1 for a number, else another problem's gold), each scored against its gold:
1,000 items, 500 distinct golds, so each gold is parsed once. Workers are started and warmed on
a few unrelated answers before the clock starts; startup is reported on its own.

    python benchmarks/bench_verify.py [--workers 0 2 4] [--reps 1]
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
WARMUP = ([r"\boxed{\frac{3}{4}}", r"\boxed{(1, \sqrt{2})}", r"\boxed{x^2 + 1}", r"\boxed{[0, \infty)}"],
          ["0.75", r"(1, \sqrt{2})", "1 + x^2", r"[0, \infty)"])


def math500_items(seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, golds): each gold with its own value, then with a different value."""
    with open(EVAL_DIR / "math500.jsonl") as f:
        golds = [json.loads(line)["answer"] for line in f]
    normalized = [normalize_gold(g) for g in golds]
    rng = random.Random(seed)

    def wrong(gold: str) -> str:
        if _NUMBER_RE.fullmatch(gold):
            return str(Decimal(gold) + 1)
        return rng.choice([other for other in normalized if other != gold])

    completions = [f"... so the answer is \\boxed{{{g}}}." for g in normalized]
    completions += [f"... so the answer is \\boxed{{{wrong(g)}}}." for g in normalized]
    return completions, golds + golds


def bench(num_workers: int, completions: list[str], golds: list[str], reps: int) -> dict:
    start = time.perf_counter()
    verifier = Verifier(num_workers=num_workers).start()
    verifier.score(*WARMUP)
    startup_s = time.perf_counter() - start
    times = []
    with verifier:
        for _ in range(reps):
            t0 = time.perf_counter()
            rewards = verifier.score(completions, golds)
            times.append(time.perf_counter() - t0)
    half = len(rewards) // 2
    return {"items_per_s": len(completions) / min(times), "seconds": min(times), "startup_s": startup_s,
            "own_accepted": sum(rewards[:half]) / half, "wrong_accepted": sum(rewards[half:]) / half,
            "stats": dict(verifier.stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--reps", type=int, default=1, help="timed passes per case; the fastest counts")
    args = parser.parse_args()
    if not EVAL_DIR.is_dir():
        raise SystemExit(f"evaluation data not found at {EVAL_DIR}")
    completions, golds = math500_items()
    print(f"{machine_name()}, load average {os.getloadavg()[0]:.1f}, {len(completions)} items")
    table, rows = [], []
    for k in args.workers:
        r = bench(k, completions, golds, args.reps)
        case = "in-process" if k == 0 else f"pool-{k}"
        table.append([case, f"{r['items_per_s']:.1f}", f"{r['seconds']:.2f}", f"{r['startup_s']:.2f}",
                      f"{r['own_accepted']:.3f}", f"{r['wrong_accepted']:.3f}", r["stats"]])
        rows += [{"case": case, "metric": "items_per_s", "value": round(r["items_per_s"], 2), "unit": "items/s"},
                 {"case": case, "metric": "startup_s", "value": round(r["startup_s"], 3), "unit": "s"}]
    print_table(["case", "items/s", "seconds", "startup s", "own acc.", "wrong acc.", "reasons"], table)
    append_results("bench_verify", rows)


if __name__ == "__main__":
    main()
