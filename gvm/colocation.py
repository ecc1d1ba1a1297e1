"""The trainer and the rollout engine share the accelerator: the loop hands the memory from one to
the other, and nothing else moves it.

    with swap.generation():   # the trainer offloads (optimizer state, gradients, weights); the
        ...generate...        # engine is awake and holds the trainer's latest weights
    with swap.training():     # the engine sleeps (weights and KV cache released); the trainer
        ...train, log-probs, gradient statistics...   # reloads its states
    swap.sync()               # the trainer's weights into the engine: wake the engine's weights,
                              # push, reset the prefix cache, wake the KV cache (Engine.update_weights)

`generation()` syncs first when the trainer stepped since the last sync or the engine's sleep
dropped its weights, and otherwise only wakes the engine. Where offloading or sleeping is not
supported (the CPU, torch's AdamW, ZeRO-0) the calls are logged no-ops, but the states still
count as moved, so the order of the phases is the same everywhere (tests/test_colocation.py runs
the real loop and fails if a generation runs while the trainer holds its states, or a trainer
computation while the engine is awake).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from gvm.failpoints import failpoint
from gvm.rollouts import Rollouts


class Colocation:
    """See the module docstring. `trainer` is a PolicyTrainer, `rollouts` the run's Rollouts."""

    def __init__(self, trainer, rollouts: Rollouts, timer=None) -> None:
        self.trainer, self.rollouts = trainer, rollouts
        self.timer = timer                     # a PhaseTimer: the syncs it makes count as "sync"
        self._synced_step = trainer.step       # the engine was built from the trainer's weights

    @property
    def engine(self):
        return self.rollouts.engine

    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        if self.trainer.step != self._synced_step or self.engine.needs_weights:
            self.sync()
        elif self.engine.asleep:
            self.engine.wake()
        if self.trainer.holds_states:
            self.trainer.offload()
        yield

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        self.engine.sleep()
        self.trainer.reload()
        yield

    def sync(self) -> None:
        """Push the trainer's current weights into the engine (wakes it). Collective."""
        with self.timer("sync") if self.timer is not None else contextlib.nullcontext():
            self.trainer.reload()            # ZeRO-3 gathers the weights from the trainer's shards
            failpoint("sync")
            self.rollouts.push_weights(self.trainer)
        self._synced_step = self.trainer.step
