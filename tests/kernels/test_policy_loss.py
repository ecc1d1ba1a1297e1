"""policy_loss and group_advantages against formulas written plainly, one token at a time.

The reference below computes each token's loss and its derivative by hand (no autograd), then the
aggregation weights per sequence; the library's value *and* its autograd gradient must match.
Inputs are float64 so the comparison is tight, and fresh random each run (seed printed).
"""
import math
import random

import pytest
import torch

from gvm_kernels.policy_loss import AGGREGATIONS, group_advantages, policy_loss


def exp64(x: float) -> float:
    """exp the way the library computes it on fp64 tensors (matters exactly at a clip boundary)."""
    return float(torch.exp(torch.tensor(x, dtype=torch.float64)))


def reference_token(lp, old, adv, *, kind, clip_low, clip_high, dual_clip, ref, kl_coef, ent, entropy_coef):
    """(loss_t, dloss_t/dlogp_t, dloss_t/dentropy_t, clipped, dual_clipped) for one token."""
    clipped = dual = False
    if kind == "raft":
        loss, dlogp = -adv * lp, -adv
    else:
        s = exp64(lp - old)
        unclipped = -adv * s
        clipped_term = -adv * min(max(s, 1 - clip_low), 1 + clip_high)
        if clipped_term > unclipped:                       # clipped term chosen *and* differs
            loss, dlogp, clipped = clipped_term, 0.0, True
        else:
            loss, dlogp = unclipped, -adv * s
        if dual_clip is not None and adv < 0 and -dual_clip * adv < loss:
            loss, dlogp, clipped, dual = -dual_clip * adv, 0.0, False, True
    if kl_coef > 0:
        x = ref - lp
        loss += kl_coef * (exp64(x) - x - 1)
        dlogp += kl_coef * (1 - exp64(x))
    dent = 0.0
    if entropy_coef > 0:
        loss -= entropy_coef * ent
        dent = -entropy_coef
    return loss, dlogp, dent, clipped, dual


def reference_loss(batch, *, agg, **opts):
    """Plain per-sequence aggregation. batch: list of sequences, each a list of token dicts.

    Returns (loss, {(b, t): dloss/dlogp}, {(b, t): dloss/dentropy}, per-token records)."""
    per_seq = []
    for b, seq in enumerate(batch):
        rows = []
        for t, tok in enumerate(seq):
            if tok["mask"]:
                rows.append(((b, t),) + reference_token(tok["lp"], tok["old"], tok["adv"], ref=tok["ref"],
                                                        ent=tok["ent"], **opts))
        per_seq.append(rows)
    valid = [rows for rows in per_seq if rows]
    n_tokens = sum(len(rows) for rows in per_seq)
    weights = {}
    for rows in valid:
        for row in rows:
            if agg == "token-mean":
                weights[row[0]] = 1.0 / n_tokens
            elif agg == "seq-mean-token-sum":
                weights[row[0]] = 1.0 / len(valid)
            else:
                weights[row[0]] = 1.0 / (len(rows) * len(valid))
    records = [row for rows in per_seq for row in rows]
    loss = sum(weights[r[0]] * r[1] for r in records)
    dlogp = {r[0]: weights[r[0]] * r[2] for r in records}
    dent = {r[0]: weights[r[0]] * r[3] for r in records}
    return loss, dlogp, dent, records


# ---------------------------------------------------------------------------------------------
# random batches in both layouts
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def rng(seed: int) -> random.Random:
    """Fresh batches every session, from the test's seed (printed; GVM_TEST_SEED replays it)."""
    return random.Random(seed)


def random_batch(rng: random.Random, lengths, *, adv_per_seq=False, masked_seq=None):
    """Sequences of token dicts. Ratios span ~0.2..4.5 so every branch is visited; token 0..2 of
    sequence 0 are forced into the dual-clip, upper-clip and unclipped branches."""
    batch = []
    for b, n in enumerate(lengths):
        seq_adv = rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0)
        seq = []
        for t in range(n):
            lp = -rng.uniform(0.01, 5.0)
            seq.append(dict(lp=lp, old=lp - rng.uniform(-1.5, 1.5), adv=seq_adv if adv_per_seq else
                            rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 2.0), ref=lp + rng.uniform(-1, 1),
                            ent=rng.uniform(0, 3), mask=rng.random() > 0.25 and b != masked_seq))
        batch.append(seq)
    forced = [(math.log(4.0), -1.0), (math.log(1.5), 1.0), (0.0, 0.7)]
    for tok, (log_ratio, adv) in zip(batch[0], forced):
        tok.update(old=tok["lp"] - log_ratio, mask=True, **({} if adv_per_seq else {"adv": adv}))
    return batch


def packed(batch, garbage=float("nan")):
    """[N] tensors, cu_seqlens; masked positions of logp/old/ref hold garbage (must be inert)."""
    toks = [tok for seq in batch for tok in seq]

    def col(key, bad=None):
        return torch.tensor([tok[key] if tok["mask"] or bad is None else bad for tok in toks],
                            dtype=torch.float64)
    cu = torch.tensor([0] + [len(seq) for seq in batch]).cumsum(0)
    return dict(logp=col("lp", garbage).requires_grad_(), old_logp=col("old", garbage),
                advantages=col("adv"), ref_logp=col("ref", -float("inf")),
                entropy=col("ent", garbage).requires_grad_(),
                mask=torch.tensor([tok["mask"] for tok in toks]), cu_seqlens=cu)


def padded(batch, garbage=float("inf")):
    """[B, T] tensors; padding and masked positions hold garbage."""
    width = max(len(seq) for seq in batch)

    def col(key, bad):
        rows = [[tok[key] if tok["mask"] else bad for tok in seq] + [bad] * (width - len(seq)) for seq in batch]
        return torch.tensor(rows, dtype=torch.float64)
    mask = torch.tensor([[tok["mask"] for tok in seq] + [False] * (width - len(seq)) for seq in batch])
    return dict(logp=col("lp", garbage).requires_grad_(), old_logp=col("old", -garbage),
                advantages=col("adv", 0.0), ref_logp=col("ref", garbage),
                entropy=col("ent", garbage).requires_grad_(), mask=mask)


def positions(batch, layout):
    """(b, t) -> index into the layout's tensors."""
    if layout == "padded":
        return {(b, t): (b, t) for b, seq in enumerate(batch) for t in range(len(seq))}
    flat, i = {}, 0
    for b, seq in enumerate(batch):
        for t in range(len(seq)):
            flat[(b, t)] = i
            i += 1
    return flat


def expected_grad(shape, pos, grads):
    out = torch.zeros(shape, dtype=torch.float64)
    for key, g in grads.items():
        out[pos[key]] = g
    return out


OPTION_SETS = {
    "raft": dict(kind="raft", clip_low=0.2, clip_high=0.2, dual_clip=None, kl_coef=0.0, entropy_coef=0.0),
    "raft++": dict(kind="raft++", clip_low=0.2, clip_high=0.28, dual_clip=None, kl_coef=0.0, entropy_coef=0.0),
    "raft++dual": dict(kind="raft++", clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl_coef=0.0, entropy_coef=0.0),
    "grpo_kl_entropy": dict(kind="grpo", clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl_coef=0.05,
                            entropy_coef=0.01),
}


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("opts_name", sorted(OPTION_SETS))
def test_loss_and_gradient_match_plain_reference(opts_name, agg, layout, rng):
    opts = OPTION_SETS[opts_name]
    batch = random_batch(rng, [7, 3, 1, 12, 5], masked_seq=4)   # unequal lengths, one all-masked seq
    inputs = packed(batch) if layout == "packed" else padded(batch)
    extra = {"cu_seqlens": inputs.pop("cu_seqlens")} if layout == "packed" else {}
    loss, metrics = policy_loss(**inputs, **opts, agg=agg, **extra)
    loss.backward()
    want, want_dlogp, want_dent, records = reference_loss(batch, agg=agg, **{k: v for k, v in opts.items()})
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert math.isclose(loss.item(), want, rel_tol=1e-12, abs_tol=1e-12)
    pos = positions(batch, layout)
    torch.testing.assert_close(inputs["logp"].grad, expected_grad(inputs["logp"].shape, pos, want_dlogp),
                               rtol=1e-10, atol=1e-13)
    if opts["entropy_coef"] > 0:
        torch.testing.assert_close(inputs["entropy"].grad, expected_grad(inputs["entropy"].shape, pos, want_dent),
                                   rtol=1e-10, atol=1e-13)
    else:
        assert inputs["entropy"].grad is None                   # not part of the loss
    # metrics: token means over unmasked tokens
    n = len(records)
    clip_frac = sum(r[4] for r in records) / n
    assert math.isclose(float(metrics["clip_frac"]), clip_frac, abs_tol=1e-12)
    assert math.isclose(float(metrics["dual_clip_frac"]), sum(r[5] for r in records) / n, abs_tol=1e-12)
    assert float(metrics["num_tokens"]) == n
    unmasked = [tok for seq in batch for tok in seq if tok["mask"]]
    ratios = [exp64(tok["lp"] - tok["old"]) for tok in unmasked]
    assert math.isclose(float(metrics["ratio_mean"]), sum(ratios) / n, rel_tol=1e-12)
    approx_kl = sum(s - 1 - math.log(s) for s in ratios) / n
    assert math.isclose(float(metrics["approx_kl"]), approx_kl, rel_tol=1e-9)
    kl_ref = sum(exp64(t["ref"] - t["lp"]) - (t["ref"] - t["lp"]) - 1 for t in unmasked) / n
    assert math.isclose(float(metrics["kl_ref"]), kl_ref, rel_tol=1e-9)
    assert math.isclose(float(metrics["entropy"]), sum(t["ent"] for t in unmasked) / n, rel_tol=1e-12)
    assert all(not v.requires_grad for v in metrics.values())
    if opts["kind"] != "raft":                                   # the forced tokens hit their branches
        assert clip_frac > 0
        if opts["dual_clip"]:
            assert metrics["dual_clip_frac"] > 0


def test_aggregations_differ_and_seq_means_skip_fully_masked_sequences(rng):
    batch = random_batch(rng, [9, 2, 4], masked_seq=2)
    inputs = packed(batch)
    values = {}
    for agg in AGGREGATIONS:
        values[agg] = policy_loss(**{**inputs, "ref_logp": None}, kind="raft", agg=agg)[0].item()
        want = reference_loss(batch, agg=agg, kind="raft", clip_low=0.2, clip_high=0.2, dual_clip=None,
                              kl_coef=0.0, entropy_coef=0.0)[0]
        assert math.isclose(values[agg], want, rel_tol=1e-12)
    assert len(set(values.values())) == 3
    # dropping the fully-masked sequence from the batch changes none of them
    trimmed = packed(batch[:2])
    for agg in AGGREGATIONS:
        again = policy_loss(**{**trimmed, "ref_logp": None}, kind="raft", agg=agg)[0].item()
        assert math.isclose(again, values[agg], rel_tol=1e-12)


@pytest.mark.parametrize("side", ["upper", "lower"])
def test_exact_clip_boundary_takes_the_unclipped_branch_and_gradient(side, rng):
    """s_t exactly 1 + clip_high (A > 0) or 1 - clip_low (A < 0): both terms are equal; the
    unclipped gradient -A s flows and the token is not counted as clipped. One ratio ulp further out the
    clipped branch wins and the gradient is 0."""
    lp = -rng.uniform(0.5, 3.0)
    log_ratio = math.log(1.2) if side == "upper" else math.log(0.8)
    s = exp64(lp - (lp - log_ratio))
    # s - 1 and 1 - s are exact in fp64 for s in (0.5, 2), so 1 +- clip reproduces s bit for bit
    clip_high, clip_low, adv = (s - 1.0, 0.2, 1.5) if side == "upper" else (0.2, 1.0 - s, -1.5)
    assert (1.0 + clip_high == s) if side == "upper" else (1.0 - clip_low == s)
    # the nearest old_logp whose ratio rounds strictly past the boundary: one ulp of old_logp may
    # not move exp(lp - old) at all, so step until it does
    outward = -math.inf if side == "upper" else math.inf
    beyond = lp - log_ratio
    while exp64(lp - beyond) == s:
        beyond = math.nextafter(beyond, outward)
    assert (exp64(lp - beyond) > s) if side == "upper" else (exp64(lp - beyond) < s)
    for old, is_boundary in ((lp - log_ratio, True), (beyond, False)):
        logp = torch.tensor([lp], dtype=torch.float64, requires_grad=True)
        loss, metrics = policy_loss(logp, torch.tensor([old], dtype=torch.float64), torch.tensor([adv], dtype=torch.float64),
                                    kind="raft++", clip_low=clip_low, clip_high=clip_high)
        loss.backward()
        want_loss, want_grad, _, clipped, _ = reference_token(lp, old, adv, kind="raft++", clip_low=clip_low,
                                                              clip_high=clip_high, dual_clip=None, ref=0.0,
                                                              kl_coef=0.0, ent=0.0, entropy_coef=0.0)
        assert clipped is not is_boundary
        assert loss.item() == pytest.approx(want_loss, rel=1e-14)
        assert float(logp.grad) == pytest.approx(want_grad, rel=1e-14, abs=0.0)
        assert float(metrics["clip_frac"]) == float(clipped)
        if is_boundary:
            assert float(logp.grad) == pytest.approx(-adv * s, rel=1e-14)
        else:
            assert float(logp.grad) == 0.0


@pytest.mark.parametrize("kind", ["raft", "grpo"])
def test_masked_tokens_have_no_effect_and_zero_gradient(kind, rng):
    """Garbage at masked positions (NaN / inf in every input) changes nothing, and the gradient
    there is exactly 0 and finite (0 * inf in a backward chain would be NaN)."""
    batch = random_batch(rng, [6, 6, 6])
    clean = packed(batch, garbage=0.0)
    dirty = packed(batch, garbage=float("nan"))
    dirty["logp"].data[~dirty["mask"]] = -float("inf")
    dirty["advantages"][~dirty["mask"]] = float("nan")
    dirty["entropy"].data[~dirty["mask"]] = float("inf")
    opts = dict(kind=kind, kl_coef=0.1, entropy_coef=0.02, dual_clip=2.0, agg="seq-mean-token-mean")
    loss_clean, _ = policy_loss(**clean, **opts)
    loss_dirty, metrics = policy_loss(**dirty, **opts)
    loss_dirty.backward()
    assert loss_dirty.item() == loss_clean.item()
    assert torch.isfinite(dirty["logp"].grad).all() and torch.isfinite(dirty["entropy"].grad).all()
    assert (dirty["logp"].grad[~dirty["mask"]] == 0).all()
    assert (dirty["entropy"].grad[~dirty["mask"]] == 0).all()
    assert all(torch.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_all_masked_batch_gives_zero_loss_with_grad(agg, layout, rng):
    batch = random_batch(rng, [3, 2])
    inputs = packed(batch) if layout == "packed" else padded(batch)
    inputs["mask"] = torch.zeros_like(inputs["mask"])
    loss, metrics = policy_loss(**inputs, kind="grpo", kl_coef=0.1, agg=agg)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (inputs["logp"].grad == 0).all()
    assert float(metrics["num_tokens"]) == 0 and all(torch.isfinite(v) for v in metrics.values())


def test_per_sequence_advantages_broadcast_like_per_token(rng):
    batch = random_batch(rng, [4, 1, 6], adv_per_seq=True)
    seq_adv = torch.tensor([seq[0]["adv"] for seq in batch], dtype=torch.float64)
    for make, extra in ((packed, "cu_seqlens"), (padded, None)):
        inputs = make(batch)
        per_token, _ = policy_loss(**inputs, kind="raft++", agg="seq-mean-token-sum")
        inputs["advantages"] = seq_adv
        per_seq, _ = policy_loss(**inputs, kind="raft++", agg="seq-mean-token-sum")
        assert per_seq.item() == pytest.approx(per_token.item(), rel=1e-14)
    # packed with seq_ids instead of cu_seqlens (tokens need not be sorted by sequence)
    inputs = packed(batch)
    seq_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 1, 6]))
    perm = torch.randperm(seq_ids.numel())
    cu = inputs.pop("cu_seqlens")
    want, _ = policy_loss(**inputs, kind="raft++", agg="seq-mean-token-mean", cu_seqlens=cu)
    shuffled = {k: (v.detach()[perm] if v is not None else None) for k, v in inputs.items()}
    got, _ = policy_loss(**shuffled, kind="raft++", agg="seq-mean-token-mean", seq_ids=seq_ids[perm])
    assert got.item() == pytest.approx(want.item(), rel=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_logp_computes_in_fp32(dtype, rng):
    batch = random_batch(rng, [5, 8])
    inputs = packed(batch, garbage=0.0)
    low = {k: (v.detach().to(dtype) if k in ("logp", "old_logp") else v) for k, v in inputs.items()}
    low["logp"].requires_grad_()
    loss, _ = policy_loss(**low, kind="raft++")
    loss.backward()
    assert loss.dtype == torch.float32 and low["logp"].grad.dtype == dtype
    # the reference on the rounded inputs, to fp32 accuracy
    rounded = [[dict(tok, lp=float(torch.tensor(tok["lp"]).to(dtype)), old=float(torch.tensor(tok["old"]).to(dtype)))
                for tok in seq] for seq in batch]
    want = reference_loss(rounded, agg="token-mean", kind="raft++", clip_low=0.2, clip_high=0.2,
                          dual_clip=None, kl_coef=0.0, entropy_coef=0.0)[0]
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------

def _simple(n=4):
    return dict(logp=torch.zeros(n), old_logp=torch.zeros(n), advantages=torch.ones(n), mask=torch.ones(n, dtype=torch.bool))


@pytest.mark.parametrize("change, match", [
    (dict(kind="ppo"), "kind"),
    (dict(agg="sum"), "agg"),
    (dict(kl_coef=0.1), "ref_logp"),
    (dict(entropy_coef=0.1), "entropy"),
    (dict(old_logp=None), "old_logp"),
    (dict(dual_clip=0.9), "dual_clip"),
    (dict(clip_low=1.0), "clip_low"),
    (dict(old_logp=torch.zeros(5)), "old_logp must have logp's shape"),
    (dict(mask=torch.ones(3, dtype=torch.bool)), "mask must have logp's shape"),
    (dict(ref_logp=torch.zeros(2, 2)), "ref_logp must have logp's shape"),
    (dict(advantages=torch.ones(3)), "advantages must be per token"),
    (dict(agg="seq-mean-token-sum"), "cu_seqlens or seq_ids"),
    (dict(cu_seqlens=torch.tensor([0, 3])), "cu_seqlens"),
    (dict(cu_seqlens=torch.tensor([0, 2]), seq_ids=torch.zeros(4, dtype=torch.long)), "either"),
    (dict(logp=torch.zeros(2, 2), old_logp=torch.zeros(2, 2), advantages=torch.ones(2, 2),
          mask=torch.ones(2, 2), seq_ids=torch.zeros(4, dtype=torch.long)), "padded"),
    (dict(logp=torch.zeros(4, dtype=torch.long)), "logp must be a floating tensor"),
])
def test_bad_arguments_raise_value_error(change, match):
    args = {**_simple(), "kind": "raft++", **change}
    with pytest.raises(ValueError, match=match):
        policy_loss(**args)


# ---------------------------------------------------------------------------------------------
# group advantages
# ---------------------------------------------------------------------------------------------

def reference_group_advantages(rewards, groups, eps=1e-6, normalize_std=True):
    out = []
    for r, g in zip(rewards, groups):
        members = [x for x, h in zip(rewards, groups) if h == g]
        if len(members) < 2 or len(set(members)) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
        out.append((r - mean) / (std + eps) if normalize_std else r - mean)
    return out


@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_variable_group_sizes(normalize_std, rng):
    """Groups of size 1, 2, many and all-equal, labels unsorted and non-contiguous."""
    sizes = {10: 1, 3: 2, 7: rng.randint(5, 12), 42: 3, 5: 4}
    rewards, groups = [], []
    for label, size in sizes.items():
        for _ in range(size):
            groups.append(label)
            rewards.append(0.1 if label == 42 else float(rng.random() < 0.5) + rng.uniform(-0.1, 0.1))
    order = list(range(len(rewards)))
    rng.shuffle(order)
    rewards = [rewards[i] for i in order]
    groups = [groups[i] for i in order]
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups),
                           normalize_std=normalize_std)
    want = reference_group_advantages(rewards, groups, normalize_std=normalize_std)
    assert got.dtype == torch.float64 and got.shape == (len(rewards),)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    for r_i, (label, a) in enumerate(zip(groups, got.tolist())):
        if label in (10, 42):                       # size 1 and all-equal (0.1 x 3): exactly 0
            assert a == 0.0


def test_group_advantages_size_two_and_binary_rewards():
    got = group_advantages(torch.tensor([1, 0, 1, 1, 0, 0, 0]), torch.tensor([0, 0, 1, 1, 1, 1, 2]))
    assert got.dtype == torch.float32
    half = 0.5 / (math.sqrt(0.5) + 1e-6)                      # size 2: mean 0.5, std sqrt(1/2)
    std4 = math.sqrt(1 / 3)                                   # [1, 1, 0, 0]: mean 0.5, std sqrt(1/3)
    want = [half, -half, 0.5 / (std4 + 1e-6), 0.5 / (std4 + 1e-6), -0.5 / (std4 + 1e-6),
            -0.5 / (std4 + 1e-6), 0.0]
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rewards, groups, match", [
    (torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long), "rewards"),
    (torch.ones(3), torch.zeros(2, dtype=torch.long), "group_ids"),
    (torch.ones(3), torch.zeros(3), "integer"),
])
def test_group_advantages_bad_arguments(rewards, groups, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, groups)
