"""Runs the real training loop (gvm.train.main) with a watch on who holds the accelerator: every
engine generation must find the trainer offloaded, every trainer computation must find the engine
asleep (on the CPU both are logged no-ops that still count). Prints one JSON line with what it saw.

    python tests/_phase_worker.py <run_root> <overrides...>
"""
import functools
import json
import sys

from gvm.config import load_config
from gvm.distributed import exit_after_success, shutdown
from gvm.engines.hf_engine import HFEngine
from gvm.trainer import PolicyTrainer

ENGINES = [HFEngine]
try:
    from gvm.engines.vllm_engine import VLLMEngine

    ENGINES.append(VLLMEngine)
except ImportError:  # vLLM not installed: the HF engine is watched alone
    pass

TRAINER_COMPUTE = ("train_step", "logprobs", "ref_logprobs", "grad_norms")
seen = {"generate": 0, "compute": {}, "violations": []}
current = {"trainer": None, "engine": None}


def _watch_init(cls, role):
    original = cls.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        current[role] = self
    cls.__init__ = init


def _watch_generate(cls):
    original = cls.generate

    @functools.wraps(original)
    def generate(self, *args, **kwargs):
        trainer = current["trainer"]
        if trainer is not None and trainer.holds_states:
            seen["violations"].append("generate while the trainer holds its states")
        seen["generate"] += 1
        return original(self, *args, **kwargs)
    cls.generate = generate


def _watch_compute(name):
    original = getattr(PolicyTrainer, name)

    @functools.wraps(original)
    def compute(self, *args, **kwargs):
        engine = current["engine"]
        if engine is not None and self is current["trainer"] and not engine.asleep:
            seen["violations"].append(f"{name} while the engine is awake")
        if engine is not None and self is current["trainer"]:
            seen["compute"][name] = seen["compute"].get(name, 0) + 1
        return original(self, *args, **kwargs)
    setattr(PolicyTrainer, name, compute)


_watch_init(PolicyTrainer, "trainer")
for engine_class in ENGINES:
    _watch_init(engine_class, "engine")
    _watch_generate(engine_class)
for compute_name in TRAINER_COMPUTE:
    _watch_compute(compute_name)

if __name__ == "__main__":
    from gvm.train import main

    try:
        summary = main(load_config(None, sys.argv[1:]))
    except BaseException:
        shutdown()
        raise
    print("PHASES " + json.dumps({**seen, "samples": summary["samples_generated"]}))
    exit_after_success()
