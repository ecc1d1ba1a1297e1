"""Every rank's rollout engine used as one: prompts are dealt to the engine replicas, their
completions gathered on every rank, verified (items split over ranks), and new weights pushed
from the trainer.

With W ranks and tensor-parallel size tp there are W / tp replicas; the tp ranks of a replica
get the same prompts (vLLM requires it) and only its first rank's completions are kept. Prompts
are dealt longest-job-first by sample count, so replicas finish about together. Every rank calls
`generate` / `score` / `push_weights` with the same arguments (collective calls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gvm import distributed as gdist
from gvm.prompts import Prompt
from gvm.engines.base import Completion, Engine, SamplingConfig
from gvm.engines.weight_sync import SyncRecord, sync_weights
from gvm.verify import Verifier

@dataclass
class RolloutBatch:
    """Completions and rewards per prompt; counts[i] = len(completions[i]) (may be 0). A sample is
    accepted when its reward is at least `accept_threshold` (the verifier's: RAFT trains on it,
    GVM's p_i counts it)."""
    prompts: list[Prompt]
    completions: list[list[Completion]]
    rewards: list[list[float]] = field(default_factory=list)
    accept_threshold: float = 0.5

    @property
    def counts(self) -> list[int]:
        return [len(c) for c in self.completions]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def accepted_per_prompt(self) -> list[int]:
        return [sum(x >= self.accept_threshold for x in r) for r in self.rewards]

    def accept_rates(self) -> np.ndarray:
        """p_i = accepted / samples per prompt; NaN where a prompt got no sample."""
        return np.array([a / len(r) if r else math.nan for a, r in zip(self.accepted_per_prompt(), self.rewards)],
                        dtype=np.float64)

    def accepted(self) -> int:
        return sum(self.accepted_per_prompt())

    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for row in self.completions for c in row)


def deal(counts: Sequence[int], replicas: int) -> list[list[int]]:
    """Prompt indices per replica: largest count first onto the least-loaded replica (ties to the
    lower replica); prompts with count 0 go nowhere; each replica's list in input order."""
    load = [0] * replicas
    out: list[list[int]] = [[] for _ in range(replicas)]
    for i in sorted(range(len(counts)), key=lambda i: (-counts[i], i)):
        if counts[i] <= 0:
            continue
        r = min(range(replicas), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += counts[i]
    return [sorted(indices) for indices in out]


class Rollouts:
    """See the module docstring."""

    def __init__(self, engine: Engine, verifier: Verifier, *, tensor_parallel_size: int = 1,
                 stop_token_ids: Sequence[int] = ()):
        self.engine = engine
        self.verifier = verifier
        self.rank, self.world = gdist.rank(), gdist.world_size()
        if self.world % tensor_parallel_size:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size} must divide the world size {self.world}")
        self.tp = tensor_parallel_size
        self.replicas = self.world // tensor_parallel_size
        self.replica = self.rank // tensor_parallel_size
        self.stop_token_ids = tuple(stop_token_ids)

    def _with_stops(self, sampling: SamplingConfig) -> SamplingConfig:
        stops = tuple(dict.fromkeys((*sampling.stop_token_ids, *self.stop_token_ids)))
        return SamplingConfig(temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed, stop_token_ids=stops)

    def generate(self, prompts: list[Prompt], counts: Sequence[int] | int, sampling: SamplingConfig) -> RolloutBatch:
        """counts[i] completions of prompts[i] (one int: the same for all), on every rank."""
        counts = [counts] * len(prompts) if isinstance(counts, int) else [int(n) for n in counts]
        if len(counts) != len(prompts) or any(n < 0 for n in counts):
            raise ValueError(f"counts must be one non-negative int per prompt ({len(prompts)}), got {counts}")
        mine = deal(counts, self.replicas)[self.replica]
        produced = self.engine.generate([prompts[i].token_ids for i in mine], [counts[i] for i in mine],
                                        self._with_stops(sampling))
        keep = self.rank % self.tp == 0  # one copy per replica
        parts = gdist.all_gather_objects(list(zip(mine, produced)) if keep else [])
        completions: list[list[Completion]] = [[] for _ in prompts]
        for part in parts:
            for i, row in part:
                completions[i] = row
        return RolloutBatch(prompts, completions)

    def score(self, batch: RolloutBatch) -> RolloutBatch:
        """Fill batch.rewards with the Verifier's rewards (math: 1.0 / 0.0; a user reward: any
        float) and its accept threshold; ranks score interleaved slices of the items and share the
        results."""
        items = [(i, j) for i, row in enumerate(batch.completions) for j in range(len(row))]
        mine = items[self.rank::self.world]
        rewards = self.verifier.score([batch.completions[i][j].text for i, j in mine],
                                      [batch.prompts[i].gold for i, _ in mine],
                                      [batch.prompts[i].row for i, _ in mine])
        batch.accept_threshold = self.verifier.config.accept_threshold
        batch.rewards = [[0.0] * len(row) for row in batch.completions]
        for part in gdist.all_gather_objects(list(zip(mine, rewards))):
            for (i, j), reward in part:
                batch.rewards[i][j] = float(reward)
        return batch

    def run(self, prompts: list[Prompt], counts: Sequence[int] | int, sampling: SamplingConfig) -> RolloutBatch:
        return self.score(self.generate(prompts, counts, sampling))

    def push_weights(self, trainer: Any) -> SyncRecord:
        """The trainer's current weights into the engine (collective under ZeRO-3)."""
        return sync_weights(trainer.engine, self.engine)

    def close(self) -> None:
        self.verifier.close()
        self.engine.close()
