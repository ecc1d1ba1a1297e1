"""The steps of one training iteration between generating and logging: verified rollouts become
training samples, training on them (with pi_old and the engine/trainer mismatch weights), the
pilot's per-prompt gradient scale G_i, and the allocation call with its fallback.

Every function here is collective: every rank calls it with the same arguments.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from gvm.algorithms import Algorithm, advantages_with_baseline
from gvm.allocation import NoEligiblePrompts, allocate, allocate_uniform
from gvm.engines.mismatch import MismatchConfig, mismatch_weights, pad_logprobs
from gvm.packing import Sample
from gvm.rollouts import RolloutBatch

log = logging.getLogger(__name__)

# Keys of a train_step result that the metrics row keeps.
TRAIN_SUMMARY_KEYS = ("loss", "grad_norm", "lr", "clip_frac", "ratio_mean", "approx_kl", "kl_ref", "num_samples",
                      "num_tokens", "grad_norms_exact_frac", "time_s", "step")


@dataclass
class TrainData:
    """The samples of a RolloutBatch that enter training, with what each came from."""
    samples: list[Sample]
    completions: list           # the engine's Completion of each (its log-probs)
    owners: list[int]           # prompt index of each
    rewards: list[float]        # verifier reward of each
    weights: list[float] = dataclasses.field(default_factory=list)  # loss weight folded into each advantage


def allocation_weights(owners, counts) -> np.ndarray:
    """Loss weights n_bar / n_i per trained sample: n_i the samples its prompt drew in the batch,
    n_bar their mean over the batch's prompts.

    The trainer's token-mean loss sums every trained sample's gradient, so a prompt given n_i
    samples weighs n_i times as much: an uneven allocation changes which gradient the step
    estimates, not only its noise. With these weights every prompt weighs what it would under an
    even split of the same samples (n_i draws of weight n_bar / n_i), and the token count that
    divides the loss is the same samples' as before (about uniform's at the same budget), so the
    step keeps uniform's scale. Even counts give all ones."""
    owners, counts = np.asarray(owners, dtype=np.int64), np.asarray(counts, dtype=np.float64)
    if owners.size == 0:
        return np.ones(0)
    if np.any(counts[owners] < 1):
        raise ValueError("every trained sample's prompt must have drawn at least one sample")
    return counts.mean() / counts[owners]


def make_samples(batch: RolloutBatch, algorithm: Algorithm, tag: str,
                 baseline: RolloutBatch | None = None, *, reweight: bool = False) -> TrainData:
    """Training samples of a verified RolloutBatch. Advantages per the algorithm, with each
    prompt's `baseline` rewards (the pilot's) joining its group statistics; only the samples the
    algorithm selects (RAFT: accepted ones) and that hold at least one token are kept.
    `reweight`: each advantage times `allocation_weights` (positive, so the clipped surrogate
    scales the same way), for samplers that give prompts unequal counts."""
    data = TrainData([], [], [], [])
    flat = [(i, j) for i, row in enumerate(batch.completions) for j in range(len(row))]
    if not flat:
        return data
    rewards = np.array([batch.rewards[i][j] for i, j in flat])
    groups = np.array([i for i, _ in flat])
    base_rewards = base_groups = None
    if baseline is not None:
        base = [(i, r) for i, row in enumerate(baseline.rewards) for r in row]
        base_rewards, base_groups = np.array([r for _, r in base]), np.array([i for i, _ in base])
    threshold = batch.accept_threshold
    advantages = advantages_with_baseline(algorithm, rewards, groups, base_rewards, base_groups, threshold)
    for (i, j), reward, advantage, kept in zip(flat, rewards, advantages, algorithm.select(rewards, threshold)):
        completion = batch.completions[i][j]
        if not kept or not completion.token_ids:
            continue
        data.samples.append(Sample(sample_id=f"{tag}/{i}/{j}", prompt_ids=batch.prompts[i].token_ids,
                                   response_ids=completion.token_ids, advantage=float(advantage)))
        data.completions.append(completion)
        data.owners.append(i)
        data.rewards.append(float(reward))
    data.weights = [1.0] * len(data.samples)
    if reweight and data.samples:
        weights = allocation_weights(data.owners, [len(row) for row in batch.completions])
        data.weights = weights.tolist()
        data.samples = [dataclasses.replace(s, advantage=s.advantage * w) for s, w in zip(data.samples, data.weights)]
    return data


def with_old_logprobs(trainer, samples: list[Sample], completions: list,
                      mismatch: MismatchConfig) -> tuple[list[Sample], dict]:
    """Samples with the trainer's log-probs as pi_old (computed once, so epochs > 1 keep them) and
    the engine/trainer mismatch weights folded into per-token advantages (A * w_t; w > 0, so the
    clipped surrogate scales the same way)."""
    old = trainer.logprobs(samples)
    old_padded, mask = pad_logprobs([o.tolist() for o in old])
    engine_padded, _ = pad_logprobs([c.logprobs for c in completions])
    weights, metrics = mismatch_weights(old_padded, engine_padded, mask, mismatch)
    out = []
    for b, (sample, old_logp) in enumerate(zip(samples, old)):
        n = len(sample.response_ids)
        advantage = sample.advantage
        if mismatch.mode != "none":
            advantage = (torch.full((n,), float(sample.advantage)) * weights[b, :n]).tolist()
        out.append(dataclasses.replace(sample, old_logp=old_logp, advantage=advantage))
    return out, metrics


def train_on(trainer, data: TrainData, algorithm: Algorithm, *, epochs: int, mismatch: MismatchConfig,
             rng_key: list[int]) -> dict:
    """`epochs` passes of trainer.train_step over the samples (shuffled alike on every rank).
    Returns the last step's scalars and the per-sample gradient norms of the first pass (the
    first mini-batch of an iteration has ratio 1: its norms are exact)."""
    samples = data.samples
    if not samples:  # nothing with a gradient this iteration: no step, the count stays in the row
        return {"num_samples": 0, "step": trainer.step, "grad_norms": {}}
    result: dict = {}
    if algorithm.uses_old_logp:
        samples, result["mismatch"] = with_old_logprobs(trainer, samples, data.completions, mismatch)
    rng = np.random.default_rng(rng_key)
    norms, exact = None, None
    for _ in range(epochs):
        metrics = trainer.train_step([samples[i] for i in rng.permutation(len(samples))], algorithm.loss)
        if norms is None:
            norms, exact = metrics["grad_norms"], metrics["grad_norms_exact"]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    result.update(scalars)
    result["grad_norms"] = norms
    result["grad_norms_exact_frac"] = float(np.mean(list(exact.values()))) if exact else math.nan
    return result


def unweighted_norms(norms: dict, data: TrainData) -> list[float | None]:
    """Each trained sample's gradient norm without its loss weight (G_i describes the prompt, not
    the weight the allocation gave it; None where the backward measured none)."""
    out = []
    for sample, weight in zip(data.samples, data.weights):
        value = norms.get(sample.sample_id)
        out.append(None if value is None else value / weight)
    return out


def train_summary(metrics: dict) -> dict:
    """The scalars of a `train_on` result that go into the metrics row."""
    out = {k: metrics[k] for k in TRAIN_SUMMARY_KEYS if k in metrics}
    if "mismatch" in metrics:
        out["mismatch_mean_abs_log_ratio"] = metrics["mismatch"]["mismatch/mean_abs_log_ratio"]
    return out


def pilot_grad_norms(trainer, pilot: TrainData, trained_norms: dict, num_prompts: int) -> np.ndarray:
    """G_i per prompt: mean norm over its accepted pilot samples (NaN where none was accepted).
    Norms come from the training backward where the sample was trained with a non-zero
    advantage; the others (not trained on, or advantage 0) from trainer.grad_norms."""
    accepted = [(s, i) for s, i, r in zip(pilot.samples, pilot.owners, pilot.rewards) if r > 0]
    norms = {s.sample_id: trained_norms.get(s.sample_id, math.nan) for s, _ in accepted}
    missing = [s for s, _ in accepted if math.isnan(norms[s.sample_id])]
    if missing:
        norms.update(trainer.grad_norms(missing))
    sums, counts = np.zeros(num_prompts), np.zeros(num_prompts)
    for s, i in accepted:
        sums[i] += norms[s.sample_id]
        counts[i] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)


def allocate_counts(grad, accept, budget: int, sampler, *, objective: str = "raft",
                    held=None) -> tuple[np.ndarray, str]:
    """n_i from gvm.allocation.allocate with the sampler config's rule settings. Only when no prompt
    can take the budget (all unsolved under zero_accept="skip", or all filtered, or those left all
    capped below it) does the iteration fall back to an even split, and say so; any other error (a
    NaN G_i, a bad bound) stops the run."""
    try:
        return allocate(grad, accept, budget, **sampler.allocate_kwargs(), objective=objective, held=held), "gvm"
    except NoEligiblePrompts as error:
        log.warning("allocation fell back to an even split: %s", error)
        return allocate_uniform(len(accept), budget), "uniform-fallback"


def carries_gradient(sample: Sample) -> bool:
    """A non-zero advantage on some token (RAFT: accepted; GRPO: a group whose rewards differ)."""
    return bool(np.any(np.asarray(sample.advantage) != 0))


def useful_samples(data: TrainData) -> int:
    """Training samples that carry gradient (`carries_gradient`)."""
    return sum(1 for s in data.samples if carries_gradient(s))
