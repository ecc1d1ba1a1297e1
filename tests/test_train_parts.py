"""The training loop's parts that need no model: per-prompt statistics, the algorithm registry,
sample construction, dealing prompts to engine replicas, prompt batches, the task's difficulty
mix, the allocation fallback and the table's histogram. Fresh random inputs each run."""
import math

import numpy as np
import pytest
from _seed import seed_for
from gvm.algorithms import ALGORITHMS, advantages_with_baseline, get_algorithm
from gvm.allocation import allocate
from gvm.config import SamplerConfig
from gvm.prompts import Prompt, PromptStream
from gvm.engines.base import Completion
from gvm.rollouts import RolloutBatch, deal
from gvm.run_log import acceptance_histogram, format_header, format_row
from gvm.stats import PromptStats
from gvm.stages import TrainData, allocate_counts, allocation_weights, make_samples, unweighted_norms

SEED = seed_for(__name__)  # this module's seed (tests/_seed.py: replay with GVM_TEST_SEED)


@pytest.fixture
def rng():
    print(f"seed={SEED}")
    return np.random.default_rng(SEED)


# ------------------------------------------------------------------------------------- stats


def test_stats_without_smoothing_use_this_pilot_only(rng):
    stats = PromptStats(ema=0.0)
    keys = list(range(10))
    for iteration in range(3):
        p = rng.integers(0, 5, size=10) / 4
        g = np.where(p > 0, rng.uniform(1, 50, size=10), np.nan)
        p_used, g_used = stats.update(keys, p, g, iteration)
        assert np.array_equal(p_used, p)
        assert np.array_equal(g_used, np.where(p > 0, g, 0.0))  # unmeasured G is 0, as in the paper


def test_stats_smoothing_follows_the_formula(rng):
    ema = float(rng.uniform(0.1, 0.9))
    stats = PromptStats(ema)
    p1, g1 = rng.uniform(0.1, 1, size=4), rng.uniform(1, 9, size=4)
    stats.update([7, 8, 9, 10], p1, g1, 0)
    p2 = rng.uniform(0, 1, size=4)
    g2 = np.array([rng.uniform(1, 9), math.nan, rng.uniform(1, 9), math.nan])
    p_used, g_used = stats.update([7, 8, 9, 11], p2, g2, 1)   # key 11 is new
    assert p_used[:3] == pytest.approx(ema * p1[:3] + (1 - ema) * p2[:3])
    assert g_used[0] == pytest.approx(ema * g1[0] + (1 - ema) * g2[0])
    assert g_used[1] == pytest.approx(g1[1])                    # not measured now: keeps its scale
    assert p_used[3] == p2[3] and g_used[3] == 0.0              # first sight: taken as measured
    restored = PromptStats()
    restored.load_state_dict(stats.state_dict())
    assert restored.records == stats.records and restored.ema == ema
    assert stats.records[7].seen == 2 and stats.records[11].seen == 1


# -------------------------------------------------------------------------------- algorithms


def test_registry_holds_the_three_algorithms():
    assert sorted(ALGORITHMS) == ["grpo", "raft", "raft++"]
    assert get_algorithm("raft").loss == "raft" and not get_algorithm("raft").uses_old_logp
    assert get_algorithm("raft++").uses_old_logp and get_algorithm("raft++").accepted_only
    assert not get_algorithm("grpo").accepted_only
    with pytest.raises(ValueError, match="must be one of"):
        get_algorithm("ppo")


def test_grpo_advantages_with_a_pilot_baseline(rng):
    grpo = get_algorithm("grpo")
    groups = rng.integers(0, 4, size=20)
    rewards = rng.integers(0, 2, size=20).astype(float)
    base_groups = rng.integers(0, 4, size=12)
    base_rewards = rng.integers(0, 2, size=12).astype(float)
    got = advantages_with_baseline(grpo, rewards, groups, base_rewards, base_groups)
    all_r, all_g = np.concatenate([rewards, base_rewards]), np.concatenate([groups, base_groups])
    for j in range(20):
        pool = all_r[all_g == groups[j]]
        if len(pool) < 2 or pool.min() == pool.max():
            assert got[j] == 0.0
        else:
            assert got[j] == pytest.approx((rewards[j] - pool.mean()) / (pool.std(ddof=1) + 1e-6), rel=1e-5)
    raft = get_algorithm("raft")
    assert np.array_equal(advantages_with_baseline(raft, rewards, groups, base_rewards, base_groups), rewards)


def _batch(rng, counts) -> RolloutBatch:
    prompts = [Prompt(key=i, problem=f"{i}+1", gold=str(i + 1), token_ids=list(rng.integers(0, 200, size=3)))
               for i in range(len(counts))]
    completions = [[_completion(rng) for _ in range(n)] for n in counts]
    rewards = [[float(rng.integers(0, 2)) for _ in range(n)] for n in counts]
    return RolloutBatch(prompts, completions, rewards)


def _completion(rng) -> Completion:
    tokens = [int(t) for t in rng.integers(0, 200, size=int(rng.integers(1, 6)))]
    return Completion(tokens, "text", [float(-x) for x in rng.uniform(0, 3, size=len(tokens))], "stop")


@pytest.mark.parametrize("name", ["raft", "raft++", "grpo"])
def test_make_samples_keeps_what_the_algorithm_trains_on(rng, name):
    algorithm = get_algorithm(name)
    batch = _batch(rng, [int(n) for n in rng.integers(0, 6, size=6)])
    data = make_samples(batch, algorithm, "t")
    expected = [(i, j) for i, row in enumerate(batch.rewards) for j, r in enumerate(row)
                if r > 0 or not algorithm.accepted_only]
    assert [s.sample_id for s in data.samples] == [f"t/{i}/{j}" for i, j in expected]
    assert data.owners == [i for i, _ in expected]
    for sample, (i, j) in zip(data.samples, expected):
        assert list(sample.prompt_ids) == batch.prompts[i].token_ids
        assert list(sample.response_ids) == batch.completions[i][j].token_ids
        if name != "grpo":
            assert sample.advantage == 1.0


def test_allocation_weights_give_every_prompt_an_even_splits_weight(rng):
    """With a fixed gradient per prompt and every sample trained, the weighted sum is what an even
    split of the same samples gives, n_bar x the sum of the prompts' gradients, whatever the counts
    (a prompt given no sample adds nothing); even counts give all ones."""
    prompts = int(rng.integers(2, 9))
    counts = rng.integers(0, 13, size=prompts)
    counts[int(rng.integers(prompts))] = int(rng.integers(1, 13))        # at least one prompt drew samples
    owners = np.repeat(np.arange(prompts), counts)
    grads = rng.normal(size=(prompts, 3))
    weights = allocation_weights(owners, counts)
    assert np.all(weights > 0)
    weighted = (weights[:, None] * grads[owners]).sum(axis=0)
    even = counts.mean() * grads[counts > 0].sum(axis=0)
    assert np.allclose(weighted, even, rtol=1e-10, atol=1e-12)
    same = np.full(prompts, int(rng.integers(1, 9)))
    assert np.allclose(allocation_weights(np.repeat(np.arange(prompts), same), same), 1.0, rtol=1e-12)


def test_allocation_weights_refuse_a_sample_of_a_prompt_that_drew_none():
    with pytest.raises(ValueError, match="at least one sample"):
        allocation_weights([0, 1], [2, 0])


@pytest.mark.parametrize("name", ["raft++", "grpo"])
def test_reweighted_samples_carry_their_weight_in_the_advantage(rng, name):
    algorithm = get_algorithm(name)
    batch = _batch(rng, [int(n) for n in rng.integers(1, 8, size=6)])
    plain, weighted = make_samples(batch, algorithm, "t"), make_samples(batch, algorithm, "t", reweight=True)
    assert plain.weights == [1.0] * len(plain.samples)
    assert [s.sample_id for s in weighted.samples] == [s.sample_id for s in plain.samples]
    expected = allocation_weights(plain.owners, [len(row) for row in batch.completions])
    assert np.allclose(weighted.weights, expected, rtol=1e-12)
    for a, b, w in zip(plain.samples, weighted.samples, weighted.weights):
        assert math.isclose(b.advantage, a.advantage * w, rel_tol=1e-12, abs_tol=1e-15)
    norms = {s.sample_id: float(rng.uniform(0.1, 5)) for s in weighted.samples[::2]}
    back = unweighted_norms({k: v for k, v in norms.items()}, weighted)
    for sample, weight, value in zip(weighted.samples, weighted.weights, back):
        assert value is None if sample.sample_id not in norms else math.isclose(value * weight, norms[sample.sample_id])
    assert unweighted_norms({}, TrainData([], [], [], [])) == []


# ----------------------------------------------------------------------------- rollouts, data


def test_deal_gives_each_prompt_to_one_replica_and_balances(rng):
    counts = [int(n) for n in rng.integers(0, 30, size=25)]
    replicas = int(rng.integers(1, 5))
    parts = deal(counts, replicas)
    assigned = sorted(i for part in parts for i in part)
    assert assigned == [i for i, n in enumerate(counts) if n > 0]
    loads = [sum(counts[i] for i in part) for part in parts]
    assert max(loads) - min(loads) <= max(counts)
    assert all(part == sorted(part) for part in parts)


def test_prompt_stream_is_deterministic_epochs(rng):
    prompts = [Prompt(key=i, problem=str(i), gold="1", token_ids=[1]) for i in range(int(rng.integers(10, 40)))]
    size, seed = int(rng.integers(1, 10)), int(rng.integers(0, 1000))
    stream = PromptStream(prompts, seed)
    keys = [p.key for _ in range(3 * len(prompts)) for p in stream.take(size)]
    assert stream.position == 3 * len(prompts) * size and stream.epochs == 3 * size
    again = PromptStream(prompts, seed, position=5 * size)                   # resumed at any position
    assert [p.key for p in again.take(size)] == keys[5 * size: 6 * size]
    epoch = keys[: len(prompts)]
    assert sorted(epoch) == list(range(len(prompts)))                          # a permutation per epoch
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptStream([], 0)


# ------------------------------------------------------------------------- allocation, table


def test_allocation_is_gvm_and_falls_back_evenly_when_nobody_can_take_it(rng):
    sampler = SamplerConfig(max_per_prompt=40, zero_accept="skip")
    p = rng.integers(1, 9, size=8) / 8
    g = rng.uniform(1, 10, size=8)
    counts, how = allocate_counts(g, p, 100, sampler)
    assert how == "gvm" and np.array_equal(counts, allocate(g, p, 100, **sampler.allocate_kwargs()))
    counts, how = allocate_counts(np.zeros(8), np.zeros(8), 100, sampler)   # all unsolved, "skip"
    assert how == "uniform-fallback" and counts.sum() == 100 and counts.max() - counts.min() <= 1
    capped = SamplerConfig(max_per_prompt=5, zero_accept="skip")           # 2 solved prompts hold 10 < 100
    counts, how = allocate_counts(g, np.where(np.arange(8) < 2, p, 0.0), 100, capped)
    assert how == "uniform-fallback" and counts.sum() == 100
    # Anything else is a bad input, not a reason to fall back: it stops the run.
    with pytest.raises(ValueError, match="grad_norms must be finite"):
        allocate_counts(np.where(np.arange(8) == 3, np.nan, g), p, 100, sampler)
    with pytest.raises(ValueError, match="accept_rates must lie in"):
        allocate_counts(g, p + 1.5, 100, sampler)


def test_histogram_bins_and_table_columns(rng):
    rates = [0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0, 1.0, math.nan]
    assert acceptance_histogram(rates) == [1, 2, 2, 2, 1, 2]
    phases = ["pilot_rollout", "train"]
    row = {"iteration": 3, "samples_generated": 1234, "accept_rate": 0.5, "accept_hist": [1, 2, 2, 2, 1, 2],
           "n_per_prompt": {"min": 0, "median": 8.0, "max": 31}, "time": {"train": 1.25}, "eval": {"accuracy": 0.375}}
    header, line = format_header(phases), format_row(row, phases)
    assert len(header) == len(line)   # columns line up
    assert "0.375" in line and "0/8/31" in line and line.rstrip().endswith("1.2")
