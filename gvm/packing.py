"""Packed batches without padding, and the plan that cuts them into micro-batches per rank.

A training step sees a list of `Sample`s (prompt ids, response ids, advantage, sample id). They are
concatenated into one token stream (`PackedBatch`) whose sequences are marked by `cu_seqlens`;
position ids restart at 0 in every sequence, which is how attention is kept inside a sequence
(flash-attention varlen on GPU, a block-diagonal causal mask or length groups on the CPU).

Alignment: position t predicts token t + 1, so every per-token tensor is indexed by the position
that *predicts* the token. For a sequence of P prompt and R response tokens (L = P + R):

    targets[t]       = ids[t + 1] for t in [P - 1, L - 2], IGNORE_INDEX elsewhere
                       (prompt predictions and the last position carry no loss)
    response_mask[t] = True exactly there: R positions per sequence
    old_logp[t], ref_logp[t], advantages[t] hold the values of response token t + 1

Planning (`plan_micro_batches`): samples are dealt to ranks greedily, longest first onto the rank
with the fewest tokens so far (LPT; ties go to the lower rank), so ranks finish their forward and
backward at about the same time. Each rank then cuts its share into micro-batches of at most
`token_budget` tokens (first-fit decreasing; a sequence longer than the budget gets a
micro-batch of its own). Under ZeRO-3 every forward and backward is collective, so all ranks must
run the same number of micro-batches: ranks with fewer are padded with empty micro-batches, which
the trainer runs as a one-token pass with zero loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

IGNORE_INDEX = -100  # targets value with no loss, as in torch's cross-entropy and fused_logprobs


@dataclass
class Sample:
    """One sequence to train on or score.

    advantage: a float for the whole response, or one value per response token.
    old_logp / ref_logp: per response token log-probs of the sampling / reference policy, or None
    (the trainer computes them when the algorithm needs them).
    """
    sample_id: Hashable
    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    advantage: float | Sequence[float] = 1.0
    old_logp: Sequence[float] | torch.Tensor | None = None
    ref_logp: Sequence[float] | torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.prompt_ids) < 1:
            raise ValueError(f"sample {self.sample_id!r}: prompt_ids must hold at least one token (the first "
                             f"response token is predicted from the last prompt position)")
        if len(self.response_ids) < 1:
            raise ValueError(f"sample {self.sample_id!r}: response_ids must hold at least one token")
        n = len(self.response_ids)
        for name in ("old_logp", "ref_logp"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"sample {self.sample_id!r}: {name} must have one value per response token "
                                 f"({n}), got {len(value)}")
        if not isinstance(self.advantage, (int, float)) and len(self.advantage) != n:
            raise ValueError(f"sample {self.sample_id!r}: advantage must be a float or one value per response "
                             f"token ({n}), got {len(self.advantage)} values")

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class PackedBatch:
    """Sequences concatenated without padding; every per-token tensor is [N] (see module doc)."""
    input_ids: torch.Tensor        # [N] int64
    position_ids: torch.Tensor     # [N] int64, 0 at each sequence start
    cu_seqlens: torch.Tensor       # [B + 1] int32, sequence b is [cu[b], cu[b + 1])
    targets: torch.Tensor          # [N] int64, next token or IGNORE_INDEX
    response_mask: torch.Tensor    # [N] bool, positions whose target is a response token
    advantages: torch.Tensor       # [N] float32, 0 outside the response
    seq_advantages: torch.Tensor   # [B] float32, per-sequence advantage (mean over response tokens)
    old_logp: torch.Tensor | None  # [N] float32, 0 outside the response
    ref_logp: torch.Tensor | None  # [N] float32, 0 outside the response
    sample_ids: list = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)
    response_lens: list[int] = field(default_factory=list)
    seq_bounds: list[int] = field(default_factory=list)  # cu_seqlens as host ints (no device sync)

    @property
    def num_seqs(self) -> int:
        """Real sequences (0 for the padding batch, whose one token is a sequence of its own)."""
        return len(self.sample_ids)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> "PackedBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.position_ids), move(self.cu_seqlens),
                           move(self.targets), move(self.response_mask), move(self.advantages),
                           move(self.seq_advantages), move(self.old_logp), move(self.ref_logp),
                           list(self.sample_ids), list(self.prompt_lens), list(self.response_lens),
                           list(self.seq_bounds))

    def split_responses(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Per-token values [N] -> one tensor per sequence holding its response positions, in order."""
        out = []
        for start, p, r in zip(self.seq_bounds[:-1], self.prompt_lens, self.response_lens):
            out.append(values[start + p - 1:start + p - 1 + r])
        return out


def _per_token(values: Sequence[float] | torch.Tensor | float, count: int) -> torch.Tensor:
    if isinstance(values, (int, float)):
        return torch.full((count,), float(values), dtype=torch.float32)
    return torch.as_tensor(values, dtype=torch.float32).reshape(count)


def pack(samples: Sequence[Sample]) -> PackedBatch:
    """Concatenate samples into one PackedBatch (CPU tensors); an empty list gives a one-token
    batch with no loss tokens, used to keep ranks in step under ZeRO-3."""
    if len(samples) == 0:
        one = torch.zeros(1, dtype=torch.long)
        return PackedBatch(one, one.clone(), torch.tensor([0, 1], dtype=torch.int32),
                           torch.full((1,), IGNORE_INDEX, dtype=torch.long), torch.zeros(1, dtype=torch.bool),
                           torch.zeros(1), torch.zeros(0), None, None, [], [], [], [0, 1])
    ids, positions, targets, mask, adv, old, ref = [], [], [], [], [], [], []
    has_old = all(s.old_logp is not None for s in samples)
    has_ref = all(s.ref_logp is not None for s in samples)
    seq_adv = []
    for s in samples:
        p, r = len(s.prompt_ids), len(s.response_ids)
        seq = torch.as_tensor(list(s.prompt_ids) + list(s.response_ids), dtype=torch.long)
        ids.append(seq)
        positions.append(torch.arange(p + r))
        tgt = torch.full((p + r,), IGNORE_INDEX, dtype=torch.long)
        tgt[p - 1:p + r - 1] = seq[p:]
        targets.append(tgt)
        m = torch.zeros(p + r, dtype=torch.bool)
        m[p - 1:p + r - 1] = True
        mask.append(m)
        a = _per_token(s.advantage, r)
        seq_adv.append(a.mean())
        for dst, values, present in ((adv, a, True), (old, s.old_logp, has_old), (ref, s.ref_logp, has_ref)):
            if present:
                full = torch.zeros(p + r, dtype=torch.float32)
                full[p - 1:p + r - 1] = _per_token(values, r)
                dst.append(full)
    lengths = torch.tensor([s.num_tokens for s in samples])
    cu = torch.zeros(len(samples) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    return PackedBatch(
        input_ids=torch.cat(ids), position_ids=torch.cat(positions), cu_seqlens=cu,
        targets=torch.cat(targets), response_mask=torch.cat(mask), advantages=torch.cat(adv),
        seq_advantages=torch.stack(seq_adv),
        old_logp=torch.cat(old) if has_old else None, ref_logp=torch.cat(ref) if has_ref else None,
        sample_ids=[s.sample_id for s in samples], prompt_lens=[len(s.prompt_ids) for s in samples],
        response_lens=[len(s.response_ids) for s in samples], seq_bounds=cu.tolist())


def balance_across_ranks(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices per rank: longest first onto the rank with the fewest tokens (ties: lowest rank).
    Deterministic, so every rank computes the same split from the same list."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(i)
        loads[rank] += lengths[i]
    return shares


def split_by_token_budget(indices: Sequence[int], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """First-fit decreasing: micro-batches of at most `token_budget` tokens (a longer sequence
    alone). Each micro-batch keeps its indices in ascending order."""
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        for b, load in enumerate(loads):
            if load + lengths[i] <= token_budget:
                bins[b].append(i)
                loads[b] += lengths[i]
                break
        else:
            bins.append([i])
            loads.append(lengths[i])
    return [sorted(b) for b in bins]


def plan_micro_batches(lengths: Sequence[int], world_size: int, token_budget: int) -> list[list[list[int]]]:
    """plan[rank][micro_batch] = sample indices; every rank gets the same number of micro-batches
    (at least one), padded with empty ones (see module doc)."""
    per_rank = [split_by_token_budget(share, lengths, token_budget)
                for share in balance_across_ranks(lengths, world_size)]
    count = max(1, max(len(micro) for micro in per_rank))
    return [micro + [[] for _ in range(count - len(micro))] for micro in per_rank]
