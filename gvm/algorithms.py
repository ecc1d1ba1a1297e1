"""RAFT, RAFT++ and GRPO as registered settings: how rewards become advantages, which samples are
trained on, and which loss the trainer applies. The training loop looks the name up here and
never branches on it.

    raft    SFT on accepted samples (reward >= verifier.accept_threshold): A = 1; rejected ones
            carry no gradient and are left out (they would only dilute the token mean).
    raft++  the same samples and advantages, with the importance ratio pi/pi_old and PPO clipping.
    grpo    A = (r - mean_group) / (std_group + eps) over each prompt's samples, every sample
            trained on (negative advantages push wrong answers down), PPO clipping; the KL
            penalty to the reference model is `trainer.kl_coef`. A group of one sample, or whose
            rewards are all equal, has advantage 0 (gvm_kernels.group_advantages).

With GVM a prompt's samples form its group whatever their number; with `reuse_pilot_samples`
the pilot's rewards join the baseline of the prompt's stage-2 group (`baseline_rewards`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gvm_kernels.policy_loss import group_advantages

# rewards [S], group ids [S], accept threshold -> advantages [S] (float64)
AdvantageFn = Callable[[np.ndarray, np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class Algorithm:
    name: str
    loss: str                    # the `kind` of gvm_kernels.policy_loss / PolicyTrainer.train_step
    advantages: AdvantageFn
    accepted_only: bool          # train on accepted samples only (RAFT's rejection sampling)
    uses_old_logp: bool          # the loss has an importance ratio: old log-probs are needed
    objective: str               # the allocation objective of its estimator (gvm.allocation.OBJECTIVES)
    n_per_prompt: int            # sampler.n_per_prompt's default: the samples per prompt that reached uniform-at-8's
                                 # accuracy on the fewest samples in bench_convergence.py (CPU, 5 seeds, 2026-12-01)

    def select(self, rewards: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Boolean mask [S] of the samples that enter training (RAFT: reward >= threshold)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        return rewards >= threshold if self.accepted_only else np.ones(rewards.shape, dtype=bool)

    @property
    def needs_both_outcomes(self) -> bool:
        """A prompt's samples carry gradient only when their rewards differ (group baselines)."""
        return self.objective == "grpo"

    def group_carries_gradient(self, rewards, threshold: float = 0.5) -> bool:
        """Whether one prompt's samples give any gradient: RAFT, an accepted one; GRPO, rewards that
        differ (equal rewards give every sample advantage 0)."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if rewards.size == 0:
            return False
        if self.needs_both_outcomes:
            return bool(rewards.max() > rewards.min())
        return bool((rewards >= threshold).any())


def _accepted_as_advantage(rewards: np.ndarray, group_ids: np.ndarray, threshold: float) -> np.ndarray:
    """RAFT: 1 for an accepted sample (reward >= threshold), 0 otherwise: supervised on what passed."""
    return (np.asarray(rewards, dtype=np.float64) >= threshold).astype(np.float64)


def _group_normalised(rewards: np.ndarray, group_ids: np.ndarray, threshold: float) -> np.ndarray:
    """GRPO: (r - group mean) / (group std + eps) of the raw rewards; 0 for singleton or all-equal
    groups (the threshold plays no part)."""
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64))
    g = torch.as_tensor(np.asarray(group_ids, dtype=np.int64))
    return group_advantages(r, g).numpy()


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    if algorithm.name in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


register(Algorithm("raft", loss="raft", advantages=_accepted_as_advantage, accepted_only=True, uses_old_logp=False,
                   objective="raft", n_per_prompt=2))       # not measured apart: RAFT++'s samples, without the ratio
register(Algorithm("raft++", loss="raft++", advantages=_accepted_as_advantage, accepted_only=True, uses_old_logp=True,
                   objective="raft", n_per_prompt=2))       # screened: 2.01x uniform at 8; at 4: 1.46x
register(Algorithm("grpo", loss="grpo", advantages=_group_normalised, accepted_only=False, uses_old_logp=True,
                   objective="grpo", n_per_prompt=4))       # screened: 1.30x; at 3: 0.95x, at 2 it loses


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm={name!r}: must be one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def advantages_with_baseline(algorithm: Algorithm, rewards: np.ndarray, group_ids: np.ndarray,
                             baseline_rewards: np.ndarray | None = None,
                             baseline_group_ids: np.ndarray | None = None, threshold: float = 0.5) -> np.ndarray:
    """Advantages of `rewards` [S] where each group's statistics also count `baseline_rewards`
    (earlier samples of the same prompts, e.g. the pilot) that are not trained on here."""
    if baseline_rewards is None or len(baseline_rewards) == 0:
        return algorithm.advantages(rewards, group_ids, threshold)
    all_rewards = np.concatenate([np.asarray(rewards, np.float64), np.asarray(baseline_rewards, np.float64)])
    all_groups = np.concatenate([np.asarray(group_ids, np.int64), np.asarray(baseline_group_ids, np.int64)])
    return algorithm.advantages(all_rewards, all_groups, threshold)[: len(rewards)]
