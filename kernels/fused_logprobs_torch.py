"""Chunked PyTorch path of the fused LM-head log-probs: the CPU implementation.

The same algorithm as the Triton path, in torch ops: the vocabulary is walked in chunks of
`chunk_size` rows of the LM head, so only an [N, chunk_size] float32 block of logits exists at a
time (never N x V). The forward keeps per-token running statistics of an online log-sum-exp;
the backward recomputes each chunk's logits. Chunking over the vocabulary (not the tokens) makes
the per-sequence gradient norms exact: every chunk sees all tokens of a sequence, and
||dW_b||^2 = sum over chunks of ||dW_b restricted to the chunk||^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ForwardStats:
    """Per-token results of the forward, all float32 [N]; `lse` and `mean_z` feed the backward."""
    logp: torch.Tensor
    entropy: torch.Tensor
    lse: torch.Tensor      # log sum_v exp(z_v)
    mean_z: torch.Tensor   # E_p[z] = sum_v p_v z_v


def _chunk_logits(h32: torch.Tensor, weight: torch.Tensor, v0: int, v1: int, inv_t: float) -> torch.Tensor:
    """z for the vocabulary rows [v0, v1): [N, v1 - v0] float32, products accumulated in fp32."""
    return torch.mm(h32, weight[v0:v1].float().T).mul_(inv_t)


def forward_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    *,
    temperature: float,
    chunk_size: int,
) -> ForwardStats:
    """Online log-sum-exp over vocabulary chunks. `valid` [N] bool marks non-ignored tokens."""
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    inv_t = 1.0 / temperature
    h32 = hidden.float()
    running_max = torch.full((n_tokens,), float("-inf"), dtype=torch.float32, device=hidden.device)
    sum_exp = torch.zeros(n_tokens, dtype=torch.float32, device=hidden.device)    # sum exp(z - max)
    sum_exp_z = torch.zeros(n_tokens, dtype=torch.float32, device=hidden.device)  # sum exp(z - max) z
    target_z = torch.zeros(n_tokens, dtype=torch.float32, device=hidden.device)
    for v0 in range(0, vocab, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        z = _chunk_logits(h32, weight, v0, v1, inv_t)  # [N, Vc]
        new_max = torch.maximum(running_max, z.max(dim=1).values)
        rescale = torch.exp(running_max - new_max)  # exp(-inf) = 0 on the first chunk
        exp_z = torch.exp(z - new_max[:, None])
        sum_exp = sum_exp * rescale + exp_z.sum(dim=1)
        sum_exp_z = sum_exp_z * rescale + (exp_z * z).sum(dim=1)
        running_max = new_max
        in_chunk = valid & (targets >= v0) & (targets < v1)
        local = (targets - v0).clamp(0, v1 - v0 - 1)
        target_z = torch.where(in_chunk, z.gather(1, local[:, None]).squeeze(1), target_z)
    return finish_stats(running_max, sum_exp, sum_exp_z, target_z, valid)


def finish_stats(running_max: torch.Tensor, sum_exp: torch.Tensor, sum_exp_z: torch.Tensor,
                 target_z: torch.Tensor, valid: torch.Tensor) -> ForwardStats:
    """logp, entropy, lse and E_p[z] from the online statistics after the last chunk."""
    lse = running_max + torch.log(sum_exp)
    mean_z = sum_exp_z / sum_exp
    zero = torch.zeros_like(lse)
    return ForwardStats(
        logp=torch.where(valid, target_z - lse, zero),
        entropy=torch.where(valid, lse - mean_z, zero),
        lse=lse,
        mean_z=mean_z,
    )


def backward_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    lse: torch.Tensor,
    mean_z: torch.Tensor | None,
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    *,
    temperature: float,
    chunk_size: int,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    seq_bounds: list[int] | None,
    sq_norms_out: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients for hidden and weight (in their dtypes), recomputing each chunk's logits.

    dz_v = (g (1[v = y] - p_v) - e p_v (z_v - E_p[z])) / T per token; ignored tokens get dz = 0.
    When `sq_norms_out` is given it is overwritten with ||sum_{t in b} dz_t h_t^T||^2 per sequence
    b = [seq_bounds[b], seq_bounds[b + 1]).
    """
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    inv_t = 1.0 / temperature
    h32 = hidden.float()
    zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
    g = None if grad_logp is None else torch.where(valid, grad_logp.float(), zero)
    e = None if grad_entropy is None else torch.where(valid, grad_entropy.float(), zero)
    grad_hidden = torch.zeros_like(h32) if need_grad_hidden else None
    grad_weight = torch.empty_like(weight) if need_grad_weight else None
    want_norms = sq_norms_out is not None
    if want_norms:
        norms = torch.zeros(len(seq_bounds) - 1, dtype=torch.float32, device=hidden.device)
        spans = [(b, start, end) for b, (start, end) in enumerate(zip(seq_bounds[:-1], seq_bounds[1:])) if end > start]
        # Per sequence, the cheaper of two exact forms of ||dZ_b^T H_b||^2 (L = its length):
        # ghost, <dZ_b dZ_b^T, H_b H_b^T> with the [L, L] Gram of dZ summed over chunks (L^2 Vc per
        # chunk), for L <= d; or the sequence's own [Vc, d] product (L Vc d per chunk) otherwise.
        dim = h32.shape[1]
        ghost = [(b, start, end) for b, start, end in spans if end - start <= dim]
        direct = [(b, start, end) for b, start, end in spans if end - start > dim]
        dz_grams = {b: torch.zeros(end - start, end - start, device=hidden.device) for b, start, end in ghost}
    rows = torch.arange(n_tokens, device=hidden.device)
    for v0 in range(0, vocab, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        z = _chunk_logits(h32, weight, v0, v1, inv_t)  # [N, Vc]
        p = torch.exp(z - lse[:, None])
        dz = torch.zeros_like(z)
        if g is not None:
            dz -= g[:, None] * p
            in_chunk = valid & (targets >= v0) & (targets < v1)
            dz[rows[in_chunk], targets[in_chunk] - v0] += g[in_chunk]
        if e is not None:
            dz -= e[:, None] * p * (z - mean_z[:, None])
        dz *= inv_t
        if grad_hidden is not None:
            grad_hidden.addmm_(dz, weight[v0:v1].float())
        if want_norms:
            for b, start, end in ghost:
                dz_grams[b].addmm_(dz[start:end], dz[start:end].T)
            for b, start, end in direct:
                norms[b] += torch.linalg.vector_norm(dz[start:end].T @ h32[start:end]).square()
        if grad_weight is not None:
            grad_weight[v0:v1] = (dz.T @ h32).to(weight.dtype)
    if want_norms:
        for b, start, end in ghost:
            norms[b] = (dz_grams[b] * (h32[start:end] @ h32[start:end].T)).sum()
        sq_norms_out.copy_(norms)
    return (None if grad_hidden is None else grad_hidden.to(hidden.dtype)), grad_weight
