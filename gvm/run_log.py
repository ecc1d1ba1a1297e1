"""What a run writes and prints: phase timers, metrics.jsonl, the allocation audit log,
TensorBoard events, one table row per iteration, and the accuracy-vs-samples plot.

Only rank 0 writes (the others hold a `RunLog(enabled=False)` whose methods do nothing), so the
loop calls the same methods on every rank.

Files under the run folder:
    metrics.jsonl       one JSON object per iteration (and one per evaluation before training)
    allocations.jsonl   per iteration, per prompt: p_i, G_i measured and used, n_i, accepted
    tb/                 TensorBoard events (scalars of metrics.jsonl)
    accuracy.png        held-out accuracy against generated samples (pilot included)
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

# Acceptance-rate histogram bins of the table: p = 0, (0, .25], (.25, .5], (.5, .75], (.75, 1), p = 1.
HIST_LABELS = ("0", "<.25", "<.5", "<.75", "<1", "1")


class PhaseTimer:
    """Seconds per named phase, summed within an iteration; `pop()` returns and clears them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = dict(self.seconds)
        self.seconds.clear()
        return out


def acceptance_histogram(accept_rates) -> list[int]:
    """Counts of prompts per HIST_LABELS bin (NaN rates, prompts without samples, are skipped)."""
    p = np.asarray([x for x in accept_rates if not math.isnan(x)], dtype=np.float64)
    edges = [(p == 0), (p > 0) & (p <= 0.25), (p > 0.25) & (p <= 0.5), (p > 0.5) & (p <= 0.75),
             (p > 0.75) & (p < 1), (p == 1)]
    return [int(mask.sum()) for mask in edges]


def count_spread(counts) -> dict:
    """min / median / max of the samples per prompt, and how many prompts got none."""
    counts = np.asarray(counts)
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max()),
            "zero": int((counts == 0).sum())}


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _no_nan(value):
    """NaN (an unmeasured G_i) as null, so the files are strict JSON."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


class RunLog:
    """Rank 0's writer; see the module docstring."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True, table: bool = True,
                 plot: bool = True, resume_at: int | None = None, wandb=None) -> None:
        """`resume_at`: the iteration of the checkpoint a resumed run continues from; the log files
        are cut back to it (and TensorBoard told to drop later steps), so each iteration appears once.
        `wandb`: a gvm.wandb_log.WandbLog that gets the same scalars and the plot."""
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.wandb = wandb if enabled else None
        self.table = table and enabled
        self.plot_enabled = plot and enabled
        self.history: list[dict] = []   # metrics rows, for the plot and the summary
        self._writer = None
        self._header_printed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.allocations_path = self.run_dir / "allocations.jsonl"
        if resume_at is not None:
            self.history = _cut_back(self.metrics_path, resume_at)
            _cut_back(self.allocations_path, resume_at)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"),
                                         purge_step=None if resume_at is None else resume_at + 1)

    # -- files ---------------------------------------------------------------------------------

    def metrics(self, row: dict, step: int) -> None:
        """Append a metrics row; numeric values (nested dicts flattened with '/') go to TensorBoard."""
        if not self.enabled:
            return
        self.history.append(row)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_no_nan(row), default=_json_default) + "\n")
        scalars = {key: value for key, value in _flatten(row).items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step)

    def allocation(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.allocations_path.open("a") as f:
            f.write(json.dumps(_no_nan(record), default=_json_default) + "\n")

    # -- terminal ------------------------------------------------------------------------------

    def print(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def table_row(self, row: dict, phases: list[str]) -> None:
        """One line per iteration: accuracy, samples so far, p histogram, n_i spread, and the
        seconds of each of `phases` (the same columns every row)."""
        if not self.table:
            return
        if not self._header_printed:
            self.print(format_header(phases))
            self._header_printed = True
        self.print(format_row(row, phases))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None

    # -- plot ----------------------------------------------------------------------------------

    def plot(self, title: str = "") -> Path | None:
        """accuracy.png: held-out accuracy against generated samples (and against seconds)."""
        if not self.plot_enabled:
            return None
        points = [(r["samples_generated"], r["seconds"], r["eval"]["accuracy"])
                  for r in self.history if r.get("eval") is not None]
        if not points:
            return None
        path = plot_accuracy({title or "run": points}, self.run_dir / "accuracy.png")
        if self.wandb is not None:
            self.wandb.image("accuracy_plot", path, step=max(r["iteration"] for r in self.history))
        return path


def plot_accuracy(curves: dict[str, list[tuple[float, float, float]]], path: Path,
                  target: float | None = None) -> Path:
    """Held-out accuracy against generated samples (left) and wall-clock seconds (right), one line
    per curve of (samples, seconds, accuracy) points."""
    from matplotlib.figure import Figure   # here: a run with log.plot=false does not pay its import
    fig = Figure(figsize=(10, 4))   # no pyplot: no global backend, no window, nothing to close
    axes = fig.subplots(1, 2)
    for label, points in curves.items():
        samples, seconds, accuracy = zip(*points)
        axes[0].plot(samples, accuracy, marker="o", markersize=3, label=label)
        axes[1].plot(seconds, accuracy, marker="o", markersize=3, label=label)
    for ax, xlabel in zip(axes, ("generated samples (pilot included)", "wall-clock seconds")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy")
        ax.grid(alpha=0.3)
        if target is not None:
            ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _cut_back(path: Path, iteration: int) -> list[dict]:
    """Keep the rows of a JSONL log up to `iteration` (rewritten atomically); returns them. A last
    line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("iteration", 0) <= iteration:
            rows.append(row)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    return rows


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


PHASE_WIDTH = 8


def format_header(phases: list[str]) -> str:
    """Column names of `format_row`: p-histogram bins are labelled p=0 ... p=1, phases in seconds."""
    hist = "".join(f"{'p' + label if label in ('0', '1') else label:>5}" for label in HIST_LABELS)
    names = "".join(f"{p[:PHASE_WIDTH - 1]:>{PHASE_WIDTH}}" for p in phases)
    return f"{'it':>4}{'acc':>7}{'samples':>9}{'accept':>7}{'useful':>7}{'R_pred':>7}{hist}{'n min/med/max':>15}  s:{names}"


def _fraction(value, width: int = 7) -> str:
    return f"{value:{width}.3f}" if value is not None and math.isfinite(value) else f"{'-':>{width}}"


def format_row(row: dict, phases: list[str]) -> str:
    evaluation = row.get("eval") or {}
    acc = f"{evaluation['accuracy']:7.3f}" if "accuracy" in evaluation else f"{'':>7}"
    hist = "".join(f"{count:>5}" for count in row.get("accept_hist", [0] * len(HIST_LABELS)))
    n = row.get("n_per_prompt")
    spread = f"{n['min']}/{n['median']:g}/{n['max']}" if n else "-"
    ratio = row.get("R_pred")
    ratio_text = f"{ratio:7.2f}" if ratio is not None and math.isfinite(ratio) else f"{'-':>7}"
    seconds = "".join(f"{row['time'].get(p, 0.0):{PHASE_WIDTH}.1f}" for p in phases)
    return (f"{row['iteration']:>4}{acc}{row['samples_generated']:>9}{_fraction(row.get('accept_rate'))}"
            f"{_fraction(row.get('useful_fraction'))}{ratio_text}{hist}{spread:>15}    {seconds}")
