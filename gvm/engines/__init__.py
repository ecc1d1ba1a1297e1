"""Rollout engines: vLLM (colocated, in-process) and a transformers fallback behind one
interface, weight sync from a (ZeRO-3) training model, and engine/trainer mismatch correction.

vLLM is imported only when a VLLMEngine is asked for (`make_engine("vllm" | "auto")`,
`resolve_engine`, or the attribute below), so this package works without it. The rollouts of a
training run (engines on every rank used as one) are `gvm.rollouts`.
"""
from gvm.engines.base import Completion, Engine, SamplingConfig, normalize_counts
from gvm.engines.factory import ENGINE_NAMES, ENGINE_REGISTRY, EngineSpec, engine_class, make_engine, resolve_engine
from gvm.engines.hf_engine import HFEngine, HFEngineConfig
from gvm.engines.mismatch import MismatchConfig, mismatch_weights, pad_logprobs
from gvm.engines.weight_sync import SyncRecord, hf_name, iter_gathered_weights, plan_buckets, sync_weights

_LAZY = {"VLLMEngine", "VLLMEngineConfig"}


def __getattr__(name: str):
    if name in _LAZY:
        from gvm.engines import vllm_engine

        return getattr(vllm_engine, name)
    raise AttributeError(f"module 'gvm.engines' has no attribute {name!r}")


__all__ = [
    "ENGINE_NAMES", "ENGINE_REGISTRY", "EngineSpec", "Completion", "Engine", "SamplingConfig", "engine_class",
    "make_engine", "resolve_engine",
    "normalize_counts", "HFEngine", "HFEngineConfig", "MismatchConfig", "mismatch_weights",
    "pad_logprobs", "SyncRecord", "hf_name", "iter_gathered_weights", "plan_buckets", "sync_weights",
    "VLLMEngine", "VLLMEngineConfig",
]
