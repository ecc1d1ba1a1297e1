"""Correcting for the rollout engine sampling from a slightly different policy than the trainer.

vLLM and the trainer compute different numbers for the same weights (kernels, precision,
weights synced in bf16), so samples come from pi_engine while the loss assumes pi_old.
Per token, the importance weight pi_old / pi_engine = exp(old - engine) corrects for it:
- "tis":  truncated importance sampling, w_t = min(exp(old_t - engine_t), cap); bounded
          variance at the price of a small bias.
- "mask": keep whole sequences whose per-token |log ratio| (max or mean over the response) is
          within a threshold (w = 1), drop the others (w = 0).
- "none": w = 1; the metrics still show how far apart the two are.
Pure torch; the weights carry no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

MismatchMode = Literal["tis", "mask", "none"]


@dataclass(frozen=True)
class MismatchConfig:
    mode: MismatchMode = "tis"
    tis_cap: float = 2.0  # C: largest token weight; 2 keeps variance low while fixing most bias
    mask_statistic: Literal["max", "mean"] = "max"  # per-sequence summary of |log ratio|
    mask_threshold: float = 1.0  # drop a sequence whose statistic exceeds this (e^1 = 2.7x off)

    def __post_init__(self) -> None:
        if self.mode not in ("tis", "mask", "none"):
            raise ValueError(f"mode must be 'tis', 'mask' or 'none', got {self.mode!r}")
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0 (a weight cap), got {self.tis_cap}")
        if self.mask_statistic not in ("max", "mean"):
            raise ValueError(f"mask_statistic must be 'max' or 'mean', got {self.mask_statistic!r}")
        if self.mask_threshold < 0:
            raise ValueError(f"mask_threshold must be >= 0 (a bound on |log ratio|), got {self.mask_threshold}")


def pad_logprobs(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-sequence log-prob lists into (B, T) float32 values and a (B, T) bool mask."""
    width = max((len(r) for r in rows), default=0)
    values = torch.zeros(len(rows), width, dtype=torch.float32)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        values[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        mask[i, :len(row)] = True
    return values, mask


@torch.no_grad()
def mismatch_weights(
    old_logprobs: torch.Tensor,
    engine_logprobs: torch.Tensor,
    mask: torch.Tensor,
    config: MismatchConfig = MismatchConfig(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Importance weights (B, T) for the response tokens and metrics.

    old_logprobs, engine_logprobs: (B, T) log-probs of the sampled tokens under the trainer's
    old policy and under the engine; mask: (B, T), True on response tokens. Weights are 0
    off the mask. Metrics: mean / max |log ratio| over tokens, the fraction of tokens whose
    ratio is above the cap, and the fraction of sequences over the mask threshold (both
    reported in every mode; only the chosen mode changes the weights).
    """
    if old_logprobs.shape != engine_logprobs.shape or old_logprobs.shape != mask.shape:
        raise ValueError(
            f"old_logprobs {tuple(old_logprobs.shape)}, engine_logprobs {tuple(engine_logprobs.shape)} "
            f"and mask {tuple(mask.shape)} must have the same (B, T) shape"
        )
    if old_logprobs.dim() != 2:
        raise ValueError(f"expected (B, T) tensors, got {old_logprobs.dim()} dimensions")
    mask = mask.bool()
    tokens = mask.float()
    log_ratio = (old_logprobs.float() - engine_logprobs.float()).masked_fill(~mask, 0.0)
    abs_log_ratio = log_ratio.abs()
    n_tokens = tokens.sum().clamp_min(1.0)

    # Per-sequence statistic for masking; sequences without tokens are never over the bar.
    seq_tokens = tokens.sum(dim=1)
    seq_max = abs_log_ratio.masked_fill(~mask, 0.0).amax(dim=1) if mask.shape[1] else seq_tokens
    seq_mean = abs_log_ratio.sum(dim=1) / seq_tokens.clamp_min(1.0)
    seq_stat = seq_max if config.mask_statistic == "max" else seq_mean
    seq_over = (seq_stat > config.mask_threshold) & (seq_tokens > 0)

    ratio = log_ratio.exp()
    over_cap = (ratio > config.tis_cap) & mask
    if config.mode == "tis":
        weights = ratio.clamp(max=config.tis_cap) * tokens
    elif config.mode == "mask":
        weights = tokens * (~seq_over).float().unsqueeze(1)
    else:
        weights = tokens.clone()

    n_seqs = max(int((seq_tokens > 0).sum()), 1)
    metrics = {
        "mismatch/mean_abs_log_ratio": float(abs_log_ratio.sum() / n_tokens),
        "mismatch/max_abs_log_ratio": float(abs_log_ratio.max()) if abs_log_ratio.numel() else 0.0,
        "mismatch/frac_tokens_truncated": float(over_cap.float().sum() / n_tokens),
        "mismatch/frac_seqs_masked": float(seq_over.float().sum() / n_seqs),
        "mismatch/mean_weight": float(weights.sum() / n_tokens),
    }
    return weights, metrics
