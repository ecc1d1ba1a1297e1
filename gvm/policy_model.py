"""The causal LM as the trainer runs it: packed tokens in, per-token log-probs out.

`model.lm_head` is replaced (before DeepSpeed wraps the model) by `FusedLMHead`, which keeps the
same `weight` Parameter - HF names and saving are unchanged (`lm_head.weight`), and with tied
embeddings it stays the very tensor `embed_tokens.weight` - and whose forward calls
`gvm_kernels.fused_logprobs`. Because the kernel runs inside a module's forward, ZeRO-3 gathers the
head weight for it like for any layer, and the N x V logits are never materialised, in training
or in log-prob passes.

`PackedPolicy` is the module handed to DeepSpeed: it owns the HF body (`model`) and the fused head
(`lm_head`), so its parameter names are the HF ones. Its forward embeds the packed ids itself,
which gives the trainer the embedding output (through a `Capture`) for the per-sample embedding
norms and for statistics-only backward passes.

Attention never crosses sequences:
- "packed": one body call over the whole [1, N] stream with position ids restarting per sequence.
  transformers turns that into flash-attention varlen (GPU, flash_attention_2) or, for SDPA, into
  a block-diagonal causal mask (N x N booleans; attention work N^2 instead of sum L_b^2).
- "grouped": sequences of equal length are stacked into [g, L] batches, one body call per length,
  plain causal SDPA; no N x N mask but one call (and ZeRO-3 gather) per distinct length.
"auto" (`resolve_attention`): "packed" on CUDA (flash varlen when installed; few large kernels),
on the CPU "grouped" from hidden size 256 up and "packed" below. Measured train_step (ZeRO-3, fp32,
no norms, 16 samples of 48-176 tokens, ~2000 tokens, median of 3 interleaved rounds, CPU 2 cores,
benchmarks/bench_trainer.py --attention): hidden 64 / 2 layers / V 300: packed 2.04 s, grouped
2.54 s; hidden 256 / 4 layers / V 32k: 3.04 s vs 3.01 s; hidden 512 / 8 layers / V 32k (~50M):
17.6 s vs 13.0 s. The wasted N^2 attention grows with the width while the per-call overhead of
the groups does not.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from gvm_kernels.fused_logprobs import fused_logprobs

from .packing import IGNORE_INDEX

log = logging.getLogger(__name__)


class FusedLMHead(nn.Module):
    """Drop-in for `lm_head`: the same weight, forward = fused log-probs of the targets."""

    def __init__(self, weight: nn.Parameter, temperature: float = 1.0):
        super().__init__()
        self.weight = weight
        self.temperature = temperature

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                sq_grad_norms_out: torch.Tensor | None = None, return_entropy: bool = False):
        """hidden [N, d], targets [N] (IGNORE_INDEX: no loss) -> float32 logp [N] (, entropy [N])."""
        return fused_logprobs(hidden, self.weight, targets, cu_seqlens=cu_seqlens, temperature=self.temperature,
                              ignore_index=IGNORE_INDEX, return_entropy=return_entropy,
                              sq_grad_norms_out=sq_grad_norms_out)


class Capture:
    """Filled by `PackedPolicy.forward`: the embedding output and the final hidden states as the
    graph uses them (ZeRO-3 wraps a module's returned tensors, so these are only reachable here),
    and, when `embed_grad` is asked for, the gradient that reaches the embedding output."""

    def __init__(self, want_embed_grad: bool = False):
        self.want_embed_grad = want_embed_grad
        self.embeds: torch.Tensor | None = None   # [N, d]
        self.hidden: torch.Tensor | None = None   # [N, d]
        self.embed_grad: torch.Tensor | None = None

    def _store_grad(self, grad: torch.Tensor) -> None:
        # Accumulate: with non-reentrant checkpointing the hook still fires once per backward.
        self.embed_grad = grad.detach() if self.embed_grad is None else self.embed_grad + grad.detach()


class PolicyOutput(NamedTuple):
    logp: torch.Tensor                 # [N] float32, 0 where targets == IGNORE_INDEX
    entropy: torch.Tensor | None       # [N] float32 when asked for


class PackedPolicy(nn.Module):
    """HF body + fused head over one packed stream (see module doc)."""

    def __init__(self, causal_lm: nn.Module, attention: str = "packed"):
        super().__init__()
        if attention not in ("packed", "grouped"):
            raise ValueError(f"attention must be 'packed' or 'grouped', got {attention!r}")
        if not isinstance(causal_lm.lm_head, FusedLMHead):
            raise ValueError("replace causal_lm.lm_head with FusedLMHead first (use_fused_head)")
        self.model = causal_lm.model
        self.lm_head = causal_lm.lm_head
        self.attention = attention

    def _body_packed(self, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs_embeds=embeds[None], position_ids=position_ids[None], use_cache=False)
        return out.last_hidden_state[0]

    def _body_grouped(self, embeds: torch.Tensor, seq_bounds: list[int], num_calls: int | None) -> torch.Tensor:
        by_length: dict[int, list[int]] = {}
        for b, (start, end) in enumerate(zip(seq_bounds[:-1], seq_bounds[1:])):
            by_length.setdefault(end - start, []).append(b)
        order, pieces = [], []
        for length, seqs in by_length.items():
            rows = torch.cat([torch.arange(seq_bounds[b], seq_bounds[b] + length) for b in seqs])
            batch = embeds[rows.to(embeds.device)].view(len(seqs), length, -1)
            out = self.model(inputs_embeds=batch, use_cache=False).last_hidden_state  # [g, L, d]
            pieces.append(out.reshape(-1, embeds.shape[1]))
            order.append(rows)
        inverse = torch.empty(embeds.shape[0], dtype=torch.long)
        inverse[torch.cat(order)] = torch.arange(embeds.shape[0])
        hidden = torch.cat(pieces)[inverse.to(embeds.device)]
        # Under ZeRO-3 every body call gathers each layer's weights collectively, so all ranks must
        # make the same number of calls, forward and backward: pad with one-token calls whose
        # output enters the graph times zero.
        for _ in range(len(by_length), num_calls or 0):
            pad = self.model(inputs_embeds=embeds[None, :1], use_cache=False).last_hidden_state
            hidden = hidden + 0.0 * pad.sum()
        return hidden

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, targets: torch.Tensor,
                cu_seqlens: torch.Tensor, seq_bounds: list[int], sq_head_norms: torch.Tensor | None = None,
                return_entropy: bool = False, capture: Capture | None = None,
                num_calls: int | None = None) -> PolicyOutput:
        """Packed [N] ids / positions / targets -> per-token log-probs; `sq_head_norms` [B] float32
        receives the per-sequence squared head-gradient norms in the backward. `num_calls`
        ("grouped" only): make at least this many body calls (see `count_body_calls`)."""
        embeds = self.model.embed_tokens(input_ids)  # [N, d]
        if capture is not None:
            capture.embeds = embeds
            if capture.want_embed_grad and embeds.requires_grad:
                embeds.register_hook(capture._store_grad)
        if self.attention == "packed":
            hidden = self._body_packed(embeds, position_ids)
        else:
            hidden = self._body_grouped(embeds, seq_bounds, num_calls)
        if capture is not None:
            capture.hidden = hidden
        out = self.lm_head(hidden, targets, cu_seqlens, sq_head_norms, return_entropy)
        logp, entropy = out if return_entropy else (out, None)
        return PolicyOutput(logp, entropy)


def count_body_calls(lengths: list[int]) -> int:
    """Body calls of the "grouped" path for sequences of these lengths (an empty micro-batch is
    packed as one one-token sequence)."""
    return max(1, len(set(lengths)))


GROUPED_MIN_HIDDEN = 256  # CPU crossover measured above


def resolve_attention(choice: str, hidden_size: int) -> str:
    """"packed" or "grouped" for the config's choice ("auto", "packed", "grouped")."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() or hidden_size < GROUPED_MIN_HIDDEN:
        return "packed"
    return "grouped"


def check_model_path(path: str, field: str) -> Path:
    """A HF model folder must exist and hold config.json; name the config field otherwise."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"TrainerConfig.{field}={path!r}: no config.json there; point it to a Hugging Face "
                         f"model folder (save_pretrained output)")
    json.loads((folder / "config.json").read_text())  # a broken file fails here, not deep in transformers
    return folder


def attn_implementation() -> str:
    """flash_attention_2 on CUDA when flash-attn is installed (varlen from position ids), else SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_causal_lm(path: str, dtype: torch.dtype, field: str = "model_path") -> nn.Module:
    """The HF causal LM from `path` in `dtype`, on the CPU (DeepSpeed moves and shards it)."""
    check_model_path(path, field)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation())
    if not hasattr(model, "model") or not hasattr(model, "lm_head") or not hasattr(model.model, "embed_tokens"):
        raise ValueError(f"TrainerConfig.{field}={path!r}: expected a decoder-only LM with .model.embed_tokens "
                         f"and .lm_head (Qwen2/Llama layout), got {type(model).__name__}")
    return model


def use_fused_head(model: nn.Module, temperature: float = 1.0) -> FusedLMHead:
    """Replace model.lm_head by a FusedLMHead over the same Parameter (tied stays tied)."""
    head = FusedLMHead(model.lm_head.weight, temperature)
    model.lm_head = head
    return head


def is_tied(model: nn.Module) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


def maybe_apply_liger(model: nn.Module, enabled: bool) -> bool:
    """Liger's RMSNorm / RoPE / SwiGLU kernels on the model instance (CUDA only; its fused
    cross-entropy stays off: the head is ours). Returns whether they were applied."""
    if not enabled or not torch.cuda.is_available():
        return False
    if importlib.util.find_spec("liger_kernel") is None:
        log.info("liger-kernel is not installed; running the model's own RMSNorm/RoPE/SwiGLU")
        return False
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    return True
