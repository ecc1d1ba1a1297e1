"""Generated samples to reach an accuracy: uniform sampling, DAPO's dynamic sampling, GVM as in the
paper and ours (the adaptive sampler), for RAFT++ and GRPO, over paired seeds.

    python benchmarks/bench_convergence.py                                  # the full grid (hours on a CPU)
    python benchmarks/bench_convergence.py --algorithms grpo --methods uniform,ours --seeds 0 1

One supervised warm start is shared by every run; each run is `gvm/train.py` in a subprocess from
that model. Paired: every method of a seed sees the same prompt order, the same held-out set (a
large one, so that one evaluation's standard error is small) and the same training set (a small
one, so prompts come back: several epochs in a run), and makes the same number of optimizer steps
per iteration (one train_step on whatever it collected). What differs is how many samples each
method generates per iteration and where they go:

    uniform    n per prompt                      uniform2x  2n per prompt: half the variance per step
    uniform-half  n/2 per prompt: uniform tuned towards fewer samples per step (step-limited runs)
    dapo       n per drawn prompt, groups without gradient dropped, prompts drawn until the batch is full
    gvm        the paper: a pilot of N' per prompt thrown away, (n - N') per prompt allocated, unsolved skipped
    ours       sampler.kind=adaptive with `--ours-budget` x n samples per prompt in all, pilot included
    screened   sampler.kind=screened at n/2 per prompt (as uniform-half): prompts whose history says
               their group will carry no gradient are skipped before generating, others drawn instead
    uniform-quarter, screened-quarter  the same at n/4 per prompt (at least 2)
    uniform@K, screened@K  the same at K per prompt (e.g. screened@3 for GRPO, between n/4 and n/2; K = 1
               only for RAFT / RAFT++: a GRPO group needs two)
    uniform@KxP, screened@KxP  and P prompts per iteration (fewer samples per step with GRPO's groups whole)
    gvm-iw, ours-iw  the same with sampler.reweight=true (loss weights n_bar / n_i: the token mean
               estimates uniform's gradient whatever the allocation)
    <method>-rp  any of them with sampler.replay=1: the previous iteration's gradient-carrying samples
               join each training batch (gvm.replay; trained on again, generated and counted once)
    <method>~<name>  any of them with the overrides of `--variant <name>=key=value;key=value`
               (e.g. --variant hold=sampler.history_decay=0.9 --methods screened-quarter~hold)

A method that generates fewer samples per iteration than uniform runs more iterations (at least
uniform's samples in all), so that "samples to reach uniform's final accuracy" exists for it.

Reported per algorithm: the target is each seed's uniform run's final accuracy (the mean of its
last two evaluations; `--reference` names another method to take uniform's place); per run, the
generated samples (and seconds) at which a monotone fit of its held-out curve reaches that target (benchmarks/curves.py); the paired ratio uniform / method per
seed, its median and a bootstrap 95 % interval over seeds; final accuracies; the mean fraction of
generated samples that carried gradient and the mean R_pred. The same paired ratio counted in
gradient-carrying samples ("useful samples") splits a method's gain in two: near 1, the method
won only by raising its useful fraction (a useful sample taught as much as uniform's); above or
below 1, each useful sample taught more or less. A second reading takes one target, the final of
uniform's curve averaged over seeds, and reads every method's cost from its own seed-averaged
curve (bootstrap over seeds, paired): a single run's final is noisy, and a seed whose method falls
just short of its own seed's target zeroes that seed's ratio. uniform2x against uniform at equal
iterations says whether variance limits progress here at all. Results: a table on stdout,
benchmarks/results/bench_convergence<tag>.{md,json,png}, and rows of results.csv.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import (bootstrap_median, bootstrap_pooled_ratio, cost_to_reach, cumulative_useful, final_accuracy,  # noqa: E402
                    mean_and_se, paired_ratios, pooled_ratio_missing, ratio_text, seed_mean_curve)
from harness import REWEIGHTED, RESULTS_DIR, append_results, machine_name, reweighted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from gvm.algorithms import ALGORITHMS  # noqa: E402
from gvm.config import load_config, resume_differences  # noqa: E402
TRAIN = REPO / "gvm" / "train.py"
BASE_METHODS = ("uniform", "uniform-half", "uniform-quarter", "uniform2x", "dapo", "gvm", "ours", "screened",
                "screened-quarter")
SPLIT = {"uniform-half": 2, "screened": 2, "uniform-quarter": 4, "screened-quarter": 4}  # n / this per prompt
AT_KINDS = ("uniform", "screened")     # kind@K: that sampler at K per prompt; kind@KxP: and P prompts per iteration
AT_PATTERN = re.compile(r"(?P<kind>[a-z]+)@(?P<n>\d+)(?:x(?P<prompts>\d+))?")
METHODS = BASE_METHODS + ("gvm" + REWEIGHTED, "ours" + REWEIGHTED)
REPLAYED = "-rp"                       # <method>-rp: that method with sampler.replay=1
VARIANT = "~"                          # <method>~<name>: that method with the overrides of --variant <name>


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", default="raft++,grpo", help="from gvm.algorithms: " + ", ".join(ALGORITHMS))
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--prompts", type=int, default=64, help="prompts per iteration (dapo: groups per training batch)")
    p.add_argument("--per-prompt", type=int, default=8, help="n: uniform's samples per prompt per iteration")
    p.add_argument("--pilot", type=int, default=2, help="N': pilot samples per prompt (gvm, ours)")
    p.add_argument("--ours-budget", type=float, default=0.5, help="ours' samples per iteration, x n x prompts")
    p.add_argument("--lr", type=float, default=2e-4, help="trainer.lr of every RL run")
    p.add_argument("--train-size", type=int, default=400, help="task.num_train of the RL runs (prompts come back)")
    p.add_argument("--eval-size", type=int, default=8000, help="task.num_eval: the held-out problems")
    p.add_argument("--eval-k", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--warmstart-steps", type=int, default=600)
    p.add_argument("--ranks", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--root", default=str(REPO / "runs" / "bench_convergence"))
    p.add_argument("--tag", default="", help="suffix of the result files (bench_convergence<tag>.md)")
    p.add_argument("--reference", default="uniform",
                   help="the method whose final accuracy is each seed's target and the ratios' denominator (among "
                        "--methods); another than uniform: a tuned baseline run at its own rate or batch shape")
    p.add_argument("--versus", default="",
                   help="comma-separated baseline:method pairs also compared head to head, paired by seed "
                        "(e.g. uniform-quarter:screened-quarter: the method against a tuned uniform)")
    p.add_argument("--extra", nargs="*", default=["trainer.optimizer_steps_per_call=2"],
                   help="more key=value overrides for every run (replaces the default: two optimizer steps per call)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[;KEY=VALUE]",
                   help="overrides that a method named <method>~NAME adds to <method>'s (repeatable)")
    args = p.parse_args(argv)
    args.variants = {}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        if not name or VARIANT in name or "=" not in overrides:
            p.error(f"--variant {spec!r}: must be NAME=key=value[;key=value] (NAME without {VARIANT!r})")
        args.variants[name] = overrides.split(";")
    for method in args.methods.split(","):
        base, _, variant = method.partition(VARIANT)
        if variant and variant not in args.variants:
            p.error(f"--methods {method!r}: no --variant {variant!r} (defined: {sorted(args.variants) or 'none'})")
    for name, allowed in (("methods", METHODS), ("algorithms", ALGORITHMS)):
        names = getattr(args, name).split(",")
        if name == "methods":
            names = [sampler_of(x) for x in names if not at_n(sampler_of(x))]
        unknown = set(names) - set(allowed)
        if unknown:
            p.error(f"unknown {name} {sorted(unknown)}; choose from {list(allowed)}"
                    + (f" or kind@K / kind@KxP (K per prompt, P prompts per iteration), kind in {AT_KINDS}, "
                       f"K >= 1, P >= 1; any of them + {REPLAYED!r} for replay" if name == "methods" else ""))
    singles = [m for m in args.methods.split(",") if at_n(sampler_of(m)) == 1]
    if singles and any(ALGORITHMS[a].needs_both_outcomes for a in args.algorithms.split(",")):
        p.error(f"--methods {singles}: one sample per prompt gives GRPO's groups no reward variance (advantage 0); "
                f"use K >= 2 with --algorithms grpo")
    if args.reference not in args.methods.split(","):
        p.error(f"--reference {args.reference!r}: must be one of --methods ({args.methods})")
    for pair in versus_pairs(args):
        if len(pair) != 2 or not set(pair) <= set(args.methods.split(",")):
            p.error(f"--versus {':'.join(pair)!r}: must be baseline:method, both among --methods")
    if not 1 <= args.pilot < args.per_prompt:
        p.error(f"--pilot must lie in [1, --per-prompt), got {args.pilot} and {args.per_prompt}")
    return args


def sampler_of(method: str) -> str:
    """The method without its variant and replay suffixes: the sampler setting it starts from."""
    return method.partition(VARIANT)[0].removesuffix(REPLAYED)


def method_overrides(args, method: str) -> list[str]:
    """The sampler settings of a method without its variant (the rest is common to all)."""
    method = method.partition(VARIANT)[0]
    base = method.removesuffix(REPLAYED)
    return (reweighted(base, lambda name: _base_overrides(args, name))
            + (["sampler.replay=1"] if method.endswith(REPLAYED) else []))


def variant_overrides(args, method: str) -> list[str]:
    """The overrides of a <method>~NAME's --variant NAME (none for a method without one): applied
    last, after --extra, so a variant can change a setting --extra gives every run."""
    return args.variants.get(method.partition(VARIANT)[2], [])


def _base_overrides(args, method: str) -> list[str]:
    n, m = args.per_prompt, args.prompts
    fixed = fixed_n(args, method)
    if fixed is not None:
        prompts = prompts_of(args, method)
        return ([f"sampler.kind={re.split('[-@]', method)[0]}", f"sampler.n_per_prompt={fixed}"]
                + ([f"data.prompts_per_iteration={prompts}"] if prompts != args.prompts else []))
    return {
        "uniform": ["sampler.kind=uniform", f"sampler.n_per_prompt={n}"],
        "uniform2x": ["sampler.kind=uniform", f"sampler.n_per_prompt={2 * n}"],
        "dapo": ["sampler.kind=dapo", f"sampler.n_per_prompt={n}"],
        "gvm": ["sampler.kind=gvm", f"sampler.pilot_n={args.pilot}", f"sampler.budget={(n - args.pilot) * m}",
                "sampler.reuse_pilot_samples=false", "sampler.zero_accept=skip", "sampler.max_per_prompt=null"],
        "ours": ["sampler.kind=adaptive", f"sampler.pilot_n={args.pilot}",
                 f"sampler.budget={max(1, round(args.ours_budget * n * m))}"],
    }[method]


def at_spec(method: str) -> tuple[int, int | None] | None:
    """(K, P) of a kind@K or kind@KxP method: K samples per prompt (K >= 1; parse_args refuses 1 with GRPO)
    and P prompts per iteration (None: --prompts); None for the other methods."""
    match = AT_PATTERN.fullmatch(method)
    if match is None or match["kind"] not in AT_KINDS or int(match["n"]) < 1:
        return None
    prompts = int(match["prompts"]) if match["prompts"] else None
    return None if prompts == 0 else (int(match["n"]), prompts)


def at_n(method: str) -> int | None:
    """K of a kind@K or kind@KxP method, else None."""
    spec = at_spec(method)
    return spec[0] if spec else None


def prompts_of(args, method: str) -> int:
    """Prompts per iteration of a (base) method: P of kind@KxP, else --prompts."""
    spec = at_spec(method)
    return spec[1] if spec and spec[1] else args.prompts


def fixed_n(args, method: str) -> int | None:
    """Samples per prompt of the methods that fix it below n: SPLIT's at least 2 (a GRPO group needs
    two), kind@K's K; None for the others."""
    return max(2, args.per_prompt // SPLIT[method]) if method in SPLIT else at_n(method)


def _command(args, overrides: list[str]) -> list[str]:
    if args.ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
                str(TRAIN), *overrides]
    return [sys.executable, str(TRAIN), *overrides]


def run_overrides(args, name: str, overrides: list[str], iterations: int, last: Sequence[str] = (),
                  resume: Sequence[str] = ()) -> list[str]:
    """gvm/train.py's key=value overrides for one run; a later one wins: the run's own, then
    --extra, then `last` (a method's --variant)."""
    return [f"run_root={args.root}", f"name={name}", "log.progress=false", *(resume or ["overwrite=true"]),
            *overrides, *args.extra, *last, f"iterations={iterations}"]


def run(args, name: str, overrides: list[str], iterations: int, last: Sequence[str] = ()) -> Path:
    """One training run of `iterations` (reused when its summary exists; a shorter one is resumed
    to the new length: the benchmark continues where it stopped)."""
    run_dir = Path(args.root) / name
    resume = []
    if (run_dir / "summary.json").is_file():
        changed = changed_settings(run_dir, run_overrides(args, name, overrides, iterations, last))
        if changed:   # said, not refused: most are settings the run's sampler does not read (uniform's screen_*)
            print(f"  {name}: WARNING: reused, but made with settings this command would not give it now "
                  f"({'; '.join(changed)}): a default or the arguments changed since. Its figures are those "
                  f"settings'; pin them with --extra or --variant, or pass another --root to run it anew", flush=True)
        done = json.loads((run_dir / "summary.json").read_text())["iterations"]
        if done >= iterations:
            print(f"  {name}: done before, reusing {run_dir}", flush=True)
            return run_dir
        resume = ["resume=true"]
    start = time.perf_counter()
    log_path = Path(args.root) / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a" if resume else "w") as log:
        proc = subprocess.run(_command(args, run_overrides(args, name, overrides, iterations, last, resume)),
                              stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log_path}")
    print(f"  {name}: {time.perf_counter() - start:.0f} s{' (resumed to ' + str(iterations) + ' iterations)' if resume else ''}",
          flush=True)
    return run_dir


def changed_settings(run_dir: Path, overrides: list[str]) -> list[str]:
    """The settings a cached run's config.yaml records with another value than `overrides` give
    now ("key: then -> now"), those a resume may change aside. Why: a run is reused by its name, and
    a changed default (sampler.screen_group became "auto") would otherwise be reported silently under
    the new behaviour's name. Keys the run predates are not compared."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return resume_differences(load_config(None, overrides), saved, recorded_only=True)[1]


def iterations_of(args, method: str) -> int:
    """Iterations a method runs: at least the samples uniform generates in --iterations (a method that
    spends less per iteration runs longer, so that it can reach uniform's final accuracy at all)."""
    base = sampler_of(method).removesuffix(REWEIGHTED)
    fixed = fixed_n(args, base)
    per_iteration = ((fixed * prompts_of(args, base)) / (args.per_prompt * args.prompts) if fixed is not None
                     else {"ours": args.ours_budget}.get(base, 1.0))
    return max(args.iterations, math.ceil(args.iterations / per_iteration))


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# The costs a run is measured in, and their place in a curve point (see curve()).
COSTS = {"samples": 0, "seconds": 1, "useful": 4}


def curve(rows: list[dict]) -> list[tuple[int, float, float, int, float]]:
    """(samples generated, RL seconds, held-out accuracy, iteration, gradient-carrying samples
    generated) at every evaluation."""
    return [(r["samples_generated"], r["seconds"], r["eval"]["accuracy"], r["iteration"], useful)
            for r, useful in zip(rows, cumulative_useful(rows)) if r.get("eval")]


def summarise(args, curves: dict, rows: dict) -> dict:
    """Per algorithm and method: paired ratios to the reference (uniform), finals, useful fractions, R_pred."""
    out = {}
    for algorithm, by_method in curves.items():
        base = by_method.get(args.reference, {})
        targets = {s: final_accuracy([x[2] for x in c]) for s, c in base.items()}
        reach = {}
        for method, by_seed in by_method.items():
            reach[method] = {}
            for seed, c in by_seed.items():
                target = targets.get(seed, math.inf)
                reach[method][seed] = {kind: cost_to_reach([x[at] for x in c], [x[2] for x in c], target)
                                       for kind, at in COSTS.items()}
                reach[method][seed].update({f"total_{kind}": c[-1][at] for kind, at in COSTS.items()})
        by_cost = {kind: {method: runs_by_iteration(by_seed, at) for method, by_seed in by_method.items()}
                   for kind, at in COSTS.items()}
        result = {}
        for method, by_seed in by_method.items():
            ratios = {kind: paired_ratios({s: r[kind] for s, r in reach[args.reference].items()},
                                          {s: (r[kind], r[f"total_{kind}"]) for s, r in reach[method].items()})
                      for kind in COSTS}
            finals = [final_accuracy([x[2] for x in c]) for c in by_seed.values()]
            method_rows = [r for seed in by_seed for r in rows[algorithm][method][seed] if r["iteration"] > 0]
            useful = [r["useful_fraction"] for r in method_rows if r.get("useful_fraction") is not None]
            ratio_pred = [r["R_pred"] for r in method_rows if r.get("R_pred") is not None and math.isfinite(r["R_pred"])]
            result[method] = {
                **{f"ratio_{kind}": bootstrap_median(list(r.values())) for kind, r in ratios.items()},
                **{f"per_seed_{kind}": r for kind, r in ratios.items()},
                **{f"pooled_{kind}": bootstrap_pooled_ratio(by_cost[kind][args.reference], by_cost[kind][args.reference],
                                                            by_cost[kind][method]) for kind in ("samples", "seconds")},
                "reached": sum(r["samples"] is not None for r in reach[method].values()), "runs": len(by_seed),
                "final": mean_and_se(finals), "finals": finals,
                "samples_per_iteration": statistics.mean(r["samples"] for r in method_rows),
                "useful_fraction": statistics.mean(useful) if useful else math.nan,
                "R_pred": statistics.mean(ratio_pred) if ratio_pred else math.nan,
                "reach": reach[method],
            }
        mean_target = final_accuracy(seed_mean_curve(list(by_cost["samples"][args.reference].values()))[1])
        out[algorithm] = {"targets": targets, "mean_target": mean_target, "methods": result,
                          "per_step": per_step_gain(by_method), "versus": head_to_head(args, reach, by_cost["samples"])}
    return out


def runs_by_iteration(by_seed: dict, at: int) -> dict:
    """Per seed, {iteration: (cost, accuracy)} of a method's curves, the cost at place `at` (COSTS)."""
    return {seed: {x[3]: (x[at], x[2]) for x in c} for seed, c in by_seed.items()}


def versus_pairs(args) -> list[tuple[str, str]]:
    """The --versus pairs, each (baseline, method)."""
    return [tuple(pair.split(":")) for pair in args.versus.split(",") if pair]


def head_to_head(args, reach: dict, sample_runs: dict) -> dict:
    """Per --versus pair: the baseline's samples over the method's to the same target (uniform's
    final), per seed, with the median and its bootstrap interval (> 1: the method is cheaper). A
    baseline that never gets there counts its whole run (a lower bound on its cost, so the
    method's credit is too); a seed neither reaches is left out. "pooled": the same ratio read
    from the seed-averaged curves (curves.pooled_ratio), with its bootstrap interval."""
    out = {}
    for base, method in versus_pairs(args):
        if base not in reach or method not in reach:
            continue
        ratios = paired_ratios({s: r["samples"] if r["samples"] is not None
                                else (r["total_samples"] if reach[method][s]["samples"] is not None else None)
                                for s, r in reach[base].items() if s in reach[method]},
                               {s: (r["samples"], r["total_samples"]) for s, r in reach[method].items()})
        out[f"{method} vs {base}"] = {"per_seed": ratios, "ratio": bootstrap_median(list(ratios.values())),
                                      "pooled": bootstrap_pooled_ratio(sample_runs[args.reference], sample_runs[base],
                                                                       sample_runs[method]),
                                      "pooled_missing": pooled_ratio_missing(sample_runs[args.reference],
                                                                             sample_runs[base], sample_runs[method])}
    return out


def per_step_gain(by_method: dict) -> dict | None:
    """uniform2x minus uniform at equal iterations (mean over evaluations after the start, per seed):
    whether halving the variance per step speeds a step."""
    if "uniform2x" not in by_method or "uniform" not in by_method:
        return None
    gains = []
    for seed, c in by_method["uniform"].items():
        other = {x[3]: x[2] for x in by_method["uniform2x"].get(seed, [])}
        diffs = [other[x[3]] - x[2] for x in c if x[3] > 0 and x[3] in other]
        if diffs:
            gains.append(statistics.mean(diffs))
    return {"per_seed": gains, "mean_se": mean_and_se(gains)}


def report(args, summary: dict) -> list[str]:
    lines = []
    for algorithm, s in summary.items():
        lines += [f"### {algorithm}", "",
                  f"| method | samples / it | samples to target: ratio to {args.reference} (median, 95% CI) | seconds: ratio | "
                  "useful samples: ratio | reached | final acc (mean +- se) | useful fraction | R_pred |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, r in s["methods"].items():
            fin, se = r["final"]
            lines.append(f"| {method} | {r['samples_per_iteration']:.0f} | {ratio_text(r['ratio_samples'])} | "
                         f"{ratio_text(r['ratio_seconds'])} | {ratio_text(r['ratio_useful'])} | {r['reached']}/{r['runs']} | "
                         f"{fin:.3f} +- {se:.3f} | {r['useful_fraction']:.2f} | {r['R_pred']:.2f} |")
        lines += ["", f"Seed-averaged curves: one target, {args.reference}'s mean final {s['mean_target']:.4f}, "
                      "reached on each method's curve averaged over its seeds (bootstrap over seeds, paired)", "",
                  f"| method | samples to target: ratio to {args.reference} (95% CI) | seconds: ratio |", "|---|---|---|"]
        for method, r in s["methods"].items():
            lines.append(f"| {method} | {ratio_text(r['pooled_samples'])} | {ratio_text(r['pooled_seconds'])} |")
        for name, v in s["versus"].items():
            med, lo, hi = v["ratio"]
            lines += ["", f"{name}, paired: {med:.2f}x fewer samples to the target ({lo:.2f}-{hi:.2f}; per seed "
                          f"{', '.join(f'{x:.2f}' for x in v['per_seed'].values())}); seed-averaged curves: "
                          f"{ratio_text(v['pooled'], v['pooled_missing'])}"]
        if s["per_step"]:
            mean, se = s["per_step"]["mean_se"]
            lines += ["", f"uniform2x - uniform at equal iterations: {mean:+.4f} +- {se:.4f} held-out accuracy "
                          f"(per seed: {', '.join(f'{g:+.3f}' for g in s['per_step']['per_seed'])})"]
        lines.append("")
    return lines


def plot(summary_curves: dict, path: Path) -> None:
    """Held-out accuracy against generated samples (top) and against gradient-carrying samples
    (bottom: where methods' curves meet, a useful sample taught the same whatever the sampler): the
    median over seeds per method, min-max band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(summary_curves), 8))
    axes = fig.subplots(2, len(summary_curves), squeeze=False)
    for column, (algorithm, by_method) in enumerate(summary_curves.items()):
        for row, (cost, label) in enumerate(((0, "generated samples (pilot and dropped groups included)"),
                                             (4, "gradient-carrying samples generated"))):
            ax = axes[row][column]
            for method, by_seed in by_method.items():
                # Runs resumed to more iterations can have denser evaluations early on: plot the
                # evaluations every seed has (by iteration), at the seeds' median cost.
                at = [{x[3]: x for x in c} for c in by_seed.values()]
                iterations = sorted(set.intersection(*(set(a) for a in at)))
                costs = [statistics.median(a[it][cost] for a in at) for it in iterations]
                accs = [[a[it][2] for a in at] for it in iterations]
                line = ax.plot(costs, [statistics.median(a) for a in accs], marker="o", markersize=3, label=method)[0]
                ax.fill_between(costs, [min(a) for a in accs], [max(a) for a in accs], alpha=0.15,
                                color=line.get_color())
            ax.set_title(algorithm)
            ax.set_xlabel(label)
            ax.set_ylabel("held-out accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    args = parse_args(argv)
    algorithms, methods = args.algorithms.split(","), args.methods.split(",")
    print(f"# convergence benchmark on {machine_name()}: {algorithms} x {methods}, seeds {args.seeds}, "
          f"{args.iterations} iterations x {args.prompts} prompts x {args.per_prompt} samples", flush=True)
    task = [f"task.num_eval={args.eval_size}", f"eval.k={args.eval_k}", "log.tensorboard=false", "log.plot=false"]
    warm = run(args, "warmstart", [*task, f"warmstart.steps={args.warmstart_steps}"], iterations=0) / "final"
    common = [f"model={warm}", *task, f"task.num_train={args.train_size}", f"trainer.lr={args.lr}",
              f"data.prompts_per_iteration={args.prompts}",
              "checkpoint_every=0"]
    curves: dict = {a: {m: {} for m in methods} for a in algorithms}
    rows: dict = {a: {m: {} for m in methods} for a in algorithms}
    for seed in args.seeds:
        for algorithm in algorithms:
            for method in methods:
                iterations = iterations_of(args, method)   # evaluated at the same samples as uniform
                every = max(1, round(args.eval_every * iterations / args.iterations))
                run_dir = run(args, f"{algorithm}-{method}-seed{seed}",
                              [*common, f"seed={seed}", f"algorithm={algorithm}", *method_overrides(args, method),
                               f"eval.every={every}"], iterations, last=variant_overrides(args, method))
                rows[algorithm][method][seed] = rows_of(run_dir)
                curves[algorithm][method][seed] = curve(rows[algorithm][method][seed])
    summary = summarise(args, curves, rows)
    lines = report(args, summary)
    print("\n".join(lines))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    header = (f"Machine: {machine_name()}. `python benchmarks/bench_convergence.py {' '.join(sys.argv[1:])}`. "
              f"Seeds {args.seeds}; {args.iterations} iterations x {args.prompts} prompts, n = {args.per_prompt}, "
              f"pilot {args.pilot}, lr {args.lr}, {args.train_size} training prompts, {args.eval_size} held-out "
              f"(avg@{args.eval_k}), evaluated every {args.eval_every} iterations.\n\n")
    (RESULTS_DIR / f"bench_convergence{args.tag}.md").write_text(header + "\n".join(lines) + "\n")
    (RESULTS_DIR / f"bench_convergence{args.tag}.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "curves": curves}, indent=1, default=str))
    plot(curves, RESULTS_DIR / f"bench_convergence{args.tag}.png")
    append_results("bench_convergence", [
        {"case": f"{a}/{m}{args.tag}", "metric": metric, "value": value, "unit": unit}
        for a, s in summary.items() for m, r in s["methods"].items()
        for metric, value, unit in (("samples_ratio_median", r["ratio_samples"][0], "x"),
                                    ("final_accuracy_mean", r["final"][0], "acc"),
                                    ("useful_fraction", r["useful_fraction"], ""))], json_name=f"bench_convergence{args.tag}_rows.json")
    return summary


if __name__ == "__main__":
    main()
