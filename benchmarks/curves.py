"""Reading accuracy-against-cost curves for the convergence benchmark: a monotone fit of each run's
noisy held-out curve, the cost at which it first reaches a target, and a bootstrap interval over
seeds of the paired ratio of those costs.

Why a monotone fit: "the first evaluation at or above the target" is decided by single noisy
evaluations (one evaluation's standard error against a difference of a few points), so a run that
touches the target once by chance looks fast. Pool-adjacent-violators gives the closest
non-decreasing curve in least squares; its crossing, interpolated linearly between evaluations,
moves with the trend rather than with one point.
"""
from __future__ import annotations

import math
import random
import statistics
from typing import Sequence


def isotonic(values: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []      # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out += [mean] * int(weight)
    return out


def cost_to_reach(costs: Sequence[float], accuracies: Sequence[float], target: float) -> float | None:
    """The cost at which the monotone fit of (cost, accuracy) first reaches `target`, interpolated
    linearly between evaluations; None when it never does."""
    fit = isotonic(accuracies)
    for i, value in enumerate(fit):
        if value >= target - 1e-12:
            if i == 0:
                return float(costs[0])
            low, high = fit[i - 1], value
            share = (target - low) / (high - low) if high > low else 1.0
            return float(costs[i - 1] + share * (costs[i] - costs[i - 1]))
    return None


def cumulative_useful(rows: Sequence[dict]) -> list[float]:
    """Per metrics row (iteration 0 first), the gradient-carrying samples generated so far: each
    iteration's useful fraction times the samples it generated. A method's samples to a target
    factor into (its useful samples to the target) / (its useful fraction): this curve gives the
    first factor, what one gradient-carrying sample is worth to the run."""
    out, total, before = [], 0.0, 0
    for row in rows:
        generated = row["samples_generated"] - before
        if row["iteration"] > 0 and row.get("useful_fraction") is not None:
            total += row["useful_fraction"] * generated
        before = row["samples_generated"]
        out.append(total)
    return out


def final_accuracy(accuracies: Sequence[float]) -> float:
    """A run's final accuracy: the mean of its last two evaluations (one evaluation is too noisy to
    be a target)."""
    return statistics.mean(accuracies[-2:])


def paired_ratios(baseline: dict, method: dict) -> dict:
    """Per seed, baseline cost / method cost to the same target (> 1: the method is cheaper). A
    method that never reaches the target within its run gets 0: its true ratio is somewhere below
    baseline / (its whole cost), and 0 keeps the median and its interval from crediting it. A seed
    whose baseline or method meets the target at no cost (the target is not above where the run
    started, as when uniform collapses, or the method's fitted curve never drops below it) says
    nothing about cost and is left out."""
    out = {}
    for seed, base_cost in baseline.items():
        if base_cost is None or base_cost <= 0 or seed not in method:
            continue
        reached, _total = method[seed]
        if reached is not None and reached <= 0:
            continue
        out[seed] = base_cost / reached if reached is not None else 0.0
    return out


def bootstrap_median(values: Sequence[float], *, rounds: int = 10000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median and a percentile bootstrap interval over resampled values."""
    values = list(values)
    if not values:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds)]
    return (statistics.median(values), *percentile_interval(medians, level))


def percentile_interval(draws: Sequence[float], level: float) -> tuple[float, float]:
    """(low, high): the central `level` share of bootstrap draws."""
    draws = sorted(draws)
    tail = (1.0 - level) / 2.0
    return draws[int(tail * (len(draws) - 1))], draws[int((1.0 - tail) * (len(draws) - 1))]


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    if len(values) < 2:
        return (values[0] if values else math.nan), math.nan
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


Runs = dict[int, dict[int, tuple[float, float]]]   # seed -> {iteration: (cost, held-out accuracy)}


def seed_mean_curve(runs: Sequence[dict[int, tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """(costs, accuracies): at each evaluation every run has (by iteration), the mean over runs of
    the cost and of the accuracy. Averaging seeds first takes most of one run's evaluation noise
    and luck out of the curve a target is read from and the curves that must reach it."""
    if not runs:
        return [], []
    iterations = sorted(set.intersection(*(set(r) for r in runs)))
    return ([statistics.fmean(r[it][0] for r in runs) for it in iterations],
            [statistics.fmean(r[it][1] for r in runs) for it in iterations])


def _pooled_costs(reference: Runs, baseline: Runs, method: Runs) -> tuple[float, float | None, float | None] | None:
    """(target, baseline cost, method cost) on the seeds all three ran: the target is the final
    accuracy (mean of the last two evaluations) of the reference's seed-averaged curve, each cost
    where a seed-averaged curve reaches it (monotone fit; None: never). None without a shared seed."""
    seeds = _shared_seeds(reference, baseline, method)
    if not seeds:
        return None
    target = final_accuracy(seed_mean_curve([reference[s] for s in seeds])[1])
    return (target, cost_to_reach(*seed_mean_curve([baseline[s] for s in seeds]), target),
            cost_to_reach(*seed_mean_curve([method[s] for s in seeds]), target))


def _says_nothing(base_cost: float | None, method_cost: float | None) -> bool:
    """The costs give no ratio about cost: the baseline never gets there, or one is there at its start."""
    return base_cost is None or base_cost <= 0 or (method_cost is not None and method_cost <= 0)


def pooled_ratio_missing(reference: Runs, baseline: Runs, method: Runs) -> str | None:
    """Why pooled_ratio gives no ratio, in the words a report prints; None when it gives one."""
    costs = _pooled_costs(reference, baseline, method)
    if costs is None:
        return "no seed in common"
    target, base_cost, method_cost = costs
    if not _says_nothing(base_cost, method_cost):
        return None
    if base_cost is None:
        return f"the baseline's seed-averaged curve never reaches the target ({target:.4f})"
    return "a seed-averaged curve is at the target from its start"


def pooled_ratio(reference: Runs, baseline: Runs, method: Runs) -> float | None:
    """baseline cost / method cost to one target (_pooled_costs). 0 when the method's mean curve
    never gets there (no credit, as paired_ratios); None when the ratio says nothing about cost
    (the baseline never gets there, or one of them is there at its start, or no shared seed)."""
    costs = _pooled_costs(reference, baseline, method)
    if costs is None or _says_nothing(*costs[1:]):
        return None
    _, base_cost, method_cost = costs
    return base_cost / method_cost if method_cost is not None else 0.0


def bootstrap_pooled_ratio(reference: Runs, baseline: Runs, method: Runs, *, rounds: int = 2000,
                           level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high): pooled_ratio on the seeds run, and a percentile bootstrap interval over
    seeds resampled with replacement, the same draw for all three (paired). A resample whose
    ratio says nothing about cost is left out; nan when no ratio exists."""
    seeds = _shared_seeds(reference, baseline, method)
    point = pooled_ratio(reference, baseline, method)
    if point is None:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        picked = rng.choices(seeds, k=len(seeds))
        # Relabel the draws 0..k-1 so that a seed drawn twice counts twice in the means.
        ratio = pooled_ratio(*({i: runs[s] for i, s in enumerate(picked)} for runs in (reference, baseline, method)))
        if ratio is not None:
            draws.append(ratio)
    if not draws:
        return point, math.nan, math.nan
    return (point, *percentile_interval(draws, level))


def ratio_text(ratio: tuple[float, float, float], missing: str | None = None) -> str:
    """A ratio with its interval, as the reports print it: "1.62x (1.03-2.30)"; "none: `missing`"
    (why there is none) where there is no ratio (nan)."""
    value, low, high = ratio
    if math.isnan(value):
        return f"none: {missing or 'no ratio'}"
    return f"{value:.2f}x ({low:.2f}-{high:.2f})"


def _shared_seeds(*runs: Runs) -> list[int]:
    """The seeds every one of `runs` has, in order."""
    return sorted(set.intersection(*(set(r) for r in runs)))
