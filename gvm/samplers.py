"""How each iteration spends its generation budget over prompts: the samplers, one per
`sampler.kind`, each returning the samples to train on and counting every sample it generated.

    uniform    n samples for each of the iteration's prompts (the RAFT / GRPO baselines).
    dapo       DAPO's dynamic sampling (arXiv 2503.14476; verl's recipe, OpenRLHF's
               --dynamic_filtering): n samples per drawn prompt, the groups that carry no gradient
               dropped (RAFT: nothing accepted; GRPO: rewards all equal), more prompts drawn until
               the training batch holds prompts_per_iteration groups.
    gvm        the paper's two stages: a pilot of N' per prompt measures p_i and G_i, allocate()
               shares the budget N, stage 2 samples n_i per prompt. The pilot is thrown away
               (reuse_pilot_samples=false, the paper) or joins the training batch (default).
    adaptive   ours: p_i is each prompt's posterior over all its samples (earlier visits decayed),
               prompts with enough history skip the pilot, and the budget is spent in rounds: each
               round re-estimates p_i, drops prompts whose samples would carry no gradient, and
               allocates by the algorithm's objective on top of what each prompt holds. G_i comes
               from the training backward of earlier visits (no extra gradient pass).
    screened   ours, at breadth: n samples for each prompt whose history gives its group a fair
               chance of carrying gradient; the others are skipped before anything is generated
               and more prompts are drawn in their place (DAPO's filter, applied from each prompt's
               posterior instead of from samples already paid for). No pilot, no G_i.

Every sampler makes the same training batch shape for the loop: one call of the trainer per
iteration (`pilot_step` trains gvm's pilot in a step of its own first, as before 2026-12).
"""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from gvm.allocation import NoEligiblePrompts, allocate, allocate_uniform
from gvm.config_build import ConfigError
from gvm.failpoints import failpoint
from gvm.prompts import Prompt, PromptStream
from gvm.rollouts import RolloutBatch
from gvm.stages import allocate_counts, make_samples, pilot_grad_norms, train_on, train_summary
from gvm.stats import PromptStats, pilot_sizes, posterior_mean, prob_kept, prob_useful, round_budgets, shows_kept

log = logging.getLogger(__name__)


@dataclass
class SamplerContext:
    """The parts of the run a sampler uses (gvm.run_setup builds it)."""
    cfg: object                  # RunConfig
    algorithm: object            # gvm.algorithms.Algorithm
    rollouts: object             # gvm.rollouts.Rollouts
    swap: object                 # gvm.colocation.Colocation
    timer: object                # gvm.run_log.PhaseTimer
    trainer: object              # gvm.trainer.PolicyTrainer
    stream: PromptStream
    stats: PromptStats


@dataclass
class Collected:
    """One iteration's samples: what enters training, what it cost, and what the log records."""
    batch: RolloutBatch          # the samples to train on, per prompt (verified)
    generated: int               # every sample generated this iteration (pilot, dropped groups included)
    counts_used: np.ndarray      # samples per prompt of `batch` that enter the estimate
    estimates: tuple | None      # (p_i, G_i) the sampler worked with, for R_pred (None: none)
    audit: dict                  # the allocations.jsonl record
    row: dict = field(default_factory=dict)   # metrics of the iteration's row
    baseline: RolloutBatch | None = None      # rewards that join group statistics but are not trained on
    useful_trained: int = 0      # gradient-carrying samples the sampler trained on itself (pilot_step)


class Sampler(ABC):
    """A sampler of the registry (see the module docstring)."""

    name = ""

    def __init__(self, context: SamplerContext) -> None:
        self.ctx = context
        self.cfg = context.cfg.sampler
        self.size = context.cfg.data.prompts_per_iteration

    @abstractmethod
    def collect(self, iteration: int) -> Collected:
        """This iteration's prompts, their samples (generated and verified) and what they cost."""

    @property
    def objective(self) -> str:
        return self.cfg.objective_for(self.ctx.cfg.algorithm)

    def generate(self, prompts: list[Prompt], counts, phase: str) -> RolloutBatch:
        """counts[i] samples of prompts[i], verified; the engine holds the accelerator meanwhile."""
        ctx = self.ctx
        with ctx.swap.generation(), ctx.timer(phase):
            batch = ctx.rollouts.generate(prompts, counts, ctx.cfg.rollout.sampling)
        failpoint("generate")
        with ctx.timer("verify"):
            ctx.rollouts.score(batch)
        failpoint("verify")
        return batch

    def observe_training(self, keys: list[int], owners: list[int], norms: list[float]) -> None:
        """The trained samples' gradient norms (by owning prompt); samplers that keep G_i from
        training backwards record them."""


SAMPLERS: dict[str, type[Sampler]] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    SAMPLERS[cls.name] = cls
    return cls


def make_sampler(context: SamplerContext) -> Sampler:
    return SAMPLERS[context.cfg.sampler.kind](context)


def merge(first: RolloutBatch, second: RolloutBatch) -> RolloutBatch:
    """The samples of two verified batches over the same prompts, prompt by prompt."""
    return RolloutBatch(first.prompts, [a + b for a, b in zip(first.completions, second.completions)],
                        [a + b for a, b in zip(first.rewards, second.rewards)], second.accept_threshold)


def visit_history(stats: PromptStats, keys: list[int], iteration: int, decay: float):
    """A visit of each prompt (its earlier counts fade by `decay`), then its records and decayed
    (successes, failures) as arrays: the posterior the adaptive and screened samplers read."""
    stats.visit(keys, iteration, decay)
    records = [stats.record(k) for k in keys]
    return (records, np.array([r.successes for r in records], dtype=np.float64),
            np.array([r.failures for r in records], dtype=np.float64))


def outcome_counts(batch: RolloutBatch) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, rejected) samples per prompt of a verified batch (accepted: reward at least the
    verifier's accept threshold, as RAFT selects them)."""
    accepted = np.array(batch.accepted_per_prompt(), dtype=np.float64)
    return accepted, np.array([len(row) for row in batch.rewards], dtype=np.float64) - accepted


# ---------------------------------------------------------------------------------------------


@register
class UniformSampler(Sampler):
    name = "uniform"

    def collect(self, iteration: int) -> Collected:
        prompts = self.ctx.stream.take(self.size)
        counts = allocate_uniform(len(prompts), self.cfg.stage2_budget(self.size))
        batch = self.generate(prompts, counts, "rollout")
        audit = {"keys": [p.key for p in prompts], "budget": int(counts.sum()), "n": counts}
        return Collected(batch, batch.num_samples, counts, None, audit)


@register
class DapoSampler(Sampler):
    name = "dapo"

    def collect(self, iteration: int) -> Collected:
        algorithm, n = self.ctx.algorithm, self.cfg.n_per_prompt
        kept: list[tuple[Prompt, list, list]] = []
        generated, drawn, rounds = 0, [], 0
        while len(kept) < self.size and rounds < self.cfg.dapo_max_rounds:
            prompts = self.ctx.stream.take(self.size)
            batch = self.generate(prompts, n, "rollout")
            generated += batch.num_samples
            drawn += [p.key for p in prompts]
            kept += [g for g in _groups(batch) if algorithm.group_carries_gradient(g[2], batch.accept_threshold)]
            rounds += 1
        kept = kept[: self.size]     # the training batch is full; the rest was generated and is counted
        batch = _batch_of(kept, batch.accept_threshold)
        counts = np.array(batch.counts, dtype=np.int64)
        audit = {"keys": [p.key for p in batch.prompts], "n": counts, "drawn": drawn, "rounds": rounds}
        return Collected(batch, generated, counts, None, audit,
                         row={"prompts_drawn": len(drawn), "rounds": rounds})


@register
class GVMSampler(Sampler):
    """The paper's Algorithm 1, stages 1 and 2."""
    name = "gvm"

    def collect(self, iteration: int) -> Collected:
        ctx, cfg = self.ctx, self.cfg
        prompts = ctx.stream.take(self.size)
        keys = [p.key for p in prompts]
        # Stage 1: N' samples per prompt measure the acceptance rate p_i ...
        pilot = self.generate(prompts, cfg.pilot_n, "pilot_rollout")
        pilot_data = make_samples(pilot, ctx.algorithm, f"{iteration}/pilot")
        # ... and their gradients the scale G_i (from training on them first with pilot_step).
        trained_norms, row, useful = {}, {}, 0
        with ctx.swap.training():
            if cfg.pilot_step:
                with ctx.timer("train_pilot"):
                    result = train_on(ctx.trainer, pilot_data, ctx.algorithm, epochs=ctx.cfg.epochs,
                                      mismatch=ctx.cfg.rollout.mismatch, rng_key=[ctx.cfg.seed, iteration, 1])
                trained_norms, row["train_pilot"] = result["grad_norms"], train_summary(result)
                useful = sum(sample.advantage != 0 for sample in pilot_data.samples)
            with ctx.timer("grad_norms"):  # the accepted pilot samples no training backward measured
                grad_now = pilot_grad_norms(ctx.trainer, pilot_data, trained_norms, len(prompts))
        accept_now = pilot.accept_rates()
        accept, grad = ctx.stats.update(keys, accept_now, grad_now, iteration)
        # Allocate N stage-2 samples: n_i proportional to G_i / sqrt(p_i + alpha p_i^(1 - beta))
        # (the objective's weights), on top of the pilot when it joins the training batch.
        joins = cfg.reuse_pilot_samples and not cfg.pilot_step
        held = np.array(pilot.counts) if joins else None
        with ctx.timer("allocate"):
            counts, how = allocate_counts(grad, accept, cfg.stage2_budget(self.size), cfg, objective=self.objective,
                                          held=held)
        # Stage 2: n_i samples per prompt, verified.
        batch = self.generate(prompts, counts, "rollout")
        audit = {"keys": keys, "budget": cfg.stage2_budget(self.size), "n": counts, "p_pilot": accept_now,
                 "G_pilot": grad_now, "p": accept, "G": grad,
                 "allocation": how, "objective": self.objective, "allocate_kwargs": cfg.allocate_kwargs(),
                 "held": held}
        row["pilot_accept_rate"] = float(np.mean(accept_now))
        used = counts + (held if joins else 0)
        return Collected(merge(pilot, batch) if joins else batch, pilot.num_samples + batch.num_samples,
                         np.asarray(used, dtype=np.int64), (accept, grad), audit, row,
                         baseline=pilot if cfg.pilot_step else None, useful_trained=useful)


@register
class AdaptiveSampler(Sampler):
    """Ours (see the module docstring and docs/allocation.md)."""
    name = "adaptive"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        if self.cfg.reweight:
            log.warning("sampler.reweight with the adaptive sampler: its rounds choose each prompt's count "
                        "from the samples it already drew, so the weights n_bar / n_i are biased "
                        "(docs/allocation.md; benchmarks/bench_variance.py measured a larger gradient error). "
                        "They are unbiased for sampler.kind=gvm with reuse_pilot_samples=false.")

    def collect(self, iteration: int) -> Collected:
        ctx, cfg = self.ctx, self.cfg
        prompts = ctx.stream.take(self.size)
        keys = [p.key for p in prompts]
        records, hist_s, hist_f = visit_history(ctx.stats, keys, iteration, cfg.history_decay)
        budget = cfg.stage2_budget(self.size)
        batch = RolloutBatch(prompts, [[] for _ in prompts], [[] for _ in prompts],
                             ctx.rollouts.verifier.config.accept_threshold)
        # The pilot, only for prompts whose history is too thin to stand in for one, and at most
        # half the budget (the rounds need the rest).
        pilot_n = min(cfg.pilot_n, max(1, budget // (2 * max(len(prompts), 1))))
        pilot = pilot_sizes(hist_s + hist_f, pilot_n, cfg.amortise_after)
        spent = 0
        if pilot.sum() > 0:
            batch = merge(batch, self.generate(prompts, pilot, "pilot_rollout"))
            spent += int(pilot.sum())
        # The rest in rounds: re-estimate, keep the prompts whose samples would carry gradient.
        rounds_log = []
        for round_budget in round_budgets(budget - spent, cfg.rounds):
            if round_budget <= 0:
                continue
            counts, live = self._allocate_round(batch, hist_s, hist_f, records, round_budget)
            rounds_log.append({"n": counts, "live": live})
            if counts.sum() == 0:
                continue              # the live prompts are all capped: this round is not spent
            batch = merge(batch, self.generate(prompts, counts, "rollout"))
            spent += int(counts.sum())
        held_s, held_f = outcome_counts(batch)
        ctx.stats.count_outcomes(keys, held_s, held_f)
        rates = posterior_mean(hist_s + held_s, hist_f + held_f, cfg.prior)
        grad = self._grad_scales(records)
        # For R_pred, the prompts the last round left out count as the objective saw them (no weight).
        if rounds_log:
            rates = np.where(rounds_log[-1]["live"] | (held_s > 0), rates, 0.0)
        audit = {"keys": keys, "budget": budget, "n": np.array(batch.counts), "pilot": pilot, "rounds": rounds_log,
                 "p": rates, "G": grad, "objective": self.objective, "prior_counts": [hist_s, hist_f]}
        row = {"rounds": len(rounds_log), "pilot_samples": int(pilot.sum())}
        return Collected(batch, spent, np.array(batch.counts, dtype=np.int64), (rates, grad), audit, row)

    def _allocate_round(self, batch: RolloutBatch, hist_s, hist_f, records, round_budget: int):
        """One round's new samples per prompt: the live prompts share the round by the objective, on
        top of what they hold; the others get none. Live: the chance that the prompt's samples
        carry gradient, given its fair share of the round among the live ones, is at least
        min_useful (a fixed point: fewer live prompts, larger shares). When none is, the round goes
        to the prompts most likely to carry gradient, so no step is left without data."""
        cfg, algorithm = self.cfg, self.ctx.algorithm
        held_s, held_f = outcome_counts(batch)
        held = held_s + held_f
        size = len(batch.prompts)

        def useful(share: int) -> np.ndarray:
            return prob_useful(hist_s, hist_f, held_s, held_f, np.full(size, share), prior=cfg.prior,
                               need_both=algorithm.needs_both_outcomes)

        live = np.ones(size, dtype=bool)
        for _ in range(size):                  # shares only grow as the live set shrinks: it ends
            share = max(1, round_budget // max(int(live.sum()), 1))
            now = useful(share) >= cfg.min_useful
            if np.array_equal(now, live) or not now.any():
                live = now
                break
            live = now
        if not live.any():                     # nobody likely: the most promising ones, a fair share each
            chance = useful(max(1, round_budget // size))
            top = max(1, round_budget // max(1, min(size, cfg.n_per_prompt)))
            live = np.zeros(size, dtype=bool)
            live[np.argsort(-chance, kind="stable")[: min(size, top)]] = True
        rates = posterior_mean(hist_s + held_s, hist_f + held_f, cfg.prior)
        # Prompts that are not live enter the objective as p = 0 (RAFT) or 0 / 1 (GRPO): no weight.
        rates_for_objective = np.where(live, np.clip(rates, 1e-6, 1 - 1e-6), 0.0)
        grad = self._grad_scales(records)
        try:
            counts = allocate(grad, rates_for_objective, round_budget, objective=self.objective, held=held,
                              zero_accept="skip", alpha=cfg.alpha, beta=cfg.beta,
                              max_per_prompt=cfg.max_per_prompt)
        except NoEligiblePrompts:
            counts = np.zeros(size, dtype=np.int64)
        return counts, live

    def _grad_scales(self, records) -> np.ndarray:
        """G_i from earlier training backwards; prompts never trained on take the median of those
        known (1 when none is), so they are neither favoured nor starved."""
        known = np.array([r.g for r in records], dtype=np.float64)
        measured = known[known > 0]
        fill = float(np.median(measured)) if measured.size else 1.0
        return np.where(known > 0, known, fill)

    def observe_training(self, keys: list[int], owners: list[int], norms: list[float]) -> None:
        by_key: dict[int, list[float]] = {}
        for owner, value in zip(owners, norms):
            if value is not None and math.isfinite(value):
                by_key.setdefault(keys[owner], []).append(value)
        self.ctx.stats.observe_norms(by_key)


@register
class ScreenedSampler(Sampler):
    """Ours, at breadth (see the module docstring). Why breadth: bench_convergence measured that at
    equal samples a step on many prompts with a few samples each beats one that piles samples on
    fewer prompts (adaptive), and that half of uniform's groups carry no gradient (RAFT++: about a
    third of prompts solved 0 of 4 at their last visit; 30 % of those solve one at the next). A
    skipped prompt's history still fades at each visit, so it is tried again later: with n = 4 and
    history_decay 0.9, a prompt whose last group carried no gradient is skipped for 9-12 visits. When the
    draws run out first, the most promising skipped prompts fill the batch: a step on a handful of
    groups (measured: GRPO at 2 per prompt, where no prompt reaches a 0.45 chance of a mixed pair,
    trained on one group a step and fell from 0.227 to 0.028) is worse than one on unlikely ones."""
    name = "screened"

    def __init__(self, context: SamplerContext) -> None:
        super().__init__(context)
        # each training prompt's group, read once (a row without the field fails here, before anything is generated)
        group_field = screen_group_field(context.stream.prompts, self.cfg.screen_group)
        self._group_of = prompt_groups(context.stream.prompts, group_field) if group_field else {}

    def collect(self, iteration: int) -> Collected:
        if self.cfg.screen_pool == "all":
            return self._collect_ranked(iteration)
        ctx, cfg, n, probe = self.ctx, self.cfg, self.cfg.n_per_prompt, self.cfg.screen_probe
        limit = min(cfg.screen_max_draws * self.size, max(self.size, len(ctx.stream.prompts)))
        chosen: list[Prompt] = []                        # sampled in full after the draws
        passed: list[tuple[Prompt, list, list]] = []     # probed, and completed after the draws
        skipped: list[tuple[float, Prompt]] = []
        dropped: list[tuple[int, int]] = []               # (key, accepted) of probes that showed no gradient
        seen: set[int] = set()
        drawn = generated = probed = 0
        while len(chosen) + len(passed) < self.size and drawn < limit:
            candidates = ctx.stream.take(min(self.size - len(chosen) - len(passed), limit - drawn))
            drawn += len(candidates)
            fresh = [p for p in candidates if p.key not in seen]     # an epoch boundary can repeat one
            seen.update(p.key for p in fresh)
            unseen = {p.key for p in fresh if not ctx.stats.record(p.key).has_history} if probe else set()
            to_probe = []
            for prompt, chance in zip(fresh, self._chances(fresh, iteration)):
                if chance < cfg.screen_min_useful:
                    skipped.append((chance, prompt))
                else:
                    (to_probe if prompt.key in unseen else chosen).append(prompt)
            if to_probe:
                tried = self._sample(to_probe, probe, "probe")
                generated, probed = generated + tried.num_samples, probed + len(to_probe)
                accepted, rejected = outcome_counts(tried)
                keep = shows_kept(accepted, accepted + rejected, screen_out=self._screen_out)
                passed += [g for g, k in zip(_groups(tried), keep) if k]
                dropped += [(p.key, int(a)) for p, a, k in zip(to_probe, accepted, keep) if not k]
        if len(chosen) + len(passed) < self.size:  # the draws ran out: the most promising skipped fill the batch
            skipped.sort(key=lambda item: -item[0])
            fill = self.size - len(chosen) - len(passed)
            chosen += [prompt for _, prompt in skipped[:fill]]
            skipped = skipped[fill:]
        batch = self._complete(chosen, passed, n)
        generated += batch.num_samples - sum(len(g[1]) for g in passed)
        counts = np.array(batch.counts, dtype=np.int64)
        audit = {"keys": [p.key for p in batch.prompts], "n": counts, "skipped": [p.key for _, p in skipped]}
        row = {"prompts_drawn": drawn, "prompts_skipped": len(skipped)}
        if probe:
            audit.update(probe=probe, dropped=[key for key, _ in dropped], dropped_accepted=[a for _, a in dropped])
            row.update(prompts_probed=probed, prompts_dropped=len(dropped))
        return Collected(batch, generated, counts, None, audit, row=row)

    def _collect_ranked(self, iteration: int) -> Collected:
        """screen_pool=all: every training prompt is a candidate, the batch is the likeliest to carry
        gradient, and a prompt without history ranks at screen_unseen_chance. A prompt whose last
        group was mixed comes back at the next iteration instead of waiting for its turn in the
        stream, and first visits (a third of screened 8 x 32's samples, useful 0.28-0.30 of the
        time) are spent only where no known prompt is likelier. Ties (the unseen ones) go in the
        order of a fresh pass of the stream, so first visits still cover the prompts evenly."""
        ctx, cfg = self.ctx, self.cfg
        candidates = _distinct(ctx.stream.take(len(ctx.stream.prompts)))
        order = np.argsort(-self._chances(candidates, iteration), kind="stable")
        chosen = [candidates[i] for i in order[: self.size]]
        skipped = [candidates[i].key for i in order[self.size:]]
        batch = self._complete(chosen, [], cfg.n_per_prompt)
        counts = np.array(batch.counts, dtype=np.int64)
        audit = {"keys": [p.key for p in batch.prompts], "n": counts, "skipped": skipped}
        row = {"prompts_drawn": len(candidates), "prompts_skipped": len(skipped)}
        return Collected(batch, batch.num_samples, counts, None, audit, row=row)

    @property
    def _screen_out(self) -> str:
        return self.cfg.screen_out_for(self.ctx.cfg.algorithm)

    def _sample(self, prompts: list[Prompt], counts, phase: str) -> RolloutBatch:
        """generate() with each prompt's outcomes added to its history."""
        batch = self.generate(prompts, counts, phase)
        self.ctx.stats.count_outcomes([p.key for p in prompts], *outcome_counts(batch))
        return batch

    def _complete(self, chosen: list[Prompt], probed: list[tuple[Prompt, list, list]], n: int) -> RolloutBatch:
        """The training batch: n samples for each chosen prompt and the rest of each probed group,
        in one generation."""
        threshold = self.ctx.rollouts.verifier.config.accept_threshold
        prompts = chosen + [g[0] for g in probed]
        if not prompts:
            return _batch_of([], threshold)
        counts = [n] * len(chosen) + [n - len(g[1]) for g in probed]
        made = _groups(self._sample(prompts, np.array(counts, dtype=np.int64), "rollout"))
        completed = merge(_batch_of(probed, threshold), _batch_of(made[len(chosen):], threshold))
        return _batch_of(made[: len(chosen)] + _groups(completed), threshold)

    def _chances(self, prompts: list[Prompt], iteration: int) -> np.ndarray:
        cfg = self.cfg
        rule = dict(prior=cfg.prior, n=cfg.n_per_prompt, screen_out=self._screen_out, max_rate=cfg.screen_max_rate)
        keys = [p.key for p in prompts]
        unseen = np.full(len(keys), cfg.screen_unseen_chance if cfg.screen_pool == "all" else 1.0)
        if self._group_of:        # pooled before the visit below fades the drawn prompts' counts
            pooled = group_chances(self.ctx.stats, self._group_of, keys, min_seen=cfg.screen_group_min_seen, **rule)
            unseen = np.where(np.isnan(pooled), unseen, pooled)
        return screen_chances(self.ctx.stats, keys, iteration, decay=cfg.history_decay, unseen=unseen, **rule)


def _groups(batch: RolloutBatch) -> list[tuple[Prompt, list, list]]:
    """A verified batch as (prompt, completions, rewards) per prompt."""
    return list(zip(batch.prompts, batch.completions, batch.rewards))


def _batch_of(groups: list[tuple[Prompt, list, list]], accept_threshold: float) -> RolloutBatch:
    """The verified batch of (prompt, completions, rewards) groups: _groups' inverse."""
    return RolloutBatch([g[0] for g in groups], [g[1] for g in groups], [g[2] for g in groups], accept_threshold)


def screen_chances(stats: PromptStats, keys: list[int], iteration: int, *, decay: float, prior: float, n: int,
                   screen_out: str, max_rate: float = 1.0, unseen=1.0) -> np.ndarray:
    """The screened sampler's rule: a visit of each prompt (its history fades by `decay`), then the
    posterior chance that its n samples are not what `screen_out` skips (gvm.stats.prob_kept), 0
    where the posterior mean acceptance rate is above `max_rate` (nearly solved); `unseen` (a number,
    or one per key) for a prompt without history (nothing to screen on: 1 takes it whenever drawn).
    benchmarks/screen_replay.py replays it over a uniform run's audit log."""
    _, s, f = visit_history(stats, keys, iteration, decay)
    return np.where(s + f > 0, history_chances(s, f, prior=prior, n=n, screen_out=screen_out, max_rate=max_rate),
                    unseen)


def history_chances(successes, failures, *, prior: float, n: int, screen_out: str, max_rate: float = 1.0) -> np.ndarray:
    """The screen's chance from (decayed) outcome counts as they stand: prob_kept, 0 above `max_rate`."""
    s, f = np.asarray(successes, np.float64), np.asarray(failures, np.float64)
    chance = prob_kept(s, f, np.full(len(s), n), prior=prior, screen_out=screen_out)
    return np.where(posterior_mean(s, f, prior=prior) > max_rate, 0.0, chance)


def group_chances(stats: PromptStats, group_of: dict[int, Hashable], keys: list[int], *, prior: float, n: int,
                  screen_out: str, max_rate: float = 1.0, min_seen: int = 1) -> np.ndarray:
    """For each of `keys`, the mean screen chance of the prompts with history in its group
    (`group_of`: prompt key -> group, from prompt_groups; their counts as they stand, not faded by
    this call); NaN where fewer than `min_seen` such prompts have history. Why: a prompt without
    history is otherwise sampled whatever its group shows, and on the hard-tail task first visits to
    the two hardest levels carried gradient 2-9 % of the time (GRPO, uniform and screened runs)
    against about half for level 2; the mean over a group's seen prompts is the chance of a prompt
    drawn from it at random, as first visits are. Reads only the prompts with a record, not the
    whole training set."""
    seen = [(key, r) for key, r in stats.records.items() if r.has_history and key in group_of]
    chance = history_chances([r.successes for _, r in seen], [r.failures for _, r in seen],
                             prior=prior, n=n, screen_out=screen_out, max_rate=max_rate)
    totals: dict[Hashable, list] = {}
    for (key, _), value in zip(seen, chance):
        total = totals.setdefault(group_of[key], [0.0, 0])
        total[0] += float(value)
        total[1] += 1
    out = np.full(len(keys), np.nan)
    for i, key in enumerate(keys):
        total = totals.get(group_of[key])
        if total is not None and total[1] >= min_seen:
            out[i] = total[0] / total[1]
    return out


def screen_group_field(prompts: list[Prompt], setting: str) -> str:
    """sampler.screen_group with "auto" resolved, and said in the log: SCREEN_GROUP_AUTO_FIELD where
    every training row has it with at least two values (the built-in task's and MATH's difficulty
    level), else "" (no pooling). Why not fail where the field is missing: "auto" is the default,
    and a dataset without it should train as before; why two values: one group pools every
    prompt, a mean over the whole training set that says nothing about a new prompt's level."""
    if setting != AUTO_SCREEN_GROUP:
        return setting
    values = {_group_value(p.row[SCREEN_GROUP_AUTO_FIELD]) for p in prompts if SCREEN_GROUP_AUTO_FIELD in p.row}
    missing = sum(SCREEN_GROUP_AUTO_FIELD not in p.row for p in prompts)
    if missing or len(values) < 2:
        why = (f"{missing} of {len(prompts)} training rows have no field {SCREEN_GROUP_AUTO_FIELD!r}" if missing
               else f"field {SCREEN_GROUP_AUTO_FIELD!r} has {len(values)} value(s), not a grouping")
        log.info("sampler.screen_group=auto: no pooling of first visits (%s)", why)
        return ""
    log.info("sampler.screen_group=auto: first visits pooled by %r (%d groups)", SCREEN_GROUP_AUTO_FIELD, len(values))
    return SCREEN_GROUP_AUTO_FIELD


def _group_value(value) -> Hashable:
    """A row value as a group label: unhashable values (lists, dicts) by their repr."""
    return repr(value) if isinstance(value, (list, dict)) else value


def prompt_groups(prompts: list[Prompt], group_field: str) -> dict[int, Hashable]:
    """Each prompt's group under sampler.screen_group: its row's `group_field` (unhashable values by
    their repr); a ConfigError naming the key where a row lacks the field."""
    groups = {}
    for prompt in prompts:
        if group_field not in prompt.row:
            present = ", ".join(sorted(prompt.row)) or "none"
            raise ConfigError(f"config key sampler.screen_group={group_field!r}: training prompt {prompt.key} has "
                              f"no field {group_field!r} (its fields: {present}); name a field every training row "
                              f"has, or set '' to pool nothing")
        groups[prompt.key] = _group_value(prompt.row[group_field])
    return groups


def _distinct(prompts: list[Prompt]) -> list[Prompt]:
    """The prompts without repeats, in order (a take across an epoch boundary can repeat one)."""
    return list({p.key: p for p in prompts}.values())


SAMPLER_NAMES = tuple(SAMPLERS)
AUTO_SCREEN_GROUP = "auto"               # sampler.screen_group: pool by SCREEN_GROUP_AUTO_FIELD where it groups
SCREEN_GROUP_AUTO_FIELD = "level"        # the row field "auto" pools first visits by
SCREEN_POOLS = ("draws", "all")         # sampler.screen_pool: where the screened sampler's candidates come from
