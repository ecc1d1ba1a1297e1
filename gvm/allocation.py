"""Share a sampling budget over prompts so that the RAFT gradient estimate varies least.

The formula (GVM-RAFT, arXiv 2505.02391). With p_i the acceptance rate of prompt i and G_i the mean
gradient norm of its accepted samples, n_i samples leave a gradient variance of about
G_i^2 / (p_i n_i). The paper damps prompts that are (nearly) never solved and minimises

    sum_i  G_i^2 / (p_i n_i) * 1 / (1 + alpha / p_i^beta)    subject to   sum_i n_i = N.

Setting the derivative to a common multiplier gives n_i proportional to

    w_i = G_i / sqrt(p_i + alpha * p_i^(1 - beta)),      n_i = N * w_i / sum_l w_l,

with w_i = 0 where p_i = 0 or G_i = 0 (paper defaults alpha = 1e-3, beta = 2).

With per-prompt bounds lo_i <= n_i <= hi_i (``min_per_prompt``, ``max_per_prompt``, exploration)
the same objective is minimised by water-filling: n_i = clip(t * w_i, lo_i, hi_i) with the one
level t that makes the sum N. A prompt pushed to its cap hands its overflow to the others in
proportion to their weights; a prompt held up by its floor takes its floor and the rest share what
is left. Zero-weight prompts sit at their floor.

Integers come from largest-remainder rounding inside the bounds: every prompt gets floor(x_i),
the samples still missing go one each to the largest fractional parts (ties to the lower index).
So the counts sum exactly to N, stay within [lo_i, hi_i], and each is within one sample of the
continuous optimum.

Who takes part:
- ``zero_accept="skip"`` (the paper): unsolved prompts (p_i = 0) get nothing, not even the floor.
  ``"explore"``: each unsolved prompt asks for ``explore_per_prompt`` samples, all of them together
  at most floor(``explore_fraction`` * N); that pool is spread evenly over the unsolved prompts
  (remainder to the lowest indices). The result is their floor (never below ``min_per_prompt``,
  which wins over the fraction) and they take no part in the weighted share.
- ``filter_threshold``: prompts with p_i > threshold are dropped (too easy).
- ``filter_insufficient``: allocate, drop the solved prompts whose expected accepted count
  p_i * n_i (integer n_i) is below the value, share the budget again among the rest; repeat until
  nobody is dropped. Each round only shrinks the set, so it ends within n rounds. Unsolved prompts
  kept by "explore" are exempt (they are there to be measured again).
- ``min_per_prompt`` / ``max_per_prompt`` hold for every prompt that takes part; dropped and
  skipped prompts get 0.
- If every weight is zero the budget is spread evenly over the prompts that take part (with a
  warning); if the weighted prompts all reach their cap, the rest goes evenly to the zero-weight
  ones (with a warning). Nothing divides by zero.

How the authors' code differs: it rounds round(N * w_i / sum w) and then adds or removes one at the
largest / smallest residuals until the sum is N (no guarantee of staying within one sample of the
optimum, no bounds); it divides by zero when every weight vanishes; it has no per-prompt cap or
floor and no exploration of unsolved prompts.
"""
from __future__ import annotations

import inspect
import math
import numbers
import warnings

import numpy as np

ZERO_ACCEPT_MODES = ("skip", "explore")
OBJECTIVES = ("raft", "grpo")


class NoEligiblePrompts(ValueError):
    """The prompts that take part cannot receive the budget: none is left (all unsolved under
    zero_accept="skip", or filtered), or all of them together are capped below it. A training loop
    may fall back to an even split here; every other ValueError is a bad argument."""


# ---------------------------------------------------------------------------------- validation


def _as_vector(values, name: str) -> np.ndarray:
    """A 1-D float64 copy of `values`, or a ValueError naming `name`."""
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a 1-D sequence of real numbers ({error})") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        where = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name} must be finite; found {float(array[where])} at index {where}")
    return array


def _check_stats(grad_norms, accept_rates) -> tuple[np.ndarray, np.ndarray]:
    """Validated (G, p): equal lengths, G >= 0, p in [0, 1]."""
    grad = _as_vector(grad_norms, "grad_norms")
    rate = _as_vector(accept_rates, "accept_rates")
    if grad.shape != rate.shape:
        raise ValueError(f"grad_norms and accept_rates must have the same length, got {grad.size} and {rate.size}")
    if np.any(grad < 0):
        raise ValueError(f"grad_norms must be >= 0; found {float(grad[grad < 0][0])}")
    if np.any((rate < 0) | (rate > 1)):
        bad = rate[(rate < 0) | (rate > 1)][0]
        raise ValueError(f"accept_rates must lie in [0, 1]; found {float(bad)}")
    return grad, rate


def _check_int(value, name: str, *, allow_none: bool = False) -> int | None:
    """A non-negative Python int (bool and non-integral floats refused)."""
    if value is None and allow_none:
        return None
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral or value < 0:
        allowed = "None or a non-negative integer" if allow_none else "a non-negative integer"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def _check_real(value, name: str, low: float, high: float = math.inf, *, allow_none: bool = False) -> float | None:
    """A finite real in [low, high]."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low <= value <= high:
        span = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
        prefix = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {prefix}a finite number {span}, got {value!r}")
    return float(value)


def _check_shape(alpha, beta) -> tuple[float, float]:
    alpha = _check_real(alpha, "alpha", 0.0)
    if not (isinstance(beta, numbers.Real) and not isinstance(beta, bool) and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number (the paper uses beta >= 2), got {beta!r}")
    return alpha, float(beta)


# ---------------------------------------------------------------------------------- weights


def gvm_weights(grad_norms, accept_rates, alpha: float = 1e-3, beta: float = 2.0) -> np.ndarray:
    """w_i = G_i / sqrt(p_i + alpha * p_i^(1 - beta)); 0 where p_i = 0 or G_i = 0.

    Shapes: grad_norms, accept_rates (n,) -> (n,) float64. A denominator that overflows (tiny p_i,
    large beta) gives weight 0, which is its limit.
    """
    grad, rate = _check_stats(grad_norms, accept_rates)
    alpha, beta = _check_shape(alpha, beta)
    return _weights(grad, rate, alpha, beta)


def _weights(grad: np.ndarray, rate: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    weights = np.zeros_like(grad)
    live = (rate > 0) & (grad > 0)
    with np.errstate(over="ignore"):
        denominator = rate[live] + alpha * rate[live] ** (1.0 - beta)
        weights[live] = grad[live] / np.sqrt(denominator)
    return weights


# ---------------------------------------------------------------------------------- sharing


def _water_fill(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: float) -> np.ndarray:
    """x_i = clip(t * w_i, lower_i, upper_i) with sum x = total, the bounded minimiser of
    sum c_i / x_i for w_i = sqrt(c_i). Needs all w_i > 0 and sum(lower) <= total <= sum(upper)."""
    knots = np.unique(np.concatenate([[0.0], lower / weights, upper / weights]))
    knots = knots[np.isfinite(knots)]

    def filled(level: float) -> float:
        return float(np.clip(level * weights, lower, upper).sum())

    # Largest knot whose fill is <= total (fill is nondecreasing in the level): binary search.
    low, high = 0, knots.size - 1
    while low < high:
        mid = (low + high + 1) // 2
        if filled(knots[mid]) <= total:
            low = mid
        else:
            high = mid - 1
    knot = knots[low]
    # Between this knot and the next, who is clamped is fixed, so the level solves a linear equation.
    at_lower = lower / weights > knot
    at_upper = upper / weights <= knot
    free = ~at_lower & ~at_upper
    if free.any():
        level = (total - lower[at_lower].sum() - upper[at_upper].sum()) / weights[free].sum()
    else:
        level = knot
    return np.clip(level * weights, lower, upper)


def _round_within(target: np.ndarray, lower: np.ndarray, upper: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of `target` to integers in [lower, upper] that sum to `total`;
    ties go to the lower index. `lower` is integral, `upper` integral or inf. Shares are snapped to
    a 1e-9 grid first, so float noise (say from rescaling G) can neither split a tie nor turn
    2.9999999999 into 2."""
    target = np.round(target, 9)
    counts = np.clip(np.floor(target), lower, upper)
    missing = total - int(counts.sum())
    index = np.arange(target.size)
    while missing != 0:
        residual = target - counts
        if missing > 0:
            room = np.flatnonzero(counts < upper)
            order = room[np.lexsort((index[room], -residual[room]))]
        else:
            room = np.flatnonzero(counts > lower)
            order = room[np.lexsort((index[room], residual[room]))]
        if order.size == 0:
            raise AssertionError("rounding ran out of room; the bounds were checked to be feasible")
        step = order[: abs(missing)]
        counts[step] += np.sign(missing)
        missing = total - int(counts.sum())
    return counts.astype(np.int64)


def _share(weights: np.ndarray, lower: np.ndarray, upper: np.ndarray, budget: int) -> np.ndarray:
    """Continuous water-filled shares for the prompts that take part (all rows here do)."""
    weighted = weights > 0
    share = lower.astype(np.float64)
    if not weighted.any():
        warnings.warn(
            f"every GVM weight is zero (no prompt with p > 0 and G > 0 takes part); "
            f"spreading budget={budget} evenly over {weights.size} prompts",
            RuntimeWarning,
            stacklevel=3,
        )
        return _water_fill(np.ones(weights.size), lower, upper, budget)
    rest = budget - lower[~weighted].sum()
    room = upper[weighted].sum()
    if rest <= room:
        share[weighted] = _water_fill(weights[weighted], lower[weighted], upper[weighted], rest)
        return share
    share[weighted] = upper[weighted]
    leftover = budget - share.sum()
    warnings.warn(
        f"the prompts with weight > 0 are all at max_per_prompt; the remaining {leftover:g} samples "
        f"are spread evenly over the {int((~weighted).sum())} zero-weight prompts",
        RuntimeWarning,
        stacklevel=3,
    )
    zero = ~weighted
    share[zero] = _water_fill(np.ones(int(zero.sum())), lower[zero], upper[zero], budget - room)
    return share


def _exploration_counts(n_unsolved: int, budget: int, per_prompt: int, fraction: float) -> np.ndarray:
    """Samples for each unsolved prompt under zero_accept="explore": per_prompt each, at most
    floor(fraction * budget) in all, spread evenly (remainder to the lowest indices)."""
    pool = min(per_prompt * n_unsolved, math.floor(fraction * budget))
    return allocate_uniform(n_unsolved, pool) if n_unsolved else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------- public API


def allocate(
    grad_norms,
    accept_rates,
    budget: int,
    *,
    alpha: float = 1e-3,
    beta: float = 2.0,
    min_per_prompt: int = 0,
    max_per_prompt: int | None = None,
    filter_threshold: float | None = None,
    filter_insufficient: float | None = None,
    zero_accept: str = "skip",
    explore_per_prompt: int = 1,
    explore_fraction: float = 0.1,
    objective: str = "raft",
    held=None,
) -> np.ndarray:
    """New samples per prompt, (n,) int64, summing exactly to `budget` (see the module docstring).

    grad_norms: G_i >= 0 (mean gradient norm over the prompt's accepted pilot samples; for
    objective="grpo", over all its samples).
    accept_rates: p_i in [0, 1] (accepted / pilot samples).
    objective: "raft" (the paper's, RAFT_OBJECTIVE) or "grpo" (GRPO_OBJECTIVE: prompts whose
    rewards cannot differ, p_i = 0 or 1, take the role that unsolved prompts have for "raft").
    held: samples each prompt already has that join its estimate (a reused pilot, earlier rounds);
    the objective is minimised over held + new, the floor and cap bound the new samples.
    Raises NoEligiblePrompts when no prompt is left to receive a positive budget or the prompts
    left are all capped below it, and ValueError for bad arguments (NaN or negative G_i, p_i
    outside [0, 1], a floor above the budget).
    """
    grad, rate = _check_stats(grad_norms, accept_rates)
    alpha, beta = _check_shape(alpha, beta)
    budget = _check_int(budget, "budget")
    floor = _check_int(min_per_prompt, "min_per_prompt")
    cap = _check_int(max_per_prompt, "max_per_prompt", allow_none=True)
    if cap is not None and floor > cap:
        raise ValueError(f"min_per_prompt={floor} must not exceed max_per_prompt={cap}")
    threshold = _check_real(filter_threshold, "filter_threshold", 0.0, 1.0, allow_none=True)
    insufficient = _check_real(filter_insufficient, "filter_insufficient", 0.0, allow_none=True)
    if zero_accept not in ZERO_ACCEPT_MODES:
        raise ValueError(f"zero_accept must be one of {ZERO_ACCEPT_MODES}, got {zero_accept!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    explore_per_prompt = _check_int(explore_per_prompt, "explore_per_prompt")
    explore_fraction = _check_real(explore_fraction, "explore_fraction", 0.0, 1.0)
    held = _check_held(held, rate.size)

    # "Unsolved": the prompts the objective gives no weight whatever their G (RAFT: p = 0;
    # GRPO: p = 0 or 1, whose rewards cannot differ). Never above filter_threshold, which is >= 0.
    unsolved = (rate == 0) | ((rate == 1) if objective == "grpo" else False)
    too_easy = (rate > threshold) & ~unsolved if threshold is not None else np.zeros_like(unsolved)
    solved = ~unsolved & ~too_easy
    exploring = unsolved if zero_accept == "explore" else np.zeros_like(unsolved)
    upper_bound = math.inf if cap is None else float(cap)
    explore_floor = np.zeros(rate.size)
    explore_floor[exploring] = np.minimum(
        np.maximum(
            _exploration_counts(int(exploring.sum()), budget, explore_per_prompt, explore_fraction), floor
        ),
        upper_bound,
    )
    # Scale G into [0, 1] first so no weight overflows; the allocation does not depend on the scale.
    grad_scale = grad.max() if grad.size and grad.max() > 0 else 1.0
    weights = np.where(exploring, 0.0, _objective_weights(objective, grad / grad_scale, rate, alpha, beta))

    dropped_weak = np.zeros_like(unsolved)
    while True:
        active = (solved & ~dropped_weak) | exploring
        counts = np.zeros(rate.size, dtype=np.int64)
        if not active.any():
            if budget == 0:
                return counts
            raise NoEligiblePrompts(_nobody_left(unsolved, too_easy, dropped_weak, zero_accept, threshold,
                                                 insufficient, objective))
        # Shares are of held + new samples: bounds and total shift by what each prompt holds.
        base = held[active]
        lower = base + np.where(exploring, explore_floor, float(floor))[active]
        upper = base + np.full(int(active.sum()), upper_bound)
        total = budget + int(base.sum())
        _check_feasible(lower - base, upper - base, budget, floor, cap, int(exploring.sum()))
        share = _share(weights[active], lower, upper, total)
        counts[active] = _round_within(share, lower, upper, total) - base.astype(np.int64)
        if insufficient is None:
            return counts
        weak = solved & ~dropped_weak & (rate * (counts + held) < insufficient)
        if not weak.any():
            return counts
        dropped_weak |= weak


def _check_held(held, size: int) -> np.ndarray:
    """Samples already held per prompt: non-negative integers, one per prompt (None: none)."""
    if held is None:
        return np.zeros(size)
    array = _as_vector(held, "held")
    if array.shape != (size,) or np.any(array < 0) or np.any(array != np.round(array)):
        raise ValueError(f"held must hold one non-negative integer per prompt ({size}), got {list(array)}")
    return array


def _objective_weights(objective: str, grad: np.ndarray, rate: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """w_i with n_i proportional to w_i the minimiser of the objective (0 where it gives no weight)."""
    if objective == "raft":
        return _weights(grad, rate, alpha, beta)
    return np.where((rate > 0) & (rate < 1), grad, 0.0)


def estimator_variance(grad_norms, accept_rates, counts, *, alpha: float = 1e-3, beta: float = 2.0,
                       objective: str = "raft") -> float:
    """The variance the allocation minimises, at `counts` samples per prompt.

    "raft" (RAFT_OBJECTIVE): sum over prompts with p_i > 0 and G_i > 0 of
    G_i^2 / (p_i n_i) / (1 + alpha / p_i^beta); "grpo" (GRPO_OBJECTIVE): sum over prompts with
    0 < p_i < 1 and G_i > 0 of G_i^2 / n_i. +inf when such a prompt has n_i = 0; 0 when there is
    no such prompt."""
    grad, rate = _check_stats(grad_norms, accept_rates)
    alpha, beta = _check_shape(alpha, beta)
    count = _as_vector(counts, "counts")
    if count.shape != grad.shape or np.any(count < 0):
        raise ValueError(f"counts must hold one non-negative number per prompt ({grad.size}), got {list(count)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    live = (grad > 0) & (rate > 0) & ((rate < 1) if objective == "grpo" else True)
    if not live.any():
        return 0.0
    if np.any(count[live] == 0):
        return math.inf
    g, p, n = grad[live], rate[live], count[live]
    if objective == "grpo":
        return float(np.sum(g**2 / n))
    with np.errstate(over="ignore"):
        damping = 1.0 + alpha / p**beta
    return float(np.sum(g**2 / (p * n) / damping))


def predicted_variance_ratio(grad_norms, accept_rates, counts, total: int, *, alpha: float = 1e-3,
                             beta: float = 2.0, objective: str = "raft") -> float:
    """R_pred: the estimator variance of an even split of `total` samples over the same prompts
    divided by that of `counts` (the samples that enter the estimate; `total` counts every
    generated one, a thrown-away pilot included). > 1: the allocation is predicted to beat an even
    split of what it cost; NaN when neither has variance (no prompt the objective weighs)."""
    kwargs = dict(alpha=alpha, beta=beta, objective=objective)
    even = estimator_variance(grad_norms, accept_rates, allocate_uniform(len(counts), total), **kwargs)
    chosen = estimator_variance(grad_norms, accept_rates, counts, **kwargs)
    if chosen == 0.0 and even == 0.0:
        return math.nan
    if math.isinf(chosen):
        return 0.0 if math.isfinite(even) else math.nan
    return even / chosen if chosen > 0 else math.inf


# allocate()'s rule settings with their defaults (the paper's), read by the run config's sampler
# section; `objective` follows the algorithm and `held` is data, so neither is a setting here.
ALLOCATE_DEFAULTS = {name: param.default for name, param in inspect.signature(allocate).parameters.items()
                     if param.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("objective", "held")}


def _check_feasible(lower, upper, budget, floor, cap, n_exploring) -> None:
    if lower.sum() > budget:
        raise ValueError(
            f"min_per_prompt={floor} over {lower.size} prompts"
            + (f" (with exploration of {n_exploring} unsolved prompts)" if n_exploring else "")
            + f" needs {int(lower.sum())} samples, more than budget={budget}; lower min_per_prompt or raise budget"
        )
    if upper.sum() < budget:
        raise NoEligiblePrompts(
            f"max_per_prompt={cap} over {upper.size} prompts allows only {int(upper.sum())} samples, "
            f"less than budget={budget}; raise max_per_prompt or lower budget"
        )


def _nobody_left(unsolved, too_easy, weak, zero_accept, threshold, insufficient, objective) -> str:
    reasons = []
    if unsolved.any() and zero_accept == "skip":
        what = "unsolved (p=0)" if objective == "raft" else "with p=0 or p=1 (objective='grpo')"
        reasons.append(f"{int(unsolved.sum())} {what} skipped by zero_accept='skip'")
    if too_easy.any():
        reasons.append(f"{int(too_easy.sum())} above filter_threshold={threshold}")
    if weak.any():
        reasons.append(f"{int(weak.sum())} dropped by filter_insufficient={insufficient}")
    why = "; ".join(reasons) if reasons else "no prompts were given"
    return (
        f"no prompt can receive the budget ({why}); use zero_accept='explore' or loosen "
        f"filter_threshold / filter_insufficient, or pass budget=0"
    )


def allocate_uniform(n_prompts: int, budget: int) -> np.ndarray:
    """`budget` over `n_prompts` as evenly as possible (counts differ by at most 1, the remainder
    to the first prompts): the fixed-n baselines (RAFT, GRPO). Returns (n_prompts,) int64."""
    n_prompts = _check_int(n_prompts, "n_prompts")
    budget = _check_int(budget, "budget")
    if n_prompts == 0:
        if budget:
            raise ValueError(f"n_prompts=0 cannot receive budget={budget}; pass n_prompts >= 1")
        return np.zeros(0, dtype=np.int64)
    base, extra = divmod(budget, n_prompts)
    return np.full(n_prompts, base, dtype=np.int64) + (np.arange(n_prompts) < extra)
