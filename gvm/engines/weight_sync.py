"""Stream a training model's weights into a rollout engine, one gathered bucket at a time.

Under ZeRO-3 every rank holds a 1/world slice of each parameter (`numel() == 0` outside a
gather; the full size is `ds_numel`). We group parameters into buckets of at most
`bucket_bytes` (a parameter larger than that is a bucket of its own), gather one bucket with
`deepspeed.zero.GatheredParameters` (a collective: every rank runs the same buckets in the
same order), yield its tensors under Hugging Face names, and release it before gathering the
next. The engine consumes the stream lazily, so at most one bucket of full weights exists at a
time besides the engine's own copy. ZeRO 0-2 models and plain nn.Modules take the same path
with no gather.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

import torch
from torch import nn

from gvm.failpoints import failpoint

if TYPE_CHECKING:
    from gvm.engines.base import Engine

DEFAULT_BUCKET_BYTES = 512 << 20  # a few layers of a 1.5B model in bf16; one all-gather each

# Module names wrappers insert into parameter names: DeepSpeed / DDP ("module", leading only),
# torch.compile, FSDP and activation checkpointing (anywhere).
_LEADING_WRAPPERS = ("module",)
_ANYWHERE_WRAPPERS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def hf_name(name: str) -> str:
    """The Hugging Face parameter name inside wrapper prefixes:
    "module._orig_mod.model.layers.0.mlp.up_proj.weight" -> "model.layers.0.mlp.up_proj.weight"."""
    parts = name.split(".")
    while parts and parts[0] in _LEADING_WRAPPERS:
        parts = parts[1:]
    return ".".join(p for p in parts if p not in _ANYWHERE_WRAPPERS)


def param_nbytes(param: torch.Tensor) -> int:
    """Full size in bytes, also for an ungathered ZeRO-3 parameter (whose numel() is 0)."""
    numel = getattr(param, "ds_numel", None)
    return (param.numel() if numel is None else int(numel)) * param.element_size()


def plan_buckets(
    named_params: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups whose total size stays within bucket_bytes; a parameter larger than
    bucket_bytes forms a bucket alone. Order is kept (every rank must gather alike)."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[tuple[str, torch.Tensor]]] = []
    current: list[tuple[str, torch.Tensor]] = []
    current_bytes = 0
    for name, param in named_params:
        size = param_nbytes(param)
        if current and current_bytes + size > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current.append((name, param))
        current_bytes += size
    if current:
        buckets.append(current)
    return buckets


@dataclass
class SyncRecord:
    """What a sync gathered: per-bucket bytes and the most ever gathered at once."""

    bucket_bytes: int
    buckets: list[int] = field(default_factory=list)  # bytes of each gathered bucket, in order
    largest_param_bytes: int = 0
    gathered_now: int = 0
    max_gathered_at_once: int = 0
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(self.buckets)

    def enter(self, nbytes: int) -> None:
        self.gathered_now += nbytes
        self.max_gathered_at_once = max(self.max_gathered_at_once, self.gathered_now)
        self.buckets.append(nbytes)

    def exit(self, nbytes: int) -> None:
        self.gathered_now -= nbytes


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def _gathered(params: list[torch.Tensor]) -> contextlib.AbstractContextManager:
    if not any(_is_zero3(p) for p in params):
        return contextlib.nullcontext()
    import deepspeed  # only ZeRO-3 models get here

    # modifier_rank=None: read-only; DeepSpeed repartitions (frees) the full tensors on exit.
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def iter_gathered_weights(
    model: nn.Module,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    record: SyncRecord | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (hf_name, full tensor) for every parameter of `model` (an nn.Module or a
    DeepSpeed engine), gathering one bucket at a time. A yielded tensor is valid until the
    consumer asks for the first tensor of the next bucket; a consumer that keeps a reference
    longer (vLLM buffers the q part of a fused qkv layer until k and v arrive) keeps that
    memory alive, as DeepSpeed only drops its own reference on release."""
    named = list(model.named_parameters())  # tied weights appear once
    if record is not None:
        record.largest_param_bytes = max((param_nbytes(p) for _, p in named), default=0)
    for bucket in plan_buckets(named, bucket_bytes):
        nbytes = sum(param_nbytes(p) for _, p in bucket)
        with _gathered([p for _, p in bucket]):
            if record is not None:
                record.enter(nbytes)
            try:
                for name, param in bucket:
                    yield hf_name(name), param.detach()
            finally:
                if record is not None:
                    record.exit(nbytes)


def _failpoint_after_first(weights: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights, with the "sync:engine" failpoint once the engine has taken the first tensor."""
    for i, item in enumerate(weights):
        if i == 1:
            failpoint("sync:engine")
        yield item


def sync_weights(
    model: nn.Module, engine: "Engine", *, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> SyncRecord:
    """Push `model`'s current weights into `engine` bucket by bucket; collective under ZeRO-3
    (call it on every rank). Returns what was gathered and how long it took."""
    record = SyncRecord(bucket_bytes=bucket_bytes)
    start = time.perf_counter()
    engine.update_weights(_failpoint_after_first(iter_gathered_weights(model, bucket_bytes=bucket_bytes, record=record)))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    record.seconds = time.perf_counter() - start
    return record
