"""Triton path of the fused LM-head log-probs: three kernels between torch GEMMs.

Per vocabulary chunk [v0, v1), with the chunk's logits computed by a torch (cuBLAS) GEMM into an
fp32 [N, Vc] block:
- forward: `_chunk_stats_fwd` folds the block into per-token online-softmax statistics
  (running max m, sum exp(z - m), sum exp(z - m) z, and z at the target);
- backward: `_chunk_dz_bwd` turns the recomputed block into dz (input dtype), then
  grad_hidden += dz @ W_c (torch) and grad_weight[v0:v1] = dz^T @ h, the latter by
  `_dw_seqnorm_kernel` when per-sequence norms are wanted: its token loop is cut at sequence
  boundaries, and each sequence's partial tile is squared and summed in registers before it joins
  the tile's accumulator (no extra matrix products, no per-sequence V x d buffer).

Importing this module decides, once, whether kernels are compiled for the GPU or run by Triton's
CPU interpreter: set TRITON_INTERPRET=1 before the import for the latter.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .fused_logprobs_torch import ForwardStats, finish_stats

if TYPE_CHECKING:
    from .fused_logprobs import FusedLogprobsConfig


# ---------------------------------------------------------------- kernels
@triton.jit
def _round_to_bf16(x):
    """fp32 -> bf16 rounding to nearest even by bit arithmetic, for the interpreter only.

    The Triton interpreter's fp32 -> bf16 cast truncates, where the compiled cast rounds to
    nearest; truncation biases every sum the interpreter tests compare. Kernels use this under
    their BF16_BY_HAND flag, which the launchers set only when interpreting bf16 inputs.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _chunk_stats_fwd(
    logits_ptr, logits_stride,  # [N, Vc] raw logits of this chunk (any float dtype)
    targets_ptr,                # [N] int64
    running_max_ptr, sum_exp_ptr, sum_exp_z_ptr, target_z_ptr,  # [N] float32, updated in place
    chunk_start, chunk_len, inv_temperature,
    BLOCK_V: tl.constexpr,
):
    """One program per token: fold one row of the chunk into its online-softmax statistics."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    running_max = tl.load(running_max_ptr + row)
    sum_exp = tl.load(sum_exp_ptr + row)
    sum_exp_z = tl.load(sum_exp_z_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    for v in range(0, chunk_len, BLOCK_V):
        in_range = v + cols < chunk_len
        z = tl.load(row_ptr + v + cols, mask=in_range, other=float("-inf")).to(tl.float32) * inv_temperature
        new_max = tl.maximum(running_max, tl.max(z, axis=0))
        rescale = tl.exp(running_max - new_max)  # 0 while running_max is still -inf
        p = tl.exp(z - new_max)  # 0 on masked lanes
        sum_exp = sum_exp * rescale + tl.sum(p, axis=0)
        sum_exp_z = sum_exp_z * rescale + tl.sum(p * tl.where(in_range, z, 0.0), axis=0)
        running_max = new_max
    tl.store(running_max_ptr + row, running_max)
    tl.store(sum_exp_ptr + row, sum_exp)
    tl.store(sum_exp_z_ptr + row, sum_exp_z)
    local_target = tl.load(targets_ptr + row) - chunk_start
    in_chunk = (local_target >= 0) & (local_target < chunk_len)  # false for ignore_index < 0
    target_logit = tl.load(row_ptr + local_target, mask=in_chunk, other=0.0).to(tl.float32)
    tl.store(target_z_ptr + row, target_logit * inv_temperature, mask=in_chunk)


@triton.jit
def _chunk_dz_bwd(
    logits_ptr, logits_stride,  # [N, Vc] recomputed raw logits of this chunk
    dz_ptr, dz_stride,          # [N, Vc] output dz (may be the logits block itself)
    targets_ptr, lse_ptr, mean_z_ptr, grad_logp_ptr, grad_entropy_ptr,  # [N]; grads zero on ignored tokens
    chunk_start, chunk_len, inv_temperature,
    HAS_GRAD_LOGP: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr, BF16_BY_HAND: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """One program per token: dz_v = (g (1[v = y] - p_v) - e p_v (z_v - E_p[z])) / T."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    out_ptr = dz_ptr + row * dz_stride
    lse = tl.load(lse_ptr + row)
    local_target = tl.load(targets_ptr + row) - chunk_start
    if HAS_GRAD_LOGP:
        grad_logp = tl.load(grad_logp_ptr + row)
    if HAS_GRAD_ENTROPY:
        grad_entropy = tl.load(grad_entropy_ptr + row)
        mean_z = tl.load(mean_z_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    for v in range(0, chunk_len, BLOCK_V):
        in_range = v + cols < chunk_len
        z = tl.load(row_ptr + v + cols, mask=in_range, other=0.0).to(tl.float32) * inv_temperature
        p = tl.exp(z - lse)
        dz = tl.zeros([BLOCK_V], dtype=tl.float32)
        if HAS_GRAD_LOGP:
            dz = grad_logp * (tl.where(v + cols == local_target, 1.0, 0.0) - p)
        if HAS_GRAD_ENTROPY:
            dz = dz - grad_entropy * p * (z - mean_z)
        dz = dz * inv_temperature
        if BF16_BY_HAND:
            dz_out = _round_to_bf16(dz)
        else:
            dz_out = dz.to(dz_ptr.dtype.element_ty)
        tl.store(out_ptr + v + cols, dz_out, mask=in_range)


@triton.jit
def _dw_seqnorm_kernel(
    dz_ptr, dz_stride,          # [N, Vc] dz of this chunk, token-major
    hidden_ptr, hidden_stride,  # [N, d]
    dw_ptr, dw_stride,          # [Vc, d] grad_weight rows of this chunk
    cu_seqlens_ptr,             # [B + 1] int32
    partial_ptr,                # [num_tiles, B] float32: ||P_b||^2 of each output tile
    block_start_ptr, block_end_ptr, block_flush_ptr,  # FLAT_LOOP: [num_blocks] token blocks
    num_seqs, num_blocks, chunk_len, dim,
    STORE_DW: tl.constexpr, DOT_PRECISION: tl.constexpr, BF16_BY_HAND: tl.constexpr, FLAT_LOOP: tl.constexpr, TRANS_LOAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dW tile = sum_b P_b with P_b = sum_{t in b} dz_t h_t^T; writes ||P_b||_F^2 per (tile, b)."""
    pid = tl.program_id(0)
    # Grouped tile order: GROUP_M consecutive programs share hidden's column strip in L2.
    num_pid_m = tl.cdiv(chunk_len, BLOCK_M)
    num_pid_n = tl.cdiv(dim, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_size_m
    pid_n = (pid % pids_per_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # vocabulary rows within the chunk
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # hidden columns
    offs_k = tl.arange(0, BLOCK_K)                    # token step
    mask_m = offs_m < chunk_len
    mask_n = offs_n < dim
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_LOOP:
        # One loop over every sequence's token blocks (precomputed on the host), so the software
        # pipeline keeps loading across sequence boundaries instead of restarting per sequence.
        part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for i in range(0, num_blocks):
            tokens = tl.load(block_start_ptr + i) + offs_k
            mask_k = tokens < tl.load(block_end_ptr + i)
            tokens = tokens.to(tl.int64)
            dz_t = tl.load(dz_ptr + tokens[None, :] * dz_stride + offs_m[:, None],
                           mask=mask_k[None, :] & mask_m[:, None], other=0.0)
            h = tl.load(hidden_ptr + tokens[:, None] * hidden_stride + offs_n[None, :],
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if BF16_BY_HAND:
                dz_t = dz_t.to(tl.float32)
                h = h.to(tl.float32)
            part = tl.dot(dz_t, h, part, input_precision=DOT_PRECISION)
            flush_seq = tl.load(block_flush_ptr + i)  # sequence index at its last block, else -1
            if flush_seq >= 0:
                tl.store(partial_ptr + pid * num_seqs + flush_seq, tl.sum(part * part))
                acc += part
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        for b in range(0, num_seqs):
            seq_start = tl.load(cu_seqlens_ptr + b)
            seq_end = tl.load(cu_seqlens_ptr + b + 1)
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(seq_start, seq_end, BLOCK_K):
                tokens = k0 + offs_k
                mask_k = tokens < seq_end
                tokens = tokens.to(tl.int64)
                if TRANS_LOAD:  # dz tile [BLOCK_K, BLOCK_M] as stored, transposed in registers
                    dz_t = tl.trans(tl.load(dz_ptr + tokens[:, None] * dz_stride + offs_m[None, :],
                                            mask=mask_k[:, None] & mask_m[None, :], other=0.0))
                else:  # dz^T tile [BLOCK_M, BLOCK_K], read through strides (contiguous along the vocabulary)
                    dz_t = tl.load(dz_ptr + tokens[None, :] * dz_stride + offs_m[:, None],
                                   mask=mask_k[None, :] & mask_m[:, None], other=0.0)
                h = tl.load(hidden_ptr + tokens[:, None] * hidden_stride + offs_n[None, :],
                            mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                if BF16_BY_HAND:  # the interpreter's dot reads bf16 as raw bits; fp32 products are exact
                    dz_t = dz_t.to(tl.float32)
                    h = h.to(tl.float32)
                part = tl.dot(dz_t, h, part, input_precision=DOT_PRECISION)
            tl.store(partial_ptr + pid * num_seqs + b, tl.sum(part * part))
            acc += part
    if STORE_DW:
        dw_ptrs = dw_ptr + offs_m[:, None].to(tl.int64) * dw_stride + offs_n[None, :]
        if BF16_BY_HAND:
            dw_out = _round_to_bf16(acc)
        else:
            dw_out = acc.to(dw_ptr.dtype.element_ty)
        tl.store(dw_ptrs, dw_out, mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------- launch helpers
def kernels_are_interpreted() -> bool:
    """True when this module was imported under TRITON_INTERPRET=1 (kernels run on the CPU)."""
    return not isinstance(_chunk_stats_fwd, triton.runtime.jit.JITFunction)


def _check_runnable(tensor: torch.Tensor) -> None:
    if kernels_are_interpreted() and isinstance(tl.sum, triton.runtime.jit.JITFunction):
        raise RuntimeError(
            "triton was imported before TRITON_INTERPRET=1 was set, so its own library functions "
            "(tl.sum, tl.max) cannot be interpreted; set the variable before anything imports triton "
            "(importing gvm_kernels does)")
    if tensor.device.type != "cuda" and not kernels_are_interpreted():
        raise RuntimeError(
            "the Triton path needs CUDA tensors; for CPU tensors set TRITON_INTERPRET=1 before "
            "triton is first imported (importing gvm_kernels does), or use backend='torch'")


def _on_gpu(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda" and not kernels_are_interpreted()


def _bf16_by_hand(tensor: torch.Tensor) -> bool:
    """bf16 under the interpreter needs the kernels' hand-made rounding and upcast dot."""
    return tensor.dtype == torch.bfloat16 and kernels_are_interpreted()


def _pick(value: int | None, gpu_default: int, interpreter_default: int, on_gpu: bool) -> int:
    return value if value is not None else (gpu_default if on_gpu else interpreter_default)


_OUT_DTYPE_WORKS = {"mm": True, "addmm": True}  # flipped off after the first failure (older torch)


def _warn_fallback(op: str, err: Exception) -> None:
    _OUT_DTYPE_WORKS[op] = False
    warnings.warn(f"torch.{op}(..., out_dtype=float32) is unavailable ({err}); falling back to an "
                  f"upcast float32 GEMM, which is slower", RuntimeWarning, stacklevel=3)


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b as float32, products of half-precision inputs accumulated (and kept) in fp32."""
    if a.dtype == torch.float32:
        return torch.mm(a, b)
    if a.is_cuda and _OUT_DTYPE_WORKS["mm"]:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as err:
            _warn_fallback("mm", err)
    return torch.mm(a.float(), b.float())


def _addmm_f32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """acc + a @ b with acc float32 [N, d] and a, b in the inputs' dtype."""
    if a.dtype == torch.float32:
        return acc.addmm_(a, b)
    if a.is_cuda and _OUT_DTYPE_WORKS["addmm"]:
        try:
            return torch.addmm(acc, a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError) as err:
            _warn_fallback("addmm", err)
    return acc.addmm_(a.float(), b.float())


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out = a @ b in out's dtype (cuBLAS accumulates half-precision products in fp32)."""
    if a.is_cuda or a.dtype == torch.float32:
        torch.mm(a, b, out=out)
    else:
        out.copy_(torch.mm(a.float(), b.float()))


def token_blocks(cu_seqlens: torch.Tensor, block_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sequence cut into token blocks of at most block_k: (start, end, flush) per block,
    where flush is the sequence's index on its last block and -1 elsewhere (int32 each)."""
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    counts = (ends - starts + block_k - 1) // block_k
    seq = torch.repeat_interleave(torch.arange(counts.numel(), device=cu_seqlens.device), counts)
    first_block = torch.cumsum(counts, 0) - counts
    within = torch.arange(seq.numel(), device=cu_seqlens.device) - first_block[seq]
    block_start = starts[seq] + within * block_k
    flush = torch.where(within == counts[seq] - 1, seq, torch.full_like(seq, -1))
    return block_start.int(), ends[seq].int(), flush.int()


# ---------------------------------------------------------------- forward and backward
def forward_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    *,
    temperature: float,
    chunk_size: int,
    config: FusedLogprobsConfig,
) -> ForwardStats:
    """Online log-sum-exp over vocabulary chunks: one fp32 [N, chunk] GEMM + one stats kernel each."""
    _check_runnable(hidden)
    n_tokens, vocab = hidden.shape[0], weight.shape[0]
    on_gpu = _on_gpu(hidden)
    block_v = _pick(config.block_v, 1024, 128, on_gpu)
    inv_t = 1.0 / temperature
    kwargs = dict(dtype=torch.float32, device=hidden.device)
    running_max = torch.full((n_tokens,), float("-inf"), **kwargs)
    sum_exp = torch.zeros(n_tokens, **kwargs)
    sum_exp_z = torch.zeros(n_tokens, **kwargs)
    target_z = torch.zeros(n_tokens, **kwargs)
    targets = targets.contiguous()
    for v0 in range(0, vocab if n_tokens else 0, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        logits = _mm_f32(hidden, weight[v0:v1].T)  # [N, Vc] float32
        _chunk_stats_fwd[(n_tokens,)](
            logits, logits.stride(0), targets, running_max, sum_exp, sum_exp_z, target_z,
            v0, v1 - v0, inv_t, BLOCK_V=block_v, num_warps=config.rowwise_num_warps)
    return finish_stats(running_max, sum_exp, sum_exp_z, target_z, valid)


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
    cu_seqlens: torch.Tensor,
    sq_norms_out: torch.Tensor | None,
    config: FusedLogprobsConfig,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per chunk: recompute logits (GEMM), dz kernel, grad_hidden GEMM, grad_weight GEMM (+ norms)."""
    _check_runnable(hidden)
    n_tokens, dim = hidden.shape
    vocab = weight.shape[0]
    on_gpu = _on_gpu(hidden)
    block_v = _pick(config.block_v, 1024, 128, on_gpu)
    block_m = _pick(config.dw_block_m, 128, 32, on_gpu)
    block_n = _pick(config.dw_block_n, 256, 32, on_gpu)
    block_k = _pick(config.dw_block_k, 64, 16, on_gpu)
    inv_t = 1.0 / temperature
    zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
    g = None if grad_logp is None else torch.where(valid, grad_logp.float(), zero).contiguous()
    e = None if grad_entropy is None else torch.where(valid, grad_entropy.float(), zero).contiguous()
    dummy = lse  # stands in for absent pointers; the constexpr flags keep kernels from reading it
    hidden = hidden if hidden.stride(1) == 1 else hidden.contiguous()
    targets = targets.contiguous()

    grad_hidden = torch.zeros(n_tokens, dim, dtype=torch.float32, device=hidden.device) if need_grad_hidden else None
    new_grad_weight = torch.empty if n_tokens else torch.zeros  # no chunk loop without tokens
    grad_weight = new_grad_weight(vocab, dim, dtype=weight.dtype, device=weight.device) if need_grad_weight else None
    want_norms = sq_norms_out is not None
    num_seqs = cu_seqlens.numel() - 1
    if want_norms:
        norms = torch.zeros(num_seqs, dtype=torch.float32, device=hidden.device)
        cu32 = cu_seqlens.to(torch.int32).contiguous()
        blocks = token_blocks(cu32, block_k) if config.dw_flat_loop else (cu32, cu32, cu32)
    # dz lives in the inputs' dtype (half the bytes for the two GEMMs that read it). For fp32 inputs
    # it overwrites the logits block; for half precision it gets its own block, since a narrower
    # dz written over the fp32 row would land on elements other warps of the program still read.
    separate_dz = hidden.dtype != torch.float32
    dz_storage = torch.empty(n_tokens * min(chunk_size, vocab), dtype=hidden.dtype,
                             device=hidden.device) if separate_dz and n_tokens else None
    for v0 in range(0, vocab if n_tokens else 0, chunk_size):
        v1 = min(v0 + chunk_size, vocab)
        chunk_len = v1 - v0
        w_chunk = weight[v0:v1]
        logits = _mm_f32(hidden, w_chunk.T)  # [N, Vc] float32
        dz = dz_storage[: n_tokens * chunk_len].view(n_tokens, chunk_len) if separate_dz else logits
        _chunk_dz_bwd[(n_tokens,)](
            logits, logits.stride(0), dz, dz.stride(0), targets, lse,
            mean_z if e is not None else dummy, g if g is not None else dummy, e if e is not None else dummy,
            v0, chunk_len, inv_t, HAS_GRAD_LOGP=g is not None, HAS_GRAD_ENTROPY=e is not None,
            BF16_BY_HAND=_bf16_by_hand(hidden), BLOCK_V=block_v, num_warps=config.rowwise_num_warps)
        del logits
        if grad_hidden is not None:
            grad_hidden = _addmm_f32(grad_hidden, dz, w_chunk)
        if want_norms:
            dw_chunk = grad_weight[v0:v1] if grad_weight is not None else dz  # dz: unused pointer
            num_tiles = triton.cdiv(chunk_len, block_m) * triton.cdiv(dim, block_n)
            # zeros: in the flat loop an empty sequence has no block and is never written
            partials = torch.zeros(num_tiles, num_seqs, dtype=torch.float32, device=hidden.device)
            _dw_seqnorm_kernel[(num_tiles,)](
                dz, dz.stride(0), hidden, hidden.stride(0), dw_chunk, dw_chunk.stride(0), cu32, partials,
                *blocks, num_seqs, blocks[0].numel(), chunk_len, dim, STORE_DW=grad_weight is not None,
                DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
                BF16_BY_HAND=_bf16_by_hand(hidden), FLAT_LOOP=config.dw_flat_loop, TRANS_LOAD=config.dw_trans_load,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
                num_warps=config.dw_num_warps, num_stages=config.dw_num_stages)
            norms += partials.sum(dim=0)
        elif grad_weight is not None:
            _mm_into(grad_weight[v0:v1], dz.T, hidden)
    if want_norms:
        sq_norms_out.copy_(norms)
    return (None if grad_hidden is None else grad_hidden.to(hidden.dtype)), grad_weight
