"""Convergence at equal generation budget: RAFT++ vs GVM-RAFT++ and GRPO vs GVM-GRPO on the
built-in arithmetic task, over seeds.

    python benchmarks/bench_convergence.py                     # full size (hours on 2 CPU cores)
    python benchmarks/bench_convergence.py --iterations 8 --seeds 0 --methods raft++,gvm-raft++

One supervised warm start is shared by every run (runs/<root>/warmstart); each method then runs
`gvm/train.py` in a subprocess from that model with the same prompts per iteration and the same
samples per iteration: uniform methods draw n per prompt; GVM methods draw a pilot of N' per
prompt and share (n - N') * prompts by allocation, so both generate n * prompts samples per
iteration and every count below includes the pilot. Seeds change the data order and sampling.

Reported per method (median over seeds): generated samples and wall-clock seconds of RL (without
evaluation) until the held-out accuracy first reaches the target, and the final accuracy. The
target defaults to the uniform RAFT++ baseline's median final accuracy, so "samples to target"
of GVM-RAFT++ against RAFT++ is the speed-up at equal accuracy. Results: a table on stdout and in
benchmarks/results/bench_convergence.md, rows through benchmarks/harness.py (results.csv and
bench_convergence.json), and a plot (bench_convergence.png).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS_DIR, append_results, machine_name, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "gvm" / "train.py"
sys.path.insert(0, str(REPO))
from gvm.run_log import plot_accuracy  # noqa: E402

METHODS = {  # name -> (algorithm, sampler)
    "raft++": ("raft++", "uniform"),
    "gvm-raft++": ("raft++", "gvm"),
    "grpo": ("grpo", "uniform"),
    "gvm-grpo": ("grpo", "gvm"),
}
BASELINE_OF = {"gvm-raft++": "raft++", "gvm-grpo": "grpo"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    p.add_argument("--per-prompt", type=int, default=8, help="samples per prompt per iteration (n)")
    p.add_argument("--pilot", type=int, default=4, help="GVM's pilot samples per prompt (N' < n)")
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--warmstart-steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-4, help="RL learning rate (trainer.lr)")
    p.add_argument("--target", type=float, default=None,
                   help="held-out accuracy to reach; default: the median final accuracy of RAFT++")
    p.add_argument("--ranks", type=int, default=1, help="processes per run (torchrun when > 1)")
    p.add_argument("--root", default=str(REPO / "runs" / "bench_convergence"))
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    args = p.parse_args(argv)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    if not 1 <= args.pilot < args.per_prompt:
        p.error(f"--pilot must lie in [1, --per-prompt), got {args.pilot} and {args.per_prompt}")
    return args


def _command(args, overrides: list[str]) -> list[str]:
    if args.ranks > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks),
                str(TRAIN), *overrides]
    return [sys.executable, str(TRAIN), *overrides]


def _run(args, name: str, overrides: list[str]) -> Path:
    run_dir = Path(args.root) / name
    if (run_dir / "summary.json").is_file():
        print(f"  {name}: done before, reusing {run_dir}", flush=True)
        return run_dir
    start = time.perf_counter()
    log_path = Path(args.root) / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.run(_command(args, [f"run_root={args.root}", f"name={name}", "log.progress=false",
                                              *overrides, *args.extra]), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log_path}")
    print(f"  {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def warm_start(args) -> Path:
    """One warm start shared by every method and seed (the same starting policy for all)."""
    run_dir = _run(args, "warmstart", ["iterations=0", f"warmstart.steps={args.warmstart_steps}"])
    return run_dir / "final"


def method_overrides(args, method: str, model: Path, seed: int) -> list[str]:
    algorithm, sampler = METHODS[method]
    common = [f"model={model}", f"seed={seed}", f"algorithm={algorithm}", f"sampler.kind={sampler}",
              f"iterations={args.iterations}", f"eval.every={args.eval_every}", f"trainer.lr={args.lr}",
              f"data.prompts_per_iteration={args.prompts}", "checkpoint_every=0"]
    if sampler == "uniform":
        # Two optimizer steps per iteration, as GVM with pilot reuse takes (pilot step + stage-2 step).
        return [*common, f"sampler.n_per_prompt={args.per_prompt}", "trainer.optimizer_steps_per_call=2"]
    return [*common, f"sampler.pilot_n={args.pilot}", f"sampler.budget={(args.per_prompt - args.pilot) * args.prompts}"]


def curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(samples generated, RL seconds, held-out accuracy) at every evaluation, from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["samples_generated"], r["seconds"], r["eval"]["accuracy"]) for r in rows if r.get("eval")]


def to_target(points: list[tuple[int, float, float]], target: float) -> tuple[float | None, float | None]:
    """Samples and seconds at the first evaluation whose accuracy reaches `target` (None: never)."""
    for samples, seconds, accuracy in points:
        if accuracy >= target - 1e-12:
            return float(samples), float(seconds)
    return None, None


def _median(values: list[float | None]) -> float | None:
    """Median where runs that never reached the target count as +inf (None if most never did)."""
    finite = sorted(v if v is not None else float("inf") for v in values)
    m = statistics.median(finite) if finite else float("inf")
    return None if m == float("inf") else m


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = args.methods.split(",")
    print(f"# convergence benchmark on {machine_name()}: {methods}, seeds {args.seeds}, {args.iterations} iterations "
          f"x {args.prompts} prompts x {args.per_prompt} samples (GVM pilot {args.pilot})", flush=True)
    model = warm_start(args)
    curves: dict[str, dict[int, list]] = {m: {} for m in methods}
    for seed in args.seeds:
        for method in methods:
            run_dir = _run(args, f"{method}-seed{seed}", method_overrides(args, method, model, seed))
            curves[method][seed] = curve(run_dir)

    finals = {m: [c[-1][2] for c in curves[m].values()] for m in methods}
    target = args.target
    if target is None:
        base = "raft++" if "raft++" in methods else methods[0]
        target = statistics.median(finals[base])
    start_accuracy = statistics.median(c[0][2] for m in methods for c in curves[m].values())
    results, rows = {}, []
    for m in methods:
        reach = [to_target(c, target) for c in curves[m].values()]
        samples, seconds = _median([r[0] for r in reach]), _median([r[1] for r in reach])
        results[m] = {"samples_to_target": samples, "seconds_to_target": seconds,
                      "final_accuracy": statistics.median(finals[m]), "final_accuracies": finals[m],
                      "reached": sum(r[0] is not None for r in reach), "runs": len(reach),
                      "total_samples": statistics.median(c[-1][0] for c in curves[m].values()),
                      "total_seconds": statistics.median(c[-1][1] for c in curves[m].values())}
        case = f"{m}@it{args.iterations}xP{args.prompts}xn{args.per_prompt}"
        rows += [{"case": case, "metric": "final_accuracy", "value": results[m]["final_accuracy"], "unit": "acc"},
                 {"case": case, "metric": "samples_to_target", "value": samples, "unit": "samples"},
                 {"case": case, "metric": "seconds_to_target", "value": seconds, "unit": "s"}]
    for m, base in BASELINE_OF.items():
        if m in results and base in results:
            a, b = results[base]["samples_to_target"], results[m]["samples_to_target"]
            results[m]["sample_speedup_vs_" + base] = (a / b) if a and b else None
            a, b = results[base]["seconds_to_target"], results[m]["seconds_to_target"]
            results[m]["time_speedup_vs_" + base] = (a / b) if a and b else None

    headers = ["method", "final acc (median)", "finals", f"samples to {target:.3f}", f"seconds to {target:.3f}",
               "reached", "speed-up (samples)"]
    table = []
    for m in methods:
        r = results[m]
        speed = next((v for k, v in r.items() if k.startswith("sample_speedup")), None)
        table.append([m, f"{r['final_accuracy']:.3f}", " ".join(f"{x:.3f}" for x in r["final_accuracies"]),
                      f"{r['samples_to_target']:.0f}" if r["samples_to_target"] else "never",
                      f"{r['seconds_to_target']:.0f}" if r["seconds_to_target"] else "never",
                      f"{r['reached']}/{r['runs']}", f"{speed:.2f}x" if speed else "-"])
    print(f"\nheld-out accuracy at the start (warm start): {start_accuracy:.3f}; target {target:.3f}")
    print_table(headers, table)
    seed_headers = ["method", "seed", "final acc", f"samples to {target:.3f}", f"seconds to {target:.3f}",
                    "samples", "seconds"]
    seed_table = []
    for m in methods:
        for seed, c in curves[m].items():
            samples, seconds = to_target(c, target)
            seed_table.append([m, str(seed), f"{c[-1][2]:.3f}", f"{samples:.0f}" if samples else "never",
                               f"{seconds:.0f}" if seconds else "never", f"{c[-1][0]}", f"{c[-1][1]:.0f}"])
    print_table(seed_headers, seed_table)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    def markdown(heads: list[str], body: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in body]

    md = markdown(headers, table) + ["", "Per seed (samples and RL seconds at the end of the run in the last two columns):",
                                     ""] + markdown(seed_headers, seed_table)
    (RESULTS_DIR / "bench_convergence.md").write_text(
        f"Machine: {machine_name()}. Seeds {args.seeds}; {args.iterations} iterations x {args.prompts} prompts x "
        f"{args.per_prompt} samples per prompt (GVM: pilot {args.pilot} + allocated {args.per_prompt - args.pilot} "
        f"per prompt on average); start accuracy {start_accuracy:.3f}; target {target:.3f}.\n\n" + "\n".join(md) + "\n")
    append_results("bench_convergence", rows + [{"case": "settings", "metric": k, "value": v, "unit": ""}
                                                for k, v in vars(args).items() if k != "extra"])
    (RESULTS_DIR / "bench_convergence_curves.json").write_text(json.dumps(
        {"target": target, "results": results, "curves": {m: {str(s): c for s, c in cs.items()}
                                                          for m, cs in curves.items()}}, indent=1))
    plot_accuracy({f"{m} seed {s}": c for m in methods for s, c in curves[m].items()},
                  RESULTS_DIR / "bench_convergence.png", target=target)
    return results


if __name__ == "__main__":
    main()
