"""One benchmark harness: timing, peak memory, and one results file.

Every benchmark appends its rows to `benchmarks/results/results.csv` with the machine, the
commit and the time, and writes its own JSON beside it; README tables come from these files.
Times on the CPU are only meaningful as ratios measured side by side in one run.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_CSV = RESULTS_DIR / "results.csv"
CSV_FIELDS = ["benchmark", "case", "metric", "value", "unit", "machine", "commit", "time"]
# A sampler or method name ending in this is the same one with loss weights n_bar / n_i (sampler.reweight).
REWEIGHTED = "-iw"


def reweighted(name: str, overrides: Callable[[str], list[str]]) -> list[str]:
    """The overrides of `name`, plus sampler.reweight=true when it ends in REWEIGHTED."""
    if name.endswith(REWEIGHTED):
        return [*overrides(name.removesuffix(REWEIGHTED)), "sampler.reweight=true"]
    return overrides(name)


def machine_name() -> str:
    """The card's name on a GPU, else the CPU model and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu} x{os.cpu_count()}"


def git_commit() -> str:
    """HEAD's short hash; GVM_COMMIT overrides it where the tree has no .git (the device machine)."""
    if os.environ.get("GVM_COMMIT"):
        return os.environ["GVM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], *, warmup: int = 2, reps: int = 10) -> dict[str, float]:
    """Median / p20 / p80 seconds of `fn()`; CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median_s": statistics.median(times), "p20_s": q(0.2), "p80_s": q(0.8)}


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory allocated while `fn()` runs, above what was allocated before it."""
    if not torch.cuda.is_available():
        raise RuntimeError("peak_memory_bytes needs CUDA; on the CPU use peak_rss_in_subprocess")
    synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    synchronize()
    return torch.cuda.max_memory_allocated() - base


def _rss_child(conn, target: Callable, args: tuple) -> None:
    import resource

    try:
        run = target(*args)  # set-up happens here, before the mark
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(("ok", (after - before) * 1024))
    except Exception as exc:  # report, don't hang the parent
        conn.send(("error", repr(exc)))


def peak_rss_in_subprocess(target: Callable, *args) -> int:
    """CPU peak memory of a run, in bytes: `target(*args)` builds the inputs and returns a
    callable; the growth of the process's peak RSS while that callable runs is returned.

    Each measurement gets a fresh spawned process, since a process's peak RSS never falls.
    `target` must be a module-level function (it is pickled by name).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_rss_child, args=(child, target, args))
    proc.start()
    status, value = parent.recv()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"memory measurement failed in the subprocess: {value}")
    return int(value)


def append_results(benchmark: str, rows: list[dict], json_name: str | None = None) -> Path:
    """Append rows ({case, metric, value, unit}) to results.csv and write them as JSON too."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = {"machine": machine_name(), "commit": git_commit(),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    new_file = not RESULTS_CSV.exists()
    with RESULTS_CSV.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new_file:
            writer.writeheader()
        for row in rows:
            writer.writerow({"benchmark": benchmark, **stamp, **{k: row[k] for k in ("case", "metric", "value", "unit")}})
    out = RESULTS_DIR / (json_name or f"{benchmark}.json")
    out.write_text(json.dumps({**stamp, "benchmark": benchmark, "rows": rows}, indent=2))
    return out


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
