"""Packing and micro-batch planning: token alignment, rank balance, token budgets."""
import random

import pytest
import torch

from gvm.packing import (IGNORE_INDEX, Sample, balance_across_ranks, pack, plan_micro_batches,
                         split_by_token_budget)


def random_samples(rng: random.Random, count: int) -> list[Sample]:
    out = []
    for i in range(count):
        p, r = rng.randint(1, 9), rng.randint(1, 9)
        adv = rng.uniform(-1, 1) if rng.random() < 0.5 else [rng.uniform(-1, 1) for _ in range(r)]
        out.append(Sample(f"s{i}", [rng.randint(0, 50) for _ in range(p)], [rng.randint(0, 50) for _ in range(r)],
                          adv, old_logp=[-rng.random() for _ in range(r)]))
    return out


def test_pack_aligns_targets_masks_and_per_token_values(seed):
    rng = random.Random(seed)
    samples = random_samples(rng, rng.randint(1, 6))
    batch = pack(samples)
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == batch.seq_bounds
    assert batch.num_tokens == sum(s.num_tokens for s in samples)
    for b, s in enumerate(samples):
        start, end = batch.seq_bounds[b], batch.seq_bounds[b + 1]
        ids = list(s.prompt_ids) + list(s.response_ids)
        assert batch.input_ids[start:end].tolist() == ids
        assert batch.position_ids[start:end].tolist() == list(range(len(ids)))
        p = len(s.prompt_ids)
        # position t predicts ids[t + 1]; only response tokens are targets
        expected = [ids[t + 1] if p - 1 <= t < len(ids) - 1 else IGNORE_INDEX for t in range(len(ids))]
        assert batch.targets[start:end].tolist() == expected
        assert batch.response_mask[start:end].tolist() == [e != IGNORE_INDEX for e in expected]
        adv = s.advantage if isinstance(s.advantage, list) else [s.advantage] * len(s.response_ids)
        assert torch.allclose(batch.split_responses(batch.advantages)[b], torch.tensor(adv, dtype=torch.float32))
        assert torch.allclose(batch.split_responses(batch.old_logp)[b], torch.tensor(s.old_logp, dtype=torch.float32))
        assert batch.sample_ids[b] == s.sample_id
    assert batch.ref_logp is None
    assert int(batch.response_mask.sum()) == sum(len(s.response_ids) for s in samples)


def test_pack_empty_gives_one_inert_token():
    batch = pack([])
    assert batch.num_tokens == 1 and batch.num_seqs == 0
    assert not bool(batch.response_mask.any()) and batch.targets.tolist() == [IGNORE_INDEX]
    assert batch.seq_bounds == batch.cu_seqlens.tolist() == [0, 1]


@pytest.mark.parametrize("bad, field", [
    (dict(prompt_ids=[]), "prompt_ids"),
    (dict(response_ids=[]), "response_ids"),
    (dict(old_logp=[0.0]), "old_logp"),
    (dict(advantage=[1.0]), "advantage"),
])
def test_sample_rejects_bad_fields(bad, field):
    args = dict(sample_id=0, prompt_ids=[1, 2], response_ids=[3, 4, 5])
    args.update(bad)
    with pytest.raises(ValueError, match=field):
        Sample(**args)


def test_balance_is_longest_first_onto_lightest_rank(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 40))]
    world = rng.randint(1, 5)
    shares = balance_across_ranks(lengths, world)
    assert sorted(i for share in shares for i in share) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in share) for share in shares]
    # LPT: the heaviest rank exceeds the lightest by at most one sequence
    assert max(loads) - min(loads) <= max(lengths)
    # replay the rule and check every placement
    replay = [0] * world
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = next(r for r, share in enumerate(shares) if i in share)
        assert replay[rank] == min(replay)
        replay[rank] += lengths[i]
    assert balance_across_ranks(lengths, world) == shares  # deterministic


def test_token_budget_and_equal_micro_batch_counts(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 30))]
    budget = rng.randint(20, 120)
    bins = split_by_token_budget(range(len(lengths)), lengths, budget)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= budget or len(b) == 1 for b in bins)
    world = rng.randint(1, 4)
    plan = plan_micro_batches(lengths, world, budget)
    assert len(plan) == world and len({len(micro) for micro in plan}) == 1
    assert sorted(i for micro in plan for b in micro for i in b) == list(range(len(lengths)))


def test_plan_pads_ranks_without_samples():
    plan = plan_micro_batches([5], world_size=3, token_budget=100)
    assert plan == [[[0]], [[]], [[]]]
