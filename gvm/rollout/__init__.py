"""Rollout engines: vLLM (colocated, in-process) and a transformers fallback behind one
interface, weight sync from a (ZeRO-3) training model, and engine/trainer mismatch correction.

vLLM is imported only when a VLLMEngine is asked for (`make_engine("vllm" | "auto")` or the
attribute below), so this package works without it.
"""
from gvm.rollout.base import (
    ENGINE_REGISTRY,
    Completion,
    Engine,
    SamplingConfig,
    engine_class,
    make_engine,
    normalize_counts,
)
from gvm.rollout.hf_engine import HFEngine, HFEngineConfig
from gvm.rollout.mismatch import MismatchConfig, mismatch_weights, pad_logprobs
from gvm.rollout.weight_sync import SyncRecord, hf_name, iter_gathered_weights, plan_buckets, sync_weights

_LAZY = {"VLLMEngine", "VLLMEngineConfig"}


def __getattr__(name: str):
    if name in _LAZY:
        from gvm.rollout import vllm_engine

        return getattr(vllm_engine, name)
    raise AttributeError(f"module 'gvm.rollout' has no attribute {name!r}")


__all__ = [
    "ENGINE_REGISTRY", "Completion", "Engine", "SamplingConfig", "engine_class", "make_engine",
    "normalize_counts", "HFEngine", "HFEngineConfig", "MismatchConfig", "mismatch_weights",
    "pad_logprobs", "SyncRecord", "hf_name", "iter_gathered_weights", "plan_buckets", "sync_weights",
    "VLLMEngine", "VLLMEngineConfig",
]
