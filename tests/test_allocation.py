"""GVM allocation: exact sums, bounds, the continuous optimum, filters, exploration, and errors.

Property tests draw fresh inputs every run (hypothesis, not derandomised); the optimum is checked
against scipy's SLSQP on the paper's objective, not against our own formula.
"""
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from gvm.allocation import allocate, allocate_uniform, estimator_variance, gvm_weights, predicted_variance_ratio

PROPERTY = settings(max_examples=100, deadline=None)

rates = st.one_of(st.just(0.0), st.floats(1e-3, 1.0), st.just(1.0))
norms = st.one_of(st.just(0.0), st.floats(1e-3, 1e3))


@st.composite
def prompt_stats(draw, min_size=1, max_size=12, rate=rates, norm=norms):
    """(G, p) of equal length."""
    n = draw(st.integers(min_size, max_size))
    grad = np.array(draw(st.lists(norm, min_size=n, max_size=n)))
    accept = np.array(draw(st.lists(rate, min_size=n, max_size=n)))
    return grad, accept


def quiet_allocate(*args, **kwargs):
    """allocate() with the zero-weight warnings silenced (property tests hit them on purpose)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return allocate(*args, **kwargs)


def paper_objective(counts, grad, accept, alpha, beta):
    """sum_i G_i^2 / (p_i n_i) * 1 / (1 + alpha / p_i^beta), as written in the paper."""
    return np.sum(grad**2 / (accept * counts) / (1.0 + alpha / accept**beta))


# ------------------------------------------------------------------------------------ weights


def test_weights_match_formula_and_vanish_where_unsolved():
    grad = np.array([2.0, 1.0, 0.0, 3.0])
    accept = np.array([0.25, 0.0, 0.5, 1.0])
    alpha, beta = 0.01, 3.0
    expected = [2.0 / np.sqrt(0.25 + alpha * 0.25**-2), 0.0, 0.0, 3.0 / np.sqrt(1.0 + alpha)]
    np.testing.assert_allclose(gvm_weights(grad, accept, alpha=alpha, beta=beta), expected, rtol=1e-12)


def test_weight_peaks_at_paper_rate():
    """w peaks at p* = (alpha (beta - 1))^(1/beta) for fixed G."""
    alpha, beta = 1e-3, 2.0
    grid = np.linspace(1e-4, 1.0, 200001)
    weights = gvm_weights(np.ones_like(grid), grid, alpha=alpha, beta=beta)
    assert grid[np.argmax(weights)] == pytest.approx((alpha * (beta - 1)) ** (1 / beta), abs=1e-4)


def test_weights_of_tiny_rates_underflow_to_zero_not_nan():
    weights = gvm_weights([1.0, 1.0], [1e-300, 0.5], alpha=1e-3, beta=50.0)
    assert weights[0] == 0.0 and np.isfinite(weights).all() and weights[1] > 0


# ------------------------------------------------------------------------------------ sums and bounds


@PROPERTY
@given(stats=prompt_stats(), budget=st.integers(0, 2000), mode=st.sampled_from(["skip", "explore"]))
def test_sum_is_exact_and_counts_nonnegative(stats, budget, mode):
    grad, accept = stats
    if mode == "skip" and not (accept > 0).any() and budget > 0:
        with pytest.raises(ValueError, match="zero_accept"):
            allocate(grad, accept, budget, zero_accept=mode)
        return
    counts = quiet_allocate(grad, accept, budget, zero_accept=mode)
    assert counts.dtype == np.int64 and counts.shape == grad.shape
    assert counts.sum() == budget
    assert (counts >= 0).all()
    if mode == "skip":
        assert (counts[accept == 0] == 0).all()


@PROPERTY
@given(
    stats=prompt_stats(),
    budget=st.integers(0, 500),
    floor=st.integers(0, 40),
    spread=st.one_of(st.none(), st.integers(0, 80)),
)
def test_bounds_hold_when_feasible_and_raise_otherwise(stats, budget, floor, spread):
    grad, accept = stats
    cap = None if spread is None else floor + spread
    active = int((accept > 0).sum())
    feasible = active * floor <= budget and (cap is None or active * cap >= budget) and (active or budget == 0)
    if not feasible:
        with pytest.raises(ValueError, match="min_per_prompt|max_per_prompt|zero_accept"):
            quiet_allocate(grad, accept, budget, min_per_prompt=floor, max_per_prompt=cap)
        return
    counts = quiet_allocate(grad, accept, budget, min_per_prompt=floor, max_per_prompt=cap)
    assert counts.sum() == budget
    solved = accept > 0
    assert (counts[solved] >= floor).all()
    if cap is not None:
        assert (counts[solved] <= cap).all()
    assert (counts[~solved] == 0).all()


@PROPERTY
@given(stats=prompt_stats(), budget=st.integers(0, 5000))
def test_uncapped_counts_within_one_of_proportional_share(stats, budget):
    grad, accept = stats
    weights = gvm_weights(grad, accept)
    assume(weights.sum() > 0)
    counts = allocate(grad, accept, budget)
    ideal = budget * weights / weights.sum()
    assert np.all(np.abs(counts - ideal) < 1.0 + 1e-9), (counts, ideal)


@PROPERTY
@given(stats=prompt_stats(rate=st.floats(1e-3, 1.0)), budget=st.integers(1, 3000), data=st.data())
def test_raising_one_gradient_norm_never_lowers_its_count(stats, budget, data):
    grad, accept = stats
    index = data.draw(st.integers(0, grad.size - 1))
    raised = grad.copy()
    raised[index] = grad[index] * data.draw(st.floats(1.0, 100.0)) + data.draw(st.floats(0.0, 10.0))
    before = quiet_allocate(grad, accept, budget)
    after = quiet_allocate(raised, accept, budget)
    assert after[index] >= before[index], (before, after)


@PROPERTY
@given(stats=prompt_stats(), budget=st.integers(0, 3000), scale=st.floats(1e-3, 1e3))
def test_scaling_every_gradient_norm_changes_nothing(stats, budget, scale):
    grad, accept = stats
    assume((accept > 0).any())
    before = quiet_allocate(grad, accept, budget, min_per_prompt=0, max_per_prompt=budget)
    after = quiet_allocate(grad * scale, accept, budget, min_per_prompt=0, max_per_prompt=budget)
    np.testing.assert_array_equal(before, after)


def test_cap_overflow_goes_to_others_by_weight():
    grad = np.array([100.0, 1.0, 2.0, 3.0])
    accept = np.full(4, 0.5)
    counts = allocate(grad, accept, 60, max_per_prompt=30)
    # prompt 0 saturates; the other 30 split 1:2:3
    np.testing.assert_array_equal(counts, [30, 5, 10, 15])


def test_floor_is_given_first_and_the_rest_shared_by_weight():
    grad = np.array([1.0, 1.0, 98.0])
    accept = np.full(3, 0.5)
    counts = allocate(grad, accept, 100, min_per_prompt=10)
    np.testing.assert_array_equal(counts, [10, 10, 80])


def test_infeasible_bounds_say_why():
    grad, accept = np.ones(4), np.full(4, 0.5)
    with pytest.raises(ValueError, match="min_per_prompt=30 over 4 prompts needs 120"):
        allocate(grad, accept, 100, min_per_prompt=30)
    with pytest.raises(ValueError, match="max_per_prompt=20 over 4 prompts allows only 80"):
        allocate(grad, accept, 100, max_per_prompt=20)


# ------------------------------------------------------------------------------------ the optimum


def slsqp_optimum(grad, accept, budget, alpha, beta, lower=None, upper=None):
    """Minimise the paper's objective over real counts with scipy (independent of our formula)."""
    n = grad.size
    lower = np.full(n, 1e-6) if lower is None else np.maximum(lower, 1e-6)
    upper = np.full(n, np.inf) if upper is None else upper
    scale = paper_objective(np.full(n, budget / n), grad, accept, alpha, beta)
    result = minimize(
        lambda counts: paper_objective(counts, grad, accept, alpha, beta) / scale,
        x0=np.clip(np.full(n, budget / n), lower, upper),
        jac=lambda counts: -(grad**2) / (accept * counts**2) / (1.0 + alpha / accept**beta) / scale,
        method="SLSQP",
        bounds=list(zip(lower, upper)),
        constraints=[{"type": "eq", "fun": lambda counts: counts.sum() - budget, "jac": lambda c: np.ones(n)}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    if not result.success:  # SLSQP's line search can stall near a bound (status 8): ask another method
        result = trust_constr(lambda counts: paper_objective(counts, grad, accept, alpha, beta) / scale,
                              np.clip(np.full(n, budget / n), lower, upper), lower, upper, budget)
    assert result.success, result.message
    return result.x


def trust_constr(objective, x0, lower, upper, budget):
    """scipy's trust-constr on the same problem: the fallback where SLSQP stalls."""
    return minimize(objective, x0=x0, method="trust-constr", bounds=list(zip(lower, upper)),
                    constraints=[{"type": "eq", "fun": lambda c: c.sum() - budget}],
                    options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000})


@settings(max_examples=40, deadline=None)
@given(
    stats=prompt_stats(min_size=2, max_size=6, rate=st.floats(0.02, 1.0), norm=st.floats(0.1, 10.0)),
    budget=st.integers(50, 400),
    alpha=st.sampled_from([1e-3, 1e-2, 0.0]),
    beta=st.sampled_from([2.0, 3.0]),
)
def test_weights_give_the_continuous_optimum(stats, budget, alpha, beta):
    grad, accept = stats
    optimum = slsqp_optimum(grad, accept, budget, alpha, beta)
    weights = gvm_weights(grad, accept, alpha=alpha, beta=beta)
    closed_form = budget * weights / weights.sum()
    np.testing.assert_allclose(closed_form, optimum, rtol=1e-3)
    counts = allocate(grad, accept, budget, alpha=alpha, beta=beta)
    assert np.all(np.abs(counts - optimum) < 1.0 + 1e-3 * optimum)


@settings(max_examples=40, deadline=None)
@given(
    stats=prompt_stats(min_size=2, max_size=6, rate=st.floats(0.02, 1.0), norm=st.floats(0.1, 10.0)),
    per_prompt=st.integers(10, 40),
    floor=st.integers(0, 8),
    spread=st.integers(2, 40),
)
def test_bounded_allocation_is_the_bounded_optimum(stats, per_prompt, floor, spread):
    """Water-filling under min/max caps minimises the same objective under those bounds."""
    grad, accept = stats
    budget = per_prompt * grad.size
    cap = floor + spread
    assume(floor * grad.size <= budget <= cap * grad.size)
    lower, upper = np.full(grad.size, float(floor)), np.full(grad.size, float(cap))
    optimum = slsqp_optimum(grad, accept, budget, 1e-3, 2.0, lower, upper)
    counts = allocate(grad, accept, budget, min_per_prompt=floor, max_per_prompt=cap)
    assert np.all(np.abs(counts - optimum) < 1.0 + 1e-3 * optimum), (counts, optimum)


# ------------------------------------------------------------------------------------ ties


def test_ties_go_to_the_lowest_index():
    counts = allocate(np.ones(3), np.full(3, 0.5), 10)
    np.testing.assert_array_equal(counts, [4, 3, 3])
    counts = allocate(np.ones(5), np.full(5, 0.5), 13)
    np.testing.assert_array_equal(counts, [3, 3, 3, 2, 2])


@PROPERTY
@given(stats=prompt_stats(), budget=st.integers(0, 1000))
def test_allocation_is_deterministic(stats, budget):
    grad, accept = stats
    assume((accept > 0).any())
    np.testing.assert_array_equal(quiet_allocate(grad, accept, budget), quiet_allocate(grad, accept, budget))


def test_large_gradient_norms_do_not_overflow():
    counts = allocate([1e300, 3e300], [1e-200, 1e-200], 40, alpha=0.0)
    np.testing.assert_array_equal(counts, [10, 30])


# ------------------------------------------------------------------------------------ filters


def test_filter_threshold_drops_easy_prompts_and_reshares():
    grad = np.array([1.0, 2.0, 3.0, 4.0])
    accept = np.array([0.5, 0.95, 0.3, 0.91])
    counts = allocate(grad, accept, 100, filter_threshold=0.9)
    assert counts[1] == 0 and counts[3] == 0
    np.testing.assert_array_equal(counts[[0, 2]], allocate(grad[[0, 2]], accept[[0, 2]], 100))


def test_filter_insufficient_worked_example():
    # w = [1.41, 1.41, 3.02]: the rare prompt first gets 15 samples (0.15 expected accepts < 1),
    # is dropped, and the two others share all 30.
    counts = allocate([1.0, 1.0, 1.0], [0.5, 0.5, 0.01], 30, filter_insufficient=1.0)
    np.testing.assert_array_equal(counts, [15, 15, 0])


@PROPERTY
@given(stats=prompt_stats(), budget=st.integers(1, 1000), limit=st.floats(0.0, 5.0))
def test_filter_insufficient_repeats_until_stable(stats, budget, limit):
    grad, accept = stats
    kept = accept > 0
    expected = np.zeros(grad.size, dtype=np.int64)
    while kept.any():  # the documented loop, written with the public API on sub-arrays
        expected[:] = 0
        expected[kept] = quiet_allocate(grad[kept], accept[kept], budget)
        weak = kept & (accept * expected < limit)
        if not weak.any():
            break
        kept &= ~weak
    if not kept.any():
        with pytest.raises(ValueError, match="filter_insufficient|zero_accept"):
            quiet_allocate(grad, accept, budget, filter_insufficient=limit)
        return
    counts = quiet_allocate(grad, accept, budget, filter_insufficient=limit)
    np.testing.assert_array_equal(counts, expected)
    assert np.all(accept[counts > 0] * counts[counts > 0] >= limit)


def test_everything_filtered_raises_with_reasons():
    with pytest.raises(ValueError, match=r"1 unsolved .*1 above filter_threshold=0.5"):
        allocate([1.0, 1.0], [0.0, 0.9], 10, filter_threshold=0.5)
    np.testing.assert_array_equal(allocate([1.0, 1.0], [0.0, 0.9], 0, filter_threshold=0.5), [0, 0])


# ------------------------------------------------------------------------------------ zero_accept


def test_skip_gives_unsolved_nothing_even_with_a_floor():
    counts = allocate([1.0, 0.0, 2.0], [0.5, 0.0, 0.5], 30, min_per_prompt=5)
    assert counts[1] == 0 and counts.sum() == 30


def test_explore_gives_each_unsolved_prompt_its_share():
    grad = np.array([1.0, 0.0, 2.0, 0.0])
    accept = np.array([0.5, 0.0, 0.5, 0.0])
    counts = allocate(grad, accept, 100, zero_accept="explore")
    np.testing.assert_array_equal(counts[[1, 3]], [1, 1])
    np.testing.assert_array_equal(counts[[0, 2]], allocate(grad[[0, 2]], accept[[0, 2]], 98))


def test_explore_pool_is_capped_by_fraction_and_spread_evenly():
    accept = np.array([0.5] + [0.0] * 3)
    grad = np.array([1.0, 0.0, 0.0, 0.0])
    # 3 unsolved want 4 each (12), the fraction allows floor(0.1 * 100) = 10: spread 4, 3, 3.
    counts = allocate(grad, accept, 100, zero_accept="explore", explore_per_prompt=4)
    np.testing.assert_array_equal(counts, [90, 4, 3, 3])
    # 30 unsolved, pool of 10: the first ten get one each.
    accept = np.array([0.5] + [0.0] * 30)
    counts = allocate(np.r_[1.0, np.zeros(30)], accept, 100, zero_accept="explore")
    np.testing.assert_array_equal(counts[1:], [1] * 10 + [0] * 20)


def test_explore_respects_floor_and_cap():
    accept = np.array([0.5, 0.0, 0.0])
    counts = allocate([1.0, 0.0, 0.0], accept, 40, zero_accept="explore", min_per_prompt=3)
    np.testing.assert_array_equal(counts, [34, 3, 3])
    # pool min(20, floor(1.0 * 20)) = 20, clipped to the cap of 12; the solved prompt takes the rest
    counts = allocate(
        [1.0, 0.0], [0.5, 0.0], 20,
        zero_accept="explore", explore_per_prompt=20, explore_fraction=1.0, max_per_prompt=12,
    )
    np.testing.assert_array_equal(counts, [8, 12])


def test_filter_insufficient_spares_explored_prompts():
    counts = allocate([1.0, 0.0], [0.5, 0.0], 20, zero_accept="explore", filter_insufficient=1.0)
    np.testing.assert_array_equal(counts, [19, 1])


# ------------------------------------------------------------------------------------ zero weights


def test_all_zero_weights_share_uniformly_with_a_warning():
    with pytest.warns(RuntimeWarning, match="every GVM weight is zero"):
        counts = allocate([0.0, 0.0, 0.0, 5.0], [0.5, 0.2, 0.7, 0.0], 10)
    np.testing.assert_array_equal(counts, [4, 3, 3, 0])


def test_all_unsolved_under_explore_share_uniformly_with_a_warning():
    with pytest.warns(RuntimeWarning, match="every GVM weight is zero"):
        counts = allocate([0.0, 0.0], [0.0, 0.0], 7, zero_accept="explore")
    np.testing.assert_array_equal(counts, [4, 3])


def test_capped_weighted_prompts_hand_the_rest_to_zero_weight_ones():
    with pytest.warns(RuntimeWarning, match="max_per_prompt"):
        counts = allocate([1.0, 0.0, 0.0], [0.5, 0.5, 0.5], 20, max_per_prompt=10)
    np.testing.assert_array_equal(counts, [10, 5, 5])


def test_empty_input():
    assert allocate([], [], 0).shape == (0,)
    with pytest.raises(ValueError, match="no prompt"):
        allocate([], [], 5)


# ------------------------------------------------------------------------------------ errors


GOOD = dict(grad_norms=[1.0, 2.0], accept_rates=[0.5, 0.5], budget=10)


@pytest.mark.parametrize(
    "change, argument",
    [
        (dict(grad_norms=[1.0, np.nan]), "grad_norms"),
        (dict(grad_norms=[1.0, np.inf]), "grad_norms"),
        (dict(grad_norms=[1.0, -1.0]), "grad_norms"),
        (dict(grad_norms=[[1.0, 2.0]]), "grad_norms"),
        (dict(grad_norms=["a", "b"]), "grad_norms"),
        (dict(accept_rates=[0.5, 1.5]), "accept_rates"),
        (dict(accept_rates=[-0.1, 0.5]), "accept_rates"),
        (dict(accept_rates=[0.5, np.nan]), "accept_rates"),
        (dict(accept_rates=[0.5]), "same length"),
        (dict(budget=-1), "budget"),
        (dict(budget=2.5), "budget"),
        (dict(budget=True), "budget"),
        (dict(budget="10"), "budget"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=np.nan), "alpha"),
        (dict(beta=np.inf), "beta"),
        (dict(min_per_prompt=-1), "min_per_prompt"),
        (dict(min_per_prompt=1.5), "min_per_prompt"),
        (dict(max_per_prompt=-2), "max_per_prompt"),
        (dict(min_per_prompt=3, max_per_prompt=2), "min_per_prompt=3 must not exceed max_per_prompt=2"),
        (dict(filter_threshold=1.5), "filter_threshold"),
        (dict(filter_threshold=np.nan), "filter_threshold"),
        (dict(filter_insufficient=-1.0), "filter_insufficient"),
        (dict(zero_accept="drop"), "zero_accept"),
        (dict(explore_per_prompt=-1), "explore_per_prompt"),
        (dict(explore_fraction=2.0), "explore_fraction"),
    ],
)
def test_bad_arguments_name_themselves(change, argument):
    with pytest.raises(ValueError, match=argument):
        allocate(**{**GOOD, **change})


def test_gvm_weights_validates_too():
    with pytest.raises(ValueError, match="accept_rates"):
        gvm_weights([1.0], [2.0])
    with pytest.raises(ValueError, match="alpha"):
        gvm_weights([1.0], [0.5], alpha=-1.0)


def test_integral_floats_and_numpy_ints_are_accepted_as_budget():
    np.testing.assert_array_equal(allocate([1.0, 1.0], [0.5, 0.5], 10.0), [5, 5])
    np.testing.assert_array_equal(allocate([1.0, 1.0], [0.5, 0.5], np.int32(10)), [5, 5])


# ------------------------------------------------------------------------------------ uniform


@PROPERTY
@given(n_prompts=st.integers(1, 300), budget=st.integers(0, 10_000))
def test_uniform_is_as_even_as_possible(n_prompts, budget):
    counts = allocate_uniform(n_prompts, budget)
    assert counts.dtype == np.int64 and counts.shape == (n_prompts,)
    assert counts.sum() == budget
    assert counts.max() - counts.min() <= 1
    assert np.all(np.diff(counts) <= 0)  # the remainder goes to the first prompts


def test_uniform_errors():
    with pytest.raises(ValueError, match="n_prompts"):
        allocate_uniform(-1, 5)
    with pytest.raises(ValueError, match="budget"):
        allocate_uniform(3, 1.5)
    with pytest.raises(ValueError, match="n_prompts=0"):
        allocate_uniform(0, 5)
    assert allocate_uniform(0, 0).shape == (0,)


# ------------------------------------------------------------------------------------ GRPO, held samples, variance


def slsqp_minimum(objective, n, budget, lower):
    """scipy's SLSQP minimum of `objective` over real counts >= lower summing to budget."""
    lower = np.maximum(lower, 1e-6)
    x0 = lower + (budget - lower.sum()) / n            # feasible: above every bound, right sum
    scale = objective(x0)
    result = minimize(lambda c: objective(c) / scale, x0=x0, method="SLSQP", bounds=[(lo, None) for lo in lower],
                      constraints=[{"type": "eq", "fun": lambda c: c.sum() - budget}],
                      options={"ftol": 1e-14, "maxiter": 2000})
    if not result.success:  # see slsqp_optimum
        result = trust_constr(lambda c: objective(c) / scale, x0, lower, np.full(n, np.inf), budget)
    assert result.success, result.message
    return result.x


live_rates = st.one_of(st.just(0.0), st.floats(0.02, 0.98), st.just(1.0))


@settings(max_examples=40, deadline=None)
@given(stats=prompt_stats(min_size=2, max_size=7, rate=live_rates, norm=st.floats(0.1, 10.0)),
       budget=st.integers(50, 400))
def test_grpo_objective_allocation_is_its_minimiser(stats, budget):
    """objective="grpo": nothing to prompts with p in {0, 1}; on the rest, the integer counts lie
    within one sample of the numeric minimiser of sum G_i^2 / n_i. (Not "no worse than uniform":
    a live prompt whose optimal share is under one sample may round to none, and the objective is
    then infinite; GRPO needs two samples of a prompt for any gradient, so one would not help.)"""
    grad, accept = stats
    live = (accept > 0) & (accept < 1)
    assume(live.any())
    counts = allocate(grad, accept, budget, objective="grpo")
    assert counts.sum() == budget and (counts[~live] == 0).all()
    optimum = slsqp_minimum(lambda c: np.sum(grad[live] ** 2 / c), int(live.sum()), budget,
                            np.zeros(int(live.sum())))
    assert np.all(np.abs(counts[live] - optimum) < 1.0 + 1e-3 * optimum), (counts[live], optimum)


@settings(max_examples=40, deadline=None)
@given(stats=prompt_stats(min_size=2, max_size=6, rate=st.floats(0.05, 0.95), norm=st.floats(0.1, 10.0)),
       budget=st.integers(20, 200), data=st.data(), objective=st.sampled_from(["raft", "grpo"]))
def test_held_samples_count_towards_the_optimum(stats, budget, data, objective):
    """With samples already held (a reused pilot, earlier rounds) the new ones bring held + new
    to the numeric minimiser of the objective under new >= 0."""
    grad, accept = stats
    held = np.array(data.draw(st.lists(st.integers(0, 30), min_size=grad.size, max_size=grad.size)), dtype=float)
    counts = allocate(grad, accept, budget, objective=objective, held=held)
    assert counts.sum() == budget and (counts >= 0).all()
    objective_fn = ((lambda c: paper_objective(c, grad, accept, 1e-3, 2.0)) if objective == "raft"
                    else (lambda c: np.sum(grad**2 / c)))
    total = budget + held.sum()
    optimum = slsqp_minimum(objective_fn, grad.size, total, np.maximum(held, 1e-6))
    assert np.all(np.abs(counts + held - optimum) < 1.0 + 1e-3 * optimum), (counts + held, optimum)


def test_grpo_skips_agreeing_prompts_and_explores_them_on_request():
    grad, accept = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.5, 1.0, 0.25])
    np.testing.assert_array_equal(allocate(grad, accept, 12, objective="grpo"), [0, 4, 0, 8])
    explored = allocate(grad, accept, 20, objective="grpo", zero_accept="explore", explore_per_prompt=1)
    assert explored[0] == 1 and explored[2] == 1 and explored.sum() == 20
    with pytest.raises(ValueError, match=r"p=0 or p=1 \(objective='grpo'\)"):
        allocate(grad, np.array([0.0, 1.0, 1.0, 0.0]), 8, objective="grpo")
    with pytest.raises(ValueError, match="objective must be one of"):
        allocate(grad, accept, 8, objective="ppo")
    with pytest.raises(ValueError, match="held must hold"):
        allocate(grad, accept, 8, held=[1, 2, -1, 0])


@settings(max_examples=60, deadline=None)
@given(stats=prompt_stats(min_size=1, max_size=10), data=st.data(), alpha=st.sampled_from([1e-3, 0.0, 0.1]),
       beta=st.sampled_from([2.0, 3.0]), objective=st.sampled_from(["raft", "grpo"]))
def test_estimator_variance_is_the_objective(stats, data, alpha, beta, objective):
    grad, accept = stats
    counts = np.array(data.draw(st.lists(st.integers(0, 50), min_size=grad.size, max_size=grad.size)))
    got = estimator_variance(grad, accept, counts, alpha=alpha, beta=beta, objective=objective)
    live = (grad > 0) & (accept > 0) & ((accept < 1) if objective == "grpo" else True)
    if not live.any():
        assert got == 0.0
    elif (counts[live] == 0).any():
        assert got == np.inf
    else:
        g, p, n = grad[live], accept[live], counts[live]
        want = np.sum(g**2 / n) if objective == "grpo" else np.sum(g**2 / (p * n) / (1 + alpha / p**beta))
        assert got == pytest.approx(want, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(stats=prompt_stats(min_size=2, max_size=10, rate=st.floats(0.05, 1.0), norm=st.floats(0.1, 10.0)))
def test_predicted_ratio_of_the_optimum_is_the_cauchy_schwarz_bound(stats):
    """R_pred of the (uncapped) allocation of N samples against an even split of the same N is
    m sum a_i^2 / (sum a_i)^2 with a_i = G_i sqrt(d_i / p_i); rounding to integers moves V by at
    most m / N relative, so N = 10^6 leaves 1e-4."""
    grad, accept = stats
    budget = 10**6
    counts = allocate(grad, accept, budget)
    a = grad * np.sqrt(1.0 / (accept * (1.0 + 1e-3 / accept**2)))
    bound = grad.size * np.sum(a**2) / np.sum(a) ** 2
    assert predicted_variance_ratio(grad, accept, counts, budget) == pytest.approx(bound, rel=1e-4)
    assert predicted_variance_ratio(grad, accept, allocate_uniform(grad.size, budget), budget) == pytest.approx(1.0)
    # a thrown-away pilot counts against the allocation: the same counts, twice the samples generated
    assert predicted_variance_ratio(grad, accept, counts, 2 * budget) == pytest.approx(bound / 2, rel=1e-4)


def test_predicted_ratio_edge_cases():
    assert np.isnan(predicted_variance_ratio([1.0, 2.0], [0.0, 0.0], [3, 3], 6))      # nothing to weigh
    assert predicted_variance_ratio([1.0, 2.0], [0.5, 0.5], [6, 0], 6) == 0.0          # a live prompt starved
