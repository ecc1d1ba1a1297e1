"""The adaptive sampler's rules (gvm.stats): the Beta posterior of a prompt's acceptance rate, the
chance that its samples carry gradient, the amortised pilot, the round budgets, and the decayed
history - checked against direct integration and counting, on fresh random inputs."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import beta as beta_dist

from gvm.stats import (SCREEN_OUT, PromptStats, pilot_sizes, posterior_mean, prob_kept, prob_useful, round_budgets,
                       shows_kept)

counts = st.floats(0.0, 12.0)
PROPERTY = settings(max_examples=60, deadline=None)


def expect(a: float, b: float, f) -> float:
    """E[f(p)] under Beta(a, b) by quadrature (scipy), independent of our closed forms."""
    return integrate.quad(lambda p: f(p) * beta_dist.pdf(p, a, b), 0.0, 1.0, limit=200)[0]


@PROPERTY
@given(s=counts, f=counts, prior=st.floats(0.1, 2.0))
def test_posterior_mean_is_the_beta_mean(s, f, prior):
    assert posterior_mean([s], [f], prior)[0] == pytest.approx((prior + s) / (2 * prior + s + f), rel=1e-12)


def test_posterior_without_prior_is_the_plain_rate():
    np.testing.assert_allclose(posterior_mean([3, 0, 0], [1, 4, 0], 0.0), [0.75, 0.0, 0.0])


@PROPERTY
@given(s=counts, f=counts, hs=st.integers(0, 4), hf=st.integers(0, 4), extra=st.integers(0, 12),
       prior=st.floats(0.2, 2.0), need_both=st.booleans())
def test_chance_of_gradient_matches_integration(s, f, hs, hf, extra, prior, need_both):
    """GRPO (need_both): the group of held + extra samples holds both outcomes; RAFT: one accepted."""
    a, b = prior + s + hs, prior + f + hf
    if need_both:
        if hs and hf:
            want = 1.0
        elif hs:
            want = 1.0 - expect(a, b, lambda p: p**extra)
        elif hf:
            want = 1.0 - expect(a, b, lambda p: (1 - p) ** extra)
        else:
            want = 1.0 - expect(a, b, lambda p: p**extra + (1 - p) ** extra)
    else:
        want = 1.0 if hs else 1.0 - expect(a, b, lambda p: (1 - p) ** extra)
    if extra == 0 and want < 1.0:
        want = 0.0   # no new samples: only what is held counts (the formula above would read 1 - 2 = -1)
    got = prob_useful([s], [f], [hs], [hf], [extra], prior=prior, need_both=need_both)[0]
    assert got == pytest.approx(want, abs=1e-7)


@PROPERTY
@given(s=counts, f=counts, n=st.integers(1, 12), prior=st.floats(0.2, 2.0), screen_out=st.sampled_from(SCREEN_OUT))
def test_screen_chance_matches_integration(s, f, n, prior, screen_out):
    """The screened sampler's chance that n samples are not what it skips: not all rejected
    (unsolved), not all accepted (solved), or neither (agreeing)."""
    skipped = {"unsolved": lambda p: (1 - p) ** n, "solved": lambda p: p**n,
               "agreeing": lambda p: p**n + (1 - p) ** n}[screen_out]
    want = 1.0 - expect(prior + s, prior + f, skipped)
    assert prob_kept([s], [f], [n], prior=prior, screen_out=screen_out)[0] == pytest.approx(want, abs=1e-7)


@PROPERTY
@given(s=counts, f=counts, n=st.integers(1, 12), prior=st.floats(0.2, 2.0), screen_out=st.sampled_from(SCREEN_OUT))
def test_the_probe_keeps_exactly_the_outcomes_the_screen_counts_as_kept(s, f, n, prior, screen_out):
    """shows_kept (the probe's rule, on samples drawn) and prob_kept (the screen's, before drawing)
    are one rule: prob_kept is the posterior-predictive chance that n draws show what shows_kept keeps,
    the beta-binomial sum over k accepted of n."""
    a, b = prior + s, prior + f
    k = np.arange(n + 1)
    pmf = np.array([math.comb(n, int(j)) * expect(a, b, lambda p, j=int(j): p**j * (1 - p) ** (n - j)) for j in k])
    kept = shows_kept(k, np.full(n + 1, n), screen_out=screen_out)
    assert float(pmf[kept].sum()) == pytest.approx(prob_kept([s], [f], [n], prior=prior, screen_out=screen_out)[0],
                                                    abs=1e-6)


def test_the_probe_rule_on_small_groups():
    accepted, total = [0, 1, 2, 2, 0], [2, 2, 2, 3, 0]
    assert shows_kept(accepted, total, screen_out="unsolved").tolist() == [False, True, True, True, False]
    assert shows_kept(accepted, total, screen_out="solved").tolist() == [True, True, False, True, False]
    assert shows_kept(accepted, total, screen_out="agreeing").tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError, match="screen_out must be one of"):
        shows_kept([1], [2], screen_out="raft")


def test_screen_chance_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="screen_out must be one of"):
        prob_kept([1], [1], [4], prior=0.5, screen_out="raft")


def test_more_samples_more_chance_and_certainty_where_both_outcomes_are_held():
    useful = prob_useful([0] * 6, [3] * 6, [0] * 6, [0] * 6, [1, 2, 4, 8, 16, 32], prior=0.5, need_both=True)
    assert np.all(np.diff(useful) > 0) and useful[0] == 0.0       # one sample alone never makes a group differ
    assert prob_useful([0], [0], [1], [2], [0], prior=0.5, need_both=True)[0] == 1.0
    # four failures are evidence, not certainty: some chance remains, and it fades as the counts decay
    sure = prob_useful([0], [4], [0], [0], [4], prior=0.5, need_both=False)[0]
    faded = prob_useful([0], [1], [0], [0], [4], prior=0.5, need_both=False)[0]
    assert 0 < sure < faded < 1


@PROPERTY
@given(history=st.lists(st.floats(0, 10), min_size=1, max_size=20), pilot=st.integers(1, 8),
       after=st.one_of(st.none(), st.floats(0.5, 6.0)))
def test_pilot_only_where_history_is_thin(history, pilot, after):
    sizes = pilot_sizes(history, pilot, after)
    for h, size in zip(history, sizes):
        assert size == (pilot if after is None or h < after else 0)


@PROPERTY
@given(total=st.integers(0, 10_000), rounds=st.integers(1, 9))
def test_round_budgets_split_evenly(total, rounds):
    parts = round_budgets(total, rounds)
    assert sum(parts) == total and len(parts) == rounds and max(parts) - min(parts) <= 1
    assert parts == sorted(parts, reverse=True)


def test_round_budgets_refuse_no_rounds():
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        round_budgets(10, 0)


def test_history_decays_at_every_visit_and_keeps_the_latest_norms(seed):
    rng = np.random.default_rng(seed)
    stats, decay = PromptStats(), float(rng.uniform(0.1, 0.9))
    s1, f1 = rng.integers(0, 8, size=3), rng.integers(0, 8, size=3)
    stats.visit([1, 2, 3], 0, decay)
    stats.count_outcomes([1, 2, 3], s1, f1)
    stats.visit([1, 2], 1, decay)                       # prompt 3 not drawn: its counts stay
    s2 = rng.integers(0, 8, size=2)
    stats.count_outcomes([1, 2], s2, [0, 0])
    assert stats.record(1).successes == pytest.approx(decay * s1[0] + s2[0])
    assert stats.record(2).failures == pytest.approx(decay * f1[1])
    assert stats.record(3).successes == s1[2] and stats.record(3).seen == 1
    stats.observe_norms({1: [2.0, 4.0, math.nan], 2: []})
    assert stats.record(1).g == 3.0 and stats.record(2).g == 0.0
    restored = PromptStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.records == stats.records
    assert stats.record(99).successes == 0 and 99 not in stats.records   # unseen: blank, not stored
