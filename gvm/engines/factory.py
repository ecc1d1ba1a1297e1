"""The one place rollout engines are named and built: the registry, the "auto" choice, configs from
plain dicts (the run config's `rollout.vllm` / `rollout.hf`, the eval CLI's `vllm.*` / `hf.*`), and
the model folder's stop tokens and dtype.

Engines register an import path, not a class, so importing this module never imports vLLM; it is
imported only when chosen. Every vLLM engine the project builds goes through here and sizes its
CPU KV cache in bytes (`VLLMEngineConfig.cpu_kv_cache_bytes`): vLLM's CPU worker budgets a
memory fraction against NUMA node 0 minus the process's own use, which is negative on machines
whose node 0 holds ~10 GiB (docs: GVM.md section 5).
"""
from __future__ import annotations

import importlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gvm.config_build import ConfigError, build
from gvm.engines.base import Engine
from gvm.engines.hf_engine import HFEngineConfig

logger = logging.getLogger(__name__)

# name -> "module:Class"; modules are imported on first use so vLLM stays optional.
ENGINE_REGISTRY: dict[str, str] = {
    "vllm": "gvm.engines.vllm_engine:VLLMEngine",
    "hf": "gvm.engines.hf_engine:HFEngine",
}
AUTO = "auto"  # vLLM when it imports, else transformers
ENGINE_NAMES = (AUTO, *ENGINE_REGISTRY)
AUTO_ORDER = ("vllm", "hf")


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as `name`, imported now (ImportError if its backend is
    not installed)."""
    if name not in ENGINE_REGISTRY:
        raise ValueError(f"unknown engine {name!r}: choose one of {list(ENGINE_NAMES)}")
    module_name, _, class_name = ENGINE_REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def available_engine(name: str) -> str:
    """`name`, or for "auto" the first of AUTO_ORDER whose backend imports (logged)."""
    if name != AUTO:
        engine_class(name)
        return name
    for candidate in AUTO_ORDER:
        try:
            engine_class(candidate)
            return candidate
        except ImportError as error:
            logger.warning("engine %r does not import (%s); trying the next (HFEngine: transformers)",
                           candidate, error)
    raise ImportError(f"no rollout engine imports (tried {list(AUTO_ORDER)})")


@dataclass(frozen=True)
class EngineSpec:
    """A resolved engine choice: the engine's name (never "auto") and its checked config."""
    name: str
    vllm: object | None        # VLLMEngineConfig when name == "vllm"
    hf: HFEngineConfig

    @property
    def tensor_parallel_size(self) -> int:
        return self.vllm.tensor_parallel_size if self.name == "vllm" else 1

    def build(self, model_path: str | Path) -> Engine:
        """The engine on `model_path` (collective across the ranks of a launch for vLLM)."""
        engine = make_engine(self.name, str(model_path), vllm_config=self.vllm, hf_config=self.hf)
        if self.name == "vllm":
            quiet_vllm()  # vLLM sets its log handlers up while the engine starts
        return engine


def resolve_engine(name: str, vllm: dict, hf: dict, *, seed: int, dtype: str | None = None,
                   prefix: str = "") -> EngineSpec:
    """The engine `name` ("auto", "vllm", "hf") with its config built from plain dicts; unknown or
    bad keys raise ConfigError naming `<prefix>vllm.<key>`. Importing vLLM takes seconds, so this
    runs once, before any model is built.

    `dtype` (e.g. the trainer's) is vLLM's default dtype: vLLM's own "auto" turns float32
    checkpoints into bfloat16, whose log-probs then differ from the float32 trainer's."""
    if name not in ENGINE_NAMES:
        raise ConfigError(f"config key {prefix}engine={name!r}: must be one of {ENGINE_NAMES}")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    hf_config = build(HFEngineConfig, {"seed": seed, **hf}, prefix=f"{prefix}hf")
    try:
        chosen = available_engine(name)
    except ImportError as error:
        raise ConfigError(f"config key {prefix}engine={name!r}: it does not import ({error}); "
                          f"use engine=hf") from None
    if chosen != "vllm":
        return EngineSpec(chosen, None, hf_config)
    quiet_vllm()
    config_class = engine_class("vllm").config_class
    defaults = {"seed": seed, **({"dtype": dtype} if dtype else {})}
    return EngineSpec("vllm", build(config_class, {**defaults, **vllm}, prefix=f"{prefix}vllm"), hf_config)


def make_engine(name: str = AUTO, model_path: str | None = None, *, vllm_config=None, hf_config=None) -> Engine:
    """Build an engine by name from config objects (VLLMEngineConfig / HFEngineConfig; None for
    the defaults), so "auto" can carry both."""
    chosen = available_engine(name)
    return engine_class(chosen)(model_path, vllm_config if chosen == "vllm" else hf_config)


# ---------------------------------------------------------------------------------------------
# What the model folder says


def model_stop_ids(model_dir: str | Path) -> list[int]:
    """The EOS ids of the model's generation_config.json (a chat model stops at its end-of-turn
    token), so every engine stops where the model was trained to."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if v is not None]


def context_length(model_dir: str | Path, max_model_len: int | None = None) -> int | None:
    """Tokens the model attends over (prompt + response): config.json's max_position_embeddings (or
    its other names), capped by vLLM's `max_model_len` when one is set; None when neither says."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    value = next((config[k] for k in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length")
                  if isinstance(config.get(k), int)), None)
    if max_model_len is not None:
        value = max_model_len if value is None else min(value, max_model_len)
    return value


def checkpoint_dtype(model_dir: str | Path) -> str | None:
    """The dtype the checkpoint was saved in (config.json), for vLLM to keep it."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in ("float32", "bfloat16", "float16") else None


# ---------------------------------------------------------------------------------------------
# vLLM's log noise


class _DropKnownNoise(logging.Filter):
    """vLLM warns on every in-place weight reload that RotaryEmbedding (which has no weights, only
    buffers it recomputes) 'failed to load weights', and on CPU that it skips set_num_threads
    (VLLMEngine restores the trainer's threads itself); both are expected here."""
    PATTERNS = ("RotaryEmbedding: Failed to load weights", "doesn't allow to use `torch.set_num_threads`")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p in message for p in self.PATTERNS)


def quiet_vllm() -> None:
    """Filter vLLM's handlers (its child loggers log through them) once vLLM has configured them."""
    for handler in logging.getLogger("vllm").handlers:
        if not any(isinstance(f, _DropKnownNoise) for f in handler.filters):
            handler.addFilter(_DropKnownNoise())
