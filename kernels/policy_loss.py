"""Policy-gradient losses for RAFT, RAFT++ and GRPO, and GRPO advantages over variable-size groups.

Plain PyTorch: the work is elementwise over N tokens plus one reduction, small next to the LM head
that produced `logp`; nothing here is fused until a measurement says it matters.

Layouts (every per-token tensor has the shape of `logp`):
- packed [N]: the trainer's layout, sequences concatenated. Sequence membership comes from
  `cu_seqlens` [B+1] (cu[0] = 0, cu[B] = N) or `seq_ids` [N] (sequence index 0..B-1 per token,
  any order). Needed for the seq-* aggregations and for per-sequence advantages.
- padded [B, T]: one row per sequence, `mask` marks the real response tokens.

Per-token loss l_t (A = advantage, s_t = exp(logp_t - old_logp_t)):
- raft:    l_t = -A_t logp_t (SFT on accepted samples when A in {0, 1}); no ratio.
- raft++:  l_t = max(-s_t A_t, -clip(s_t, 1 - clip_low, 1 + clip_high) A_t)   (PPO clip)
           dual clip (dual_clip = c > 1): for A_t < 0, l_t = min(l_t, -c A_t), which bounds the
           loss of a negative-advantage token whose ratio has blown up.
- grpo:    the raft++ surrogate; the difference is in the advantages (group_advantages) and the
           KL penalty below, which every kind gets when kl_coef > 0.
plus kl_coef * k3_t with k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1 (KL(pi || pi_ref)
estimate, "low_var_kl"), minus entropy_coef * entropy_t.

At the clip boundary (s_t exactly 1 - clip_low or 1 + clip_high) both terms are equal; we pick the
unclipped one, so the gradient there is the unclipped -A_t s_t d logp_t and the token does not count
as clipped. The clipped term is chosen only when it is strictly larger; its gradient is then zero.
Log-ratios are clamped to [-20, 20] before exp so that one runaway token cannot produce inf/NaN
gradients (torch.where's unused branch would otherwise multiply 0 by inf).

Masked tokens are inert: their inputs are replaced by zeros before any arithmetic, so garbage
(NaN, -inf) at padded positions changes neither the loss nor the gradient, which is exactly 0 there.
`advantages`, `old_logp` and `ref_logp` are treated as constants (detached).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["policy_loss", "group_advantages", "KINDS", "AGGREGATIONS"]

KINDS = ("raft", "raft++", "grpo")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
LOG_RATIO_LIMIT = 20.0      # exp(20) ~ 4.9e8: far beyond any clip range, still finite in fp32


# ---------------------------------------------------------------------------------------------
# layout: which tokens count and which sequence each belongs to
# ---------------------------------------------------------------------------------------------

@dataclass
class _Layout:
    mask: torch.Tensor                  # bool, shape of logp
    seq_index: Optional[torch.Tensor]   # long, shape of logp; None when packed without seq info
    num_seqs: int


def _resolve_layout(logp: torch.Tensor, mask: Optional[torch.Tensor], seq_ids: Optional[torch.Tensor],
                    cu_seqlens: Optional[torch.Tensor]) -> _Layout:
    if not isinstance(logp, torch.Tensor) or logp.dim() not in (1, 2) or not logp.dtype.is_floating_point:
        raise ValueError("logp must be a floating tensor, packed [N] or padded [B, T], got "
                         f"{getattr(logp, 'shape', type(logp))} {getattr(logp, 'dtype', '')}")
    if mask is None:
        token_mask = torch.ones_like(logp, dtype=torch.bool)
    else:
        _check_same_shape("mask", mask, logp)
        token_mask = mask if mask.dtype == torch.bool else mask != 0
    if logp.dim() == 2:
        if seq_ids is not None or cu_seqlens is not None:
            raise ValueError("seq_ids / cu_seqlens are for packed [N] inputs; with padded [B, T] "
                             "inputs each row is a sequence, so pass neither")
        num_seqs, seq_len = logp.shape
        seq_index = torch.arange(num_seqs, device=logp.device)[:, None].expand(num_seqs, seq_len)
        return _Layout(token_mask, seq_index, num_seqs)
    if seq_ids is not None and cu_seqlens is not None:
        raise ValueError("pass either seq_ids or cu_seqlens, not both")
    n_tokens = logp.shape[0]
    if cu_seqlens is not None:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype.is_floating_point:
            raise ValueError("cu_seqlens must be a 1-D integer tensor [B+1] with B >= 1")
        cu = cu_seqlens.to(device=logp.device, dtype=torch.long)
        lengths = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != n_tokens or bool((lengths < 0).any()):
            raise ValueError(f"cu_seqlens must be non-decreasing from 0 to N={n_tokens}, "
                             f"got {cu_seqlens.tolist() if cu_seqlens.numel() < 20 else 'a bad tensor'}")
        seq_index = torch.repeat_interleave(torch.arange(lengths.numel(), device=logp.device), lengths,
                                            output_size=n_tokens)
        return _Layout(token_mask, seq_index, lengths.numel())
    if seq_ids is not None:
        _check_same_shape("seq_ids", seq_ids, logp)
        if seq_ids.dtype.is_floating_point or seq_ids.dtype == torch.bool:
            raise ValueError(f"seq_ids must be an integer tensor, got {seq_ids.dtype}")
        if n_tokens and int(seq_ids.min()) < 0:
            raise ValueError("seq_ids must be non-negative sequence indices")
        num_seqs = int(seq_ids.max()) + 1 if n_tokens else 0
        return _Layout(token_mask, seq_ids.to(device=logp.device, dtype=torch.long), num_seqs)
    return _Layout(token_mask, None, 0)


def _check_same_shape(name: str, tensor: Optional[torch.Tensor], logp: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.shape != logp.shape:
        raise ValueError(f"{name} must have logp's shape {tuple(logp.shape)}, "
                         f"got {tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)}")
    if tensor.device != logp.device:
        raise ValueError(f"{name} is on {tensor.device} but logp is on {logp.device}")


def _token_advantages(advantages: torch.Tensor, logp: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """Per-token advantages: logp's shape as is, or per-sequence [B] broadcast to the tokens."""
    if not isinstance(advantages, torch.Tensor):
        raise ValueError(f"advantages must be a tensor, got {type(advantages)}")
    if advantages.device != logp.device:
        raise ValueError(f"advantages is on {advantages.device} but logp is on {logp.device}")
    if advantages.shape == logp.shape:
        return advantages
    if advantages.dim() == 1 and layout.seq_index is not None and advantages.shape[0] == layout.num_seqs:
        return advantages[layout.seq_index]
    raise ValueError(f"advantages must be per token (shape {tuple(logp.shape)}) or per sequence "
                     f"[B] (B = {layout.num_seqs if layout.seq_index is not None else 'unknown: pass cu_seqlens or seq_ids'}), "
                     f"got {tuple(advantages.shape)}")


# ---------------------------------------------------------------------------------------------
# per-token surrogates, registered by kind
# ---------------------------------------------------------------------------------------------

@dataclass
class _Surrogate:
    loss: torch.Tensor                              # per token, fp32
    clipped: torch.Tensor                           # bool: the clipped term was chosen
    dual_clipped: torch.Tensor                      # bool: the dual-clip cap was chosen


def _raft_surrogate(logp, old_logp, adv, clip_low, clip_high, dual_clip) -> _Surrogate:
    no = torch.zeros_like(logp, dtype=torch.bool)
    return _Surrogate(-adv * logp, no, no)


def _clipped_surrogate(logp, old_logp, adv, clip_low, clip_high, dual_clip) -> _Surrogate:
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    use_clipped = clipped > unclipped                   # strict: ties take the unclipped gradient
    loss = torch.where(use_clipped, clipped, unclipped)
    if dual_clip is None:
        return _Surrogate(loss, use_clipped, torch.zeros_like(use_clipped))
    cap = -dual_clip * adv
    use_cap = (adv < 0) & (cap < loss)
    return _Surrogate(torch.where(use_cap, cap, loss), use_clipped & ~use_cap, use_cap)


_SURROGATES: dict[str, Callable[..., _Surrogate]] = {
    "raft": _raft_surrogate,
    "raft++": _clipped_surrogate,
    "grpo": _clipped_surrogate,
}


def _k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 KL estimate exp(x) - x - 1 >= 0 for x = log(q/p) with samples from p."""
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    return torch.exp(log_ratio) - log_ratio - 1.0


# ---------------------------------------------------------------------------------------------
# aggregation over masked tokens
# ---------------------------------------------------------------------------------------------

def _aggregate(token_loss: torch.Tensor, layout: _Layout, agg: str) -> torch.Tensor:
    """Masked tokens contribute 0; sequences without an unmasked token are not counted; an
    all-masked batch gives 0 (still attached to the graph) rather than 0/0."""
    masked_loss = torch.where(layout.mask, token_loss, torch.zeros_like(token_loss))
    if agg == "token-mean":
        return masked_loss.sum() / layout.mask.sum().clamp(min=1)
    seq = layout.seq_index.reshape(-1)
    seq_sum = token_loss.new_zeros(layout.num_seqs).index_add(0, seq, masked_loss.reshape(-1))
    seq_count = token_loss.new_zeros(layout.num_seqs).index_add(0, seq, layout.mask.reshape(-1).to(token_loss.dtype))
    num_valid = (seq_count > 0).sum().clamp(min=1)
    if agg == "seq-mean-token-sum":
        return seq_sum.sum() / num_valid
    return (seq_sum / seq_count.clamp(min=1)).sum() / num_valid


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------

def _check_options(kind, agg, clip_low, clip_high, dual_clip, old_logp, ref_logp, kl_coef, entropy,
                   entropy_coef) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (a cap of dual_clip * |A| on negative-advantage "
                         f"tokens), or None to disable it; got {dual_clip}")
    if kind != "raft" and old_logp is None:
        raise ValueError(f"kind={kind!r} needs old_logp (the sampling policy's log-probs) for the ratio")
    if kl_coef < 0 or entropy_coef < 0:
        raise ValueError(f"kl_coef and entropy_coef must be >= 0, got {kl_coef}, {entropy_coef}")
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp (the reference model's log-probs); "
                         "pass ref_logp or set kl_coef=0")
    if entropy_coef > 0 and entropy is None:
        raise ValueError("entropy_coef > 0 needs entropy (per-token entropies); pass it or set entropy_coef=0")


def policy_loss(
    logp: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    kind: str,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
    ref_logp: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    entropy: Optional[torch.Tensor] = None,
    entropy_coef: float = 0.0,
    agg: str = "token-mean",
    seq_ids: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar policy loss and detached metrics (see the module docstring for the formulas).

    Args:
        logp: [N] packed or [B, T] padded, log pi_theta(y_t), differentiable (any float dtype;
            computed in fp32 at least).
        old_logp: shape of logp, log pi_old(y_t) of the sampling policy; required for raft++ /
            grpo, optional for raft (then only used for the ratio metrics).
        advantages: per token (shape of logp) or per sequence [B] (broadcast; packed inputs then
            need cu_seqlens or seq_ids).
        mask: shape of logp, bool or 0/1; True marks tokens that count. None: all tokens count.
        kind: "raft", "raft++" or "grpo".
        clip_low, clip_high: ratio clip range [1 - clip_low, 1 + clip_high].
        dual_clip: c > 1 caps a negative-advantage token's loss at -c A; None disables it.
        ref_logp, kl_coef: adds kl_coef * k3(ref_logp - logp) per token; ref_logp needed if kl_coef > 0.
        entropy, entropy_coef: subtracts entropy_coef * entropy_t (differentiable) per token.
        agg: "token-mean" (sum l m / sum m), "seq-mean-token-sum" (mean over sequences of
            sum_t l_t), "seq-mean-token-mean" (mean over sequences of their token mean); sequences
            with no unmasked token are left out of the seq-means.
        seq_ids: [N] sequence index per token (packed only), or
        cu_seqlens: [B+1] cumulative lengths (packed only).
    Returns:
        (loss, metrics): loss is a 0-dim fp32 tensor; metrics are detached 0-dim tensors, each a
        mean over unmasked tokens (0 when none): "clip_frac" (the clipped term was chosen and
        differs, i.e. the ratio was strictly outside the range on the side the advantage's sign
        makes binding), "dual_clip_frac" (the dual-clip cap was chosen), "num_tokens"; with
        old_logp also "ratio_mean" (s_t) and "approx_kl" (k3 of log(pi_theta/pi_old): KL(pi_old ||
        pi_theta) from pi_old's samples); with ref_logp "kl_ref" (k3 to the reference); with
        entropy "entropy".
    """
    _check_options(kind, agg, clip_low, clip_high, dual_clip, old_logp, ref_logp, kl_coef, entropy,
                   entropy_coef)
    layout = _resolve_layout(logp, mask, seq_ids, cu_seqlens)
    if agg != "token-mean" and layout.seq_index is None:
        raise ValueError(f"agg={agg!r} needs sequence boundaries for packed [N] inputs: "
                         "pass cu_seqlens or seq_ids")
    for name, tensor in (("old_logp", old_logp), ("ref_logp", ref_logp), ("entropy", entropy)):
        if tensor is not None:
            _check_same_shape(name, tensor, logp)
    adv = _token_advantages(advantages, logp, layout)

    compute_dtype = torch.promote_types(logp.dtype, torch.float32)
    zero = torch.zeros((), dtype=compute_dtype, device=logp.device)

    def inert(x: Optional[torch.Tensor], detach: bool) -> Optional[torch.Tensor]:
        """fp32+ copy with masked positions zeroed (no NaN/inf can leak into loss or grad)."""
        if x is None:
            return None
        x = x.detach() if detach else x
        return torch.where(layout.mask, x.to(compute_dtype), zero)

    logp_c = inert(logp, detach=False)
    old_c, ref_c = inert(old_logp, detach=True), inert(ref_logp, detach=True)
    adv_c, ent_c = inert(adv, detach=True), inert(entropy, detach=False)

    surrogate = _SURROGATES[kind](logp_c, old_c, adv_c, clip_low, clip_high, dual_clip)
    token_loss = surrogate.loss
    kl_ref = _k3(ref_c - logp_c) if ref_c is not None else None
    if kl_coef > 0:
        token_loss = token_loss + kl_coef * kl_ref
    if entropy_coef > 0:
        token_loss = token_loss - entropy_coef * ent_c
    loss = _aggregate(token_loss, layout, agg)

    with torch.no_grad():
        count = layout.mask.sum()

        def token_mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(layout.mask, x.detach().to(compute_dtype), zero).sum() / count.clamp(min=1)

        metrics = {
            "clip_frac": token_mean(surrogate.clipped),
            "dual_clip_frac": token_mean(surrogate.dual_clipped),
            "num_tokens": count.to(compute_dtype),
        }
        if old_c is not None:
            log_ratio = logp_c - old_c
            metrics["ratio_mean"] = token_mean(torch.exp(log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)))
            metrics["approx_kl"] = token_mean(_k3(log_ratio))
        if kl_ref is not None:
            metrics["kl_ref"] = token_mean(kl_ref)
        if ent_c is not None:
            metrics["entropy"] = token_mean(ent_c)
    return loss, metrics


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6,
                     normalize_std: bool = True) -> torch.Tensor:
    """GRPO advantages with a different number of samples per group (GVM's n_i).

    A_j = (r_j - mean_g) / (std_g + eps) over the samples j of group g (std with Bessel's
    correction, as torch.std); normalize_std=False gives r_j - mean_g. A group of size 1 has no
    baseline and a group whose rewards are all equal carries no signal: both get exactly 0.

    Args:
        rewards: [S] rewards (any real dtype).
        group_ids: [S] integer group label per sample (any values, any order).
    Returns:
        [S] advantages, float64 if rewards are float64 else float32.
    """
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [S], got {getattr(rewards, 'shape', type(rewards))}")
    if not isinstance(group_ids, torch.Tensor) or group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids must be a tensor of rewards' shape {tuple(rewards.shape)}, "
                         f"got {getattr(group_ids, 'shape', type(group_ids))}")
    if group_ids.dtype.is_floating_point or group_ids.dtype.is_complex:
        raise ValueError(f"group_ids must be integer labels, got {group_ids.dtype}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(dtype)
    if r.numel() == 0:
        return r
    _, group = torch.unique(group_ids, return_inverse=True)
    num_groups = int(group.max()) + 1
    count = r.new_zeros(num_groups).index_add_(0, group, torch.ones_like(r))
    mean = r.new_zeros(num_groups).index_add_(0, group, r) / count
    centered = r - mean[group]
    low = r.new_full((num_groups,), float("inf")).scatter_reduce_(0, group, r, "amin")
    high = r.new_full((num_groups,), float("-inf")).scatter_reduce_(0, group, r, "amax")
    # all-equal groups: r - mean can be a rounding residue (3 x 0.1), which / eps would blow up
    no_signal = (count < 2) | (low == high)
    if normalize_std:
        var = r.new_zeros(num_groups).index_add_(0, group, centered.square()) / (count - 1).clamp(min=1)
        centered = centered / (var.sqrt()[group] + eps)
    return torch.where(no_signal[group], torch.zeros_like(centered), centered)
