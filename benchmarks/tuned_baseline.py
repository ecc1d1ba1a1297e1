"""Samples to a tuned baseline's final accuracy, across several convergence benchmarks.

bench_convergence.py compares methods at one learning rate, against uniform at that rate. A gain
found that way can be a gain against an untuned uniform. This script reads several of its JSON
results (the same task and seeds, e.g. one per learning rate) and takes as the baseline the
uniform arm with the highest mean final accuracy (over the seeds every candidate ran), whatever
its samples per prompt and learning rate: uniform tuned on both, as a peer would run it. Arms
with fewer samples per iteration run more iterations to uniform's total, so their finals are
compared at (at least) the same samples. Each arm
(method x file) is then scored the same way as there: per seed, the baseline's samples to its own
final accuracy over the arm's samples to that accuracy (monotone fit, 0 when the arm never gets
there), with the median and a bootstrap 95 % interval over seeds. A run that started from
another accuracy before RL than its seed's other runs (another machine, warm start, a damaged
folder) is not paired with them: it is left out, and the report says so.

    python benchmarks/tuned_baseline.py benchmarks/results/bench_convergence_eight_grpo.json \
        benchmarks/results/bench_convergence_lr4e-4_grpo.json --tag _tuned_grpo

Results: a table on stdout, benchmarks/results/tuned_baseline<tag>.{md,json}, rows of results.csv.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import (bootstrap_median, bootstrap_pooled_ratio, cost_to_reach, final_accuracy, mean_and_se,  # noqa: E402
                    paired_ratios, ratio_text)
from harness import RESULTS_DIR, append_results, machine_name  # noqa: E402

Curve = list[tuple[float, float]]      # (generated samples, held-out accuracy) at each evaluation


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, help="bench_convergence<tag>.json files")
    p.add_argument("--baselines", default="uniform*",
                   help="comma-separated method patterns (fnmatch) that may serve as the baseline, the best of "
                        "them taken; the default, every uniform sampler: n, n/2, n/4, 2n, @K, @KxP per prompt, "
                        "with or without replay (-rp)")
    p.add_argument("--min-seeds", type=int, default=3,
                   help="a baseline candidate needs this many seeds (fewer cannot tune it; it is still scored)")
    p.add_argument("--tag", default="", help="suffix of the result files (tuned_baseline<tag>.md)")
    args = p.parse_args(argv)
    missing = [str(path) for path in args.results if not path.is_file()]
    if missing:
        p.error(f"results not found: {missing}; run benchmarks/bench_convergence.py first")
    return args


def load_arms(paths: list[Path]) -> dict[str, dict[str, dict[int, Curve]]]:
    """{algorithm: {"<method> lr <lr>": {seed: curve}}} from bench_convergence JSON files."""
    arms: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        lr = data["args"]["lr"]
        for algorithm, by_method in data["curves"].items():
            for method, by_seed in by_method.items():
                label = f"{method} lr {lr:g}"
                curves = {int(seed): [(float(x[0]), float(x[2])) for x in c] for seed, c in by_seed.items()}
                known = arms.setdefault(algorithm, {}).setdefault(label, {})
                clash = [s for s in curves if s in known and known[s] != curves[s]]
                if clash:
                    raise SystemExit(f"{label} ({algorithm}), seeds {clash}: two files hold different runs of "
                                     f"the same setting ({path}); pass one of them")
                known.update(curves)       # the same runs reused by two benchmarks, or more seeds of one
    return arms


def unpaired(arms: dict[str, dict[int, Curve]]) -> list[tuple[str, int, float, float]]:
    """(arm, seed, its accuracy before RL, the seed's) of the runs that cannot be paired by seed.

    Pairing by seed holds only where every run of a seed started from the same model on the same
    held-out set, so at the same accuracy before RL. A run on another CPU (its own rounding, its
    own warm start), with other warm-start settings, or from a damaged folder starts elsewhere:
    the seed's start is the one most of its runs share, and the others are left out."""
    starts: dict[int, list[float]] = {}
    for by_seed in arms.values():
        for seed, curve in by_seed.items():
            starts.setdefault(seed, []).append(curve[0][1])
    common = {seed: statistics.mode(values) for seed, values in starts.items()}
    return [(label, seed, curve[0][1], common[seed]) for label, by_seed in arms.items()
            for seed, curve in by_seed.items() if curve[0][1] != common[seed]]


def method_of(label: str) -> str:
    return label.split(" lr ")[0]


def final_of(curve: Curve) -> float:
    return final_accuracy([a for _, a in curve])


def samples_to(curve: Curve, target: float) -> float | None:
    costs, accuracies = zip(*curve)
    return cost_to_reach(costs, accuracies, target)


def best_baseline(arms: dict[str, dict[int, Curve]], baselines: list[str], *,
                  min_seeds: int) -> tuple[str, list[int], list[str]]:
    """The candidate (an arm whose method matches a pattern of `baselines`, run on at least
    `min_seeds` seeds) with the highest mean final accuracy over the seeds all candidates ran,
    those seeds (comparing means over different seeds would pick a lucky seed, not a setting) and
    the candidates."""
    candidates = [label for label in arms if len(arms[label]) >= min_seeds
                  and any(fnmatch.fnmatchcase(method_of(label), pattern) for pattern in baselines)]
    if not candidates:
        raise SystemExit(f"no baseline among the arms with >= {min_seeds} seeds: --baselines {baselines}, "
                         f"arms {sorted(arms)}")
    seeds = sorted(set.intersection(*(set(arms[label]) for label in candidates)))
    if not seeds:
        raise SystemExit(f"the baselines {candidates} share no seed")
    best = max(candidates, key=lambda label: statistics.mean(final_of(arms[label][s]) for s in seeds))
    return best, seeds, candidates


def by_evaluation(by_seed: dict[int, Curve]) -> dict[int, dict[int, tuple[float, float]]]:
    """{seed: {evaluation index: (samples, accuracy)}}: the runs as curves.seed_mean_curve reads them."""
    return {seed: dict(enumerate(curve)) for seed, curve in by_seed.items()}


def score(arms: dict[str, dict[int, Curve]], baseline: str) -> dict:
    """Per arm: per-seed ratios (baseline's samples to its final / the arm's), their median and
    interval, how many seeds reached the target, the final accuracy, and the seed-averaged reading
    (curves.bootstrap_pooled_ratio: the baseline's mean curve's final, reached on each one's mean
    curve), which one seed's noisy final cannot zero."""
    base = arms[baseline]
    base_runs = by_evaluation(base)
    targets = {s: final_of(c) for s, c in base.items()}
    base_cost = {s: samples_to(c, targets[s]) for s, c in base.items()}
    out = {}
    for label, by_seed in arms.items():
        seeds = [s for s in by_seed if s in base]
        reach = {s: (samples_to(by_seed[s], targets[s]), by_seed[s][-1][0]) for s in seeds}
        ratios = paired_ratios({s: base_cost[s] for s in seeds}, reach)
        out[label] = {"per_seed": ratios, "ratio": bootstrap_median(list(ratios.values())),
                      "reached": sum(r is not None for r, _ in reach.values()), "seeds": seeds,
                      "final": mean_and_se([final_of(by_seed[s]) for s in seeds]),
                      "pooled": bootstrap_pooled_ratio(base_runs, base_runs, by_evaluation(by_seed))}
    return out


def report(summary: dict) -> list[str]:
    lines = []
    for algorithm, s in summary.items():
        lines += [f"### {algorithm}", "",
                  f"Baseline: **{s['baseline']}**, the highest mean final accuracy of the "
                  f"{'/'.join(s['candidates'])} arms over seeds {s['selection_seeds']}.", "",
                  "| arm | seeds | samples to the baseline's final: ratio (median, 95% CI) | reached | "
                  "seed-averaged: ratio (95% CI) | final acc (mean +- se) | per seed |", "|---|---|---|---|---|---|---|"]
        for label, r in s["arms"].items():
            fin, se = r["final"]
            per_seed = ", ".join(f"{x:.2f}" for x in r["per_seed"].values())
            lines.append(f"| {label} | {len(r['seeds'])} | {ratio_text(r['ratio'])} | "
                         f"{r['reached']}/{len(r['seeds'])} | {ratio_text(r['pooled'])} | "
                         f"{fin:.3f} +- {se:.3f} | {per_seed} |")
        lines += [f"Left out, not paired with its seed's other runs (accuracy before RL {start:.4f}, theirs "
                  f"{common:.4f}): {label} seed {seed}." for label, seed, start, common in s["left_out"]]
        lines.append("")
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    baselines = args.baselines.split(",")
    summary = {}
    for algorithm, arms in load_arms(args.results).items():
        left_out = unpaired(arms)
        for label, seed, start, common in left_out:
            del arms[label][seed]
            print(f"{algorithm} {label} seed {seed} left out: it starts at accuracy {start:.4f}, the seed's "
                  f"other runs at {common:.4f} (another machine, warm start or a damaged run)")
        arms = {label: by_seed for label, by_seed in arms.items() if by_seed}
        baseline, seeds, candidates = best_baseline(arms, baselines, min_seeds=args.min_seeds)
        summary[algorithm] = {"baseline": baseline, "selection_seeds": seeds, "candidates": candidates,
                              "arms": score(arms, baseline), "left_out": left_out}
    lines = report(summary)
    print("\n".join(lines))
    header = (f"Machine: {machine_name()}. `python benchmarks/tuned_baseline.py {' '.join(sys.argv[1:])}`: "
              f"every arm against the best-tuned baseline (benchmarks/tuned_baseline.py).\n\n")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"tuned_baseline{args.tag}.md").write_text(header + "\n".join(lines) + "\n")
    (RESULTS_DIR / f"tuned_baseline{args.tag}.json").write_text(json.dumps(summary, indent=1, default=str))
    append_results("tuned_baseline", [
        {"case": f"{a}/{label}{args.tag}", "metric": "samples_ratio_median", "value": r["ratio"][0], "unit": "x"}
        for a, s in summary.items() for label, r in s["arms"].items() if not math.isnan(r["ratio"][0])],
        json_name=f"tuned_baseline{args.tag}_rows.json")
    return summary


if __name__ == "__main__":
    main()
