"""Plain-PyTorch log-probs with materialised logits: the tests' oracle and the benchmark baseline.

Everything here is written the obvious way (the full N x V logits exist, torch autograd does the
backward), so it can be trusted as the definition of what the fused kernels compute. Run it in
float64 for an oracle, or in bf16 for the "naive PyTorch" speed and accuracy baseline.
"""
from __future__ import annotations

import torch


def logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t) (and entropy) per token from logits `hidden @ weight.T / temperature`.

    hidden [N, d], weight [V, d], targets [N] int64. The product is taken in the inputs' dtype
    (bf16 rounds the logits, as a naive implementation would), the softmax in at least float32.
    Tokens whose target is `ignore_index` get 0 for both outputs and no gradient.
    Returns logp [N] (and entropy [N]) in float32, or float64 when the inputs are float64.
    """
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = (hidden @ weight.T).to(out_dtype) / temperature  # [N, V]: the memory the kernels avoid
    log_probs = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
    logp = log_probs.gather(1, safe_targets[:, None]).squeeze(1)
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    if not return_entropy:
        return logp
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
    return logp, entropy


def per_sequence_sq_grad_norms_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> torch.Tensor:
    """||dW_b||_F^2 for each packed sequence b, by one autograd backward per sequence.

    dW_b is the gradient of sum_{t in b} (grad_logp_t * logp_t + grad_entropy_t * entropy_t)
    with respect to `weight`: the part of the full dW that sequence b contributes.
    Returns [B] in the inputs' floating dtype (float64 for an oracle).
    """
    bounds = cu_seqlens.tolist()
    norms = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        w = weight.detach().clone().requires_grad_(True)
        logp, entropy = logprobs_reference(
            hidden[start:end].detach(), w, targets[start:end], temperature=temperature,
            ignore_index=ignore_index, return_entropy=True)
        loss = (grad_logp[start:end].to(logp.dtype) * logp).sum()
        if grad_entropy is not None:
            loss = loss + (grad_entropy[start:end].to(entropy.dtype) * entropy).sum()
        (grad_w,) = torch.autograd.grad(loss, w, allow_unused=True)
        norms.append(torch.zeros((), dtype=weight.dtype) if grad_w is None else grad_w.pow(2).sum())
    return torch.stack(norms) if norms else torch.zeros(0, dtype=weight.dtype)
