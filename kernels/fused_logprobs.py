"""Fused LM head -> per-token log-prob (+ entropy) with per-sequence gradient norms of the head.

`fused_logprobs` computes log p(y_t) from z = W h_t / T without materialising the N x V logits:
the vocabulary is walked in chunks, with an online log-sum-exp in the forward and recomputed
logits in the backward. Its backward can also write, for each packed sequence b, the squared
Frobenius norm of the part of dW that b contributes (GVM's G_i for the LM head), at the cost of
one elementwise pass per output tile.

Two implementations of the same chunked algorithm sit behind one autograd Function:
Triton kernels for CUDA tensors (`fused_logprobs_triton`) and torch ops on the CPU
(`fused_logprobs_torch`). `TRITON_INTERPRET=1` sends CPU tensors through the Triton path too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import torch

from . import fused_logprobs_torch

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class FusedLogprobsConfig:
    """Tuning knobs. `None` means "pick for the device"; block sizes only matter to Triton."""
    chunk_size: int | None = None          # vocabulary rows per chunk; None: from the memory budget
    chunk_budget_bytes: int | None = None  # fp32 [N, chunk] logits; None: 512 MiB CUDA, 32 MiB CPU (+50% bf16 dz)
    min_chunk_size: int = 512              # below this the GEMMs get too thin to run at speed
    chunk_multiple: int = 128              # chunk sizes are rounded down to a multiple of this
    block_v: int | None = None             # row-wise kernels' vocabulary tile; None: 1024 GPU, 64 interp
    rowwise_num_warps: int = 4             # warps of the row-wise (stats / dz) kernels
    dw_block_m: int | None = None          # dW GEMM tile rows (vocab); None: 128 GPU, 16 interp
    dw_block_n: int | None = None          # dW GEMM tile cols (hidden); None: 256 GPU, 16 interp
    dw_block_k: int | None = None          # dW GEMM token step; None: 64 GPU, 16 interp
    dw_num_warps: int = 8
    dw_num_stages: int = 3
    dw_flat_loop: bool = False             # one loop over all sequences' token blocks (slower on H100)
    dw_trans_load: bool = True             # load dz as stored, transpose in registers (-1 ms on H100)

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {self.chunk_size}")
        if self.chunk_budget_bytes is not None and self.chunk_budget_bytes < 1:
            raise ValueError(f"chunk_budget_bytes must be >= 1 or None, got {self.chunk_budget_bytes}")


def choose_chunk_size(n_tokens: int, vocab: int, device: torch.device, config: FusedLogprobsConfig) -> int:
    """Vocabulary rows per chunk so that one float32 [N, chunk] block fits the memory budget."""
    if config.chunk_size is not None:
        return min(config.chunk_size, vocab)
    budget = config.chunk_budget_bytes
    if budget is None:
        budget = (512 if device.type == "cuda" else 32) * 2**20
    chunk = budget // (4 * max(n_tokens, 1))
    chunk = max(chunk // config.chunk_multiple * config.chunk_multiple, config.min_chunk_size)
    return max(1, min(chunk, vocab))


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Triton on CUDA (or on the CPU under TRITON_INTERPRET=1), else torch; or the one asked for."""
    if backend is None:
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        return "triton" if device.type == "cuda" or interpret else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


def _triton_module() -> ModuleType:
    from . import fused_logprobs_triton  # imported on first use: importing triton takes seconds
    return fused_logprobs_triton


def _validate(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    sq_grad_norms_out: torch.Tensor | None,
) -> list[int]:
    """Check every argument; return the sequence boundaries as a host list (one device sync)."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError(f"hidden must be a 2-D tensor [N, d], got shape {getattr(hidden, 'shape', None)}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor [V, d], got shape {getattr(weight, 'shape', None)}")
    n_tokens, dim = hidden.shape
    if weight.shape[1] != dim:
        raise ValueError(f"weight must be [V, {dim}] to match hidden [N, {dim}], got {tuple(weight.shape)}")
    if weight.shape[0] < 1:
        raise ValueError("weight must have at least one vocabulary row")
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"hidden dtype must be one of {SUPPORTED_DTYPES}, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}; cast one of them")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden is on {hidden.device}")
    if not isinstance(targets, torch.Tensor) or targets.shape != (n_tokens,):
        raise ValueError(f"targets must be a 1-D tensor of {n_tokens} token ids, got shape "
                         f"{getattr(targets, 'shape', None)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be int64 (or int32), got {targets.dtype}")
    if targets.device != hidden.device:
        raise ValueError(f"targets is on {targets.device} but hidden is on {hidden.device}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D tensor [B + 1] of sequence offsets with B >= 1")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != hidden.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but hidden is on {hidden.device}")
    num_seqs = 1 if cu_seqlens is None else cu_seqlens.numel() - 1
    if sq_grad_norms_out is not None:
        if (not isinstance(sq_grad_norms_out, torch.Tensor) or sq_grad_norms_out.shape != (num_seqs,)
                or sq_grad_norms_out.dtype != torch.float32):
            raise ValueError(f"sq_grad_norms_out must be a float32 tensor of shape [{num_seqs}] (one entry per "
                             f"sequence in cu_seqlens), got {getattr(sq_grad_norms_out, 'dtype', None)} "
                             f"{tuple(getattr(sq_grad_norms_out, 'shape', ()))}")
        if sq_grad_norms_out.device != hidden.device:
            raise ValueError(f"sq_grad_norms_out is on {sq_grad_norms_out.device} but hidden is on {hidden.device}")
        if sq_grad_norms_out.requires_grad:
            raise ValueError("sq_grad_norms_out is an output buffer and must not require grad")

    # One host round trip for all value checks: [cu_seqlens..., min target, max target].
    vocab = weight.shape[0]
    safe_targets = torch.where(targets == ignore_index, torch.zeros_like(targets), targets)
    target_range = (torch.stack(torch.aminmax(safe_targets)) if n_tokens
                    else torch.zeros(2, dtype=targets.dtype, device=targets.device))
    bounds_part = (cu_seqlens.long() if cu_seqlens is not None
                   else torch.tensor([0, n_tokens], device=targets.device))
    values = torch.cat([bounds_part, target_range.long()]).tolist()
    bounds, (low, high) = values[:-2], values[-2:]
    if low < 0 or high >= vocab:
        raise ValueError(f"targets must lie in [0, {vocab}) or equal ignore_index={ignore_index}, "
                         f"found values in [{low}, {high}]")
    if bounds[0] != 0 or bounds[-1] != n_tokens:
        raise ValueError(f"cu_seqlens must start at 0 and end at N={n_tokens}, got {bounds[0]} ... {bounds[-1]}")
    if any(b < a for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError("cu_seqlens must be non-decreasing (cumulative sequence lengths)")
    return bounds


class _FusedLogprobsFunction(torch.autograd.Function):
    """logp, entropy = f(hidden, weight); backward recomputes logits chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, cu_seqlens, seq_bounds, temperature, ignore_index,
                want_entropy, sq_norms_out, backend, config):
        chunk_size = choose_chunk_size(hidden.shape[0], weight.shape[0], hidden.device, config)
        valid = targets != ignore_index
        if backend == "triton":
            stats = _triton_module().forward_chunked(
                hidden, weight, targets, valid, temperature=temperature, chunk_size=chunk_size, config=config)
        else:
            stats = fused_logprobs_torch.forward_chunked(
                hidden, weight, targets, valid, temperature=temperature, chunk_size=chunk_size)
        # Save the tensors autograd handed us (under ZeRO-3 `weight` is re-gathered for backward).
        ctx.save_for_backward(hidden, weight, targets, valid, stats.lse,
                              stats.mean_z if want_entropy else None, cu_seqlens)
        ctx.seq_bounds = seq_bounds
        ctx.temperature = temperature
        ctx.sq_norms_out = sq_norms_out
        ctx.backend = backend
        ctx.config = config
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        if not want_entropy:
            ctx.mark_non_differentiable(stats.entropy)
        return stats.logp, stats.entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, valid, lse, mean_z, cu_seqlens = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if mean_z is None:
            grad_entropy = None
        if grad_logp is None and grad_entropy is None:
            if ctx.sq_norms_out is not None:
                ctx.sq_norms_out.zero_()
            return (None,) * 11
        common = dict(temperature=ctx.temperature, chunk_size=ctx.chunk_size, need_grad_hidden=need_hidden,
                      need_grad_weight=need_weight, sq_norms_out=ctx.sq_norms_out)
        if ctx.backend == "triton":
            if cu_seqlens is None:
                cu_seqlens = torch.tensor(ctx.seq_bounds, dtype=torch.int32, device=hidden.device)
            grad_hidden, grad_weight = _triton_module().backward_chunked(
                hidden, weight, targets, valid, lse, mean_z, grad_logp, grad_entropy,
                cu_seqlens=cu_seqlens, config=ctx.config, **common)
        else:
            grad_hidden, grad_weight = fused_logprobs_torch.backward_chunked(
                hidden, weight, targets, valid, lse, mean_z, grad_logp, grad_entropy,
                seq_bounds=ctx.seq_bounds, **common)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None


def fused_logprobs_impl(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    sq_grad_norms_out: torch.Tensor | None = None,
    backend: str | None = None,
    config: FusedLogprobsConfig | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`fused_logprobs` with the backend ("torch" | "triton" | None = by device) and knobs exposed."""
    seq_bounds = _validate(hidden, weight, targets, cu_seqlens, temperature, ignore_index, sq_grad_norms_out)
    backend = resolve_backend(backend, hidden.device)
    config = config or FusedLogprobsConfig()
    logp, entropy = _FusedLogprobsFunction.apply(
        hidden, weight, targets.long(), cu_seqlens, seq_bounds, float(temperature), ignore_index,
        return_entropy, sq_grad_norms_out, backend, config)
    return (logp, entropy) if return_entropy else logp


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    sq_grad_norms_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(y_t) (and entropy) of z = weight @ hidden_t / temperature, logits never stored.

    hidden [N, d] and weight [V, d] in bf16/fp16/fp32 (same dtype), targets [N] int64; tokens equal
    to `ignore_index` give 0 and no gradient. cu_seqlens [B + 1] (int32/int64, 0 ... N) marks packed
    sequences. Returns float32 logp [N], or (logp, entropy) when `return_entropy`. Gradients reach
    hidden and weight in their dtype. If `sq_grad_norms_out` (float32 [B], or [1] without
    cu_seqlens) is given, the backward overwrites it with ||sum_{t in b} dz_t h_t^T||_F^2 for each
    sequence b: the squared norm of the part of weight's gradient that b contributes.
    Runs Triton kernels on CUDA, chunked torch ops on the CPU (Triton there under TRITON_INTERPRET=1).
    """
    return fused_logprobs_impl(
        hidden, weight, targets, cu_seqlens=cu_seqlens, temperature=temperature, ignore_index=ignore_index,
        return_entropy=return_entropy, sq_grad_norms_out=sq_grad_norms_out)
