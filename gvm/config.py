"""The run's settings: one frozen dataclass per concern, read from YAML plus `key=value` overrides,
checked before any model, engine or data is touched.

    deepspeed gvm/train.py --config configs/gvm_raft++.yaml sampler.budget=64 model=/path/to/hf

Sections (dotted keys reach into them): `data`, `task` (the built-in arithmetic task), `tiny`
(the built-in model), `warmstart`, `sampler` (uniform or GVM allocation), `rollout` (engine and
the rollout's own `SamplingConfig`), `verifier` (`VerifierConfig`), `trainer` (`TrainerConfig`),
`eval`, `log`. A few frequent keys have short forms (`SHORTCUTS`: `train_data=`, `eval_data=`,
`eval_every=`, `budget=`).

`TrainerConfig`, `SamplingConfig`, `MismatchConfig` and `VerifierConfig` are used as they are;
four trainer fields follow top-level keys so that each value is set in one place:
`trainer.model_path` <- `model`, `trainer.algorithm` <- `algorithm`, `trainer.seed` <- `seed`,
`trainer.temperature` <- `rollout.sampling.temperature` (the trainer's log-probs must be those of
the distribution that was sampled). Setting them under `trainer:` is an error that says so.

Values from the command line are parsed as YAML scalars and converted to the field's type
(gvm.config_build): a wrong type, a bad value or an unknown key raises `ConfigError` naming the
dotted key, the value and what is allowed.

Names are read from where they are defined: algorithms from `gvm.algorithms`' registry, engines
from `gvm.engines.factory`, prompt styles from `gvm.data`, allocation modes from `gvm.allocation`.
Where a run default differs from the library default of the same setting, `RUN_DEFAULTS` below
says so once, with the reason.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gvm.algorithms import ALGORITHMS
from gvm.allocation import ALLOCATE_DEFAULTS, OBJECTIVES, ZERO_ACCEPT_MODES
from gvm.arithmetic import LEVELS
from gvm.config_build import ConfigError, build, merge, parse_override, require, set_dotted
from gvm.data import ANSWER_KEY, DATA_SUFFIXES, PROBLEM_KEY, PROMPT_STYLES
from gvm.engines.base import SamplingConfig
from gvm.engines.factory import AUTO, ENGINE_NAMES, ENGINE_REGISTRY
from gvm.engines.mismatch import MismatchConfig
from gvm.samplers import SAMPLER_NAMES as SAMPLERS
from gvm.samplers import AUTO_SCREEN_GROUP, SCREEN_POOLS
from gvm.stats import SCREEN_OUT
from gvm.toy import TinyModelConfig
from gvm.trainer_config import TrainerConfig
from gvm.verify import VerifierConfig
from gvm.warmstart import WarmStartConfig

__all__ = ["ConfigError", "RunConfig", "load_config", "from_dict", "check_paths", "check_model_folder"]

BUILTIN_MODEL = "tiny"          # `model=tiny`: build gvm.toy's model in the run folder
BUILTIN_TASK = ""               # `train_data=` empty: the built-in arithmetic task
AUTO_STYLE = "auto"             # data.prompt_style: "cot" for files, "compact" for the built-in task
AUTO_OBJECTIVE = "auto"         # sampler.objective: the algorithm's own
# Trainer fields that follow a top-level key (see the module docstring).
DERIVED_TRAINER_FIELDS = {"model_path": "model", "algorithm": "algorithm", "seed": "seed",
                          "temperature": "rollout.sampling.temperature"}
SHORTCUTS = {"train_data": "data.train_data", "eval_data": "data.eval_data", "eval_every": "eval.every",
             "budget": "sampler.budget"}


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig:
    """Where prompts come from and how many each iteration takes."""
    train_data: str = BUILTIN_TASK       # JSONL/JSON/Parquet file or hub name; "" = built-in task
    eval_data: str = ""                  # held-out file; "" = the task's held-out split (files: none)
    problem_key: str = PROBLEM_KEY       # field names in the files (load_prompts renames them)
    answer_key: str = ANSWER_KEY
    prompt_style: str = AUTO_STYLE       # "cot" (Qwen2.5-Math) for files, "compact" for the task
    prompts_per_iteration: int = 64      # prompts per iteration (the paper: 1024); few accepted samples per
                                         # Adam step make noisy steps that undo the warm start
    max_prompt_tokens: int = 1024        # longer prompts are dropped (with a warning) at load
    max_eval_prompts: int | None = None  # first rows of the eval set only; None: all

    def __post_init__(self) -> None:
        styles = (AUTO_STYLE, *PROMPT_STYLES)
        require(self.prompt_style in styles, "data.prompt_style", self.prompt_style, f"must be one of {styles}")
        require(self.prompts_per_iteration >= 1, "data.prompts_per_iteration", self.prompts_per_iteration,
              "must be >= 1")
        require(self.max_prompt_tokens >= 1, "data.max_prompt_tokens", self.max_prompt_tokens, "must be >= 1")
        require(self.max_eval_prompts is None or self.max_eval_prompts >= 1, "data.max_eval_prompts",
              self.max_eval_prompts, "must be >= 1 or null (all)")


@dataclass(frozen=True)
class TaskConfig:
    """The built-in arithmetic task (gvm.arithmetic), used when data.train_data is empty."""
    num_train: int = 2000                    # distinct training problems
    num_eval: int = 200                      # distinct held-out problems (no overlap with train)
    levels: tuple[int, ...] = (1, 2, 3)      # difficulty levels drawn from (4-5: the tiny model never solves them)
    # Mostly level 2 (carries, borrows, products: p_i spreads over (0, 1) after the warm start),
    # an easy head and a hard tail. Level 1 has only 155 distinct problems, so it must stay rare.
    level_weights: tuple[float, ...] | None = (1.0, 6.0, 1.0)
    seed: int = 1234                         # the problems do not change with the training seed
    # Per operand digit, the chance that a warm-start solution works a misread problem (so it
    # boxes a wrong answer): the warm-started model slips at that rate, RL teaches it not to.
    slip_rate: float = 0.15

    def __post_init__(self) -> None:
        require(self.num_train >= 1, "task.num_train", self.num_train, "must be >= 1")
        require(self.num_eval >= 1, "task.num_eval", self.num_eval, "must be >= 1")
        require(0 <= self.slip_rate <= 1, "task.slip_rate", self.slip_rate, "must lie in [0, 1] (0: clean solutions)")
        require(len(self.levels) > 0 and set(self.levels) <= set(LEVELS) and len(set(self.levels)) == len(self.levels),
              "task.levels", list(self.levels), f"must be distinct levels from {list(LEVELS)}")
        if self.level_weights is not None:
            require(len(self.level_weights) == len(self.levels)
                  and all(w >= 0 and math.isfinite(w) for w in self.level_weights) and sum(self.level_weights) > 0,
                  "task.level_weights", list(self.level_weights),
                  f"must be {len(self.levels)} non-negative numbers (one per level), not all 0, or null")


@dataclass(frozen=True)
class SamplerConfig:
    """How each iteration spends its generation budget (gvm.samplers; every sample is counted).

    "uniform": n_per_prompt samples for each prompt. "dapo": DAPO's dynamic sampling, n_per_prompt
    per drawn prompt, groups without gradient dropped and prompts drawn until the training batch
    holds prompts_per_iteration groups. "gvm": the paper's two stages, a pilot of pilot_n per prompt
    measures p_i and G_i and `gvm.allocation.allocate` shares `budget`. "adaptive" (ours): p_i from
    each prompt's posterior over all its samples, the pilot only for prompts without history, the
    budget spent in `rounds` with p_i and liveness re-estimated between them."""
    kind: str = "screened"               # at the algorithm's n_per_prompt the best measured: RAFT++ at 2, 2.01x
                                         # uniform at 8; GRPO at 4, 1.30x (docs/train.md). It skips nothing until
                                         # prompts come back (the built-in run: 1,280 of 2,000, none twice)
    n_per_prompt: int | None = None      # uniform, dapo, screened: samples per prompt; gvm, adaptive: budget per
                                         # prompt if budget is null; null: the algorithm's (gvm.algorithms:
                                         # RAFT and RAFT++ 2, GRPO 4; a GRPO group needs differing answers)
    pilot_n: int = 4                     # N': pilot samples per prompt (the paper: 8; adaptive: at most half the
                                         # budget per prompt)
    budget: int | None = None            # N: allocated samples per iteration (gvm: stage 2, after the pilot;
                                         # adaptive: all of them, pilot included); null: n_per_prompt * prompts
    objective: str = AUTO_OBJECTIVE      # the allocation objective: "auto" is the algorithm's (RAFT's for RAFT and
                                         # RAFT++, GRPO's for GRPO; docs/allocation.md), or "raft" / "grpo"
    replay: int = 0                      # every sampler: the gradient-carrying samples of this many earlier
                                         # iterations join each training batch (gvm.replay: trained on again,
                                         # counted once, TIS-weighted for the policy's drift); 0: on-policy only
    reweight: bool = False               # gvm, adaptive: each sample's loss weight n_bar / n_i (gvm.stages.allocation_weights),
                                         # so the token-mean loss estimates uniform sampling's gradient; off: the paper
    # The allocation rule's settings: defaults are allocate()'s (the paper's) except where noted.
    alpha: float = ALLOCATE_DEFAULTS["alpha"]        # w_i = G_i / sqrt(p_i + alpha p_i^(1 - beta))
    beta: float = ALLOCATE_DEFAULTS["beta"]
    min_per_prompt: int = ALLOCATE_DEFAULTS["min_per_prompt"]
    max_per_prompt: int | None = 8       # run default (allocate(), the paper: no cap): 32 let a few prompts take
                                         # most of the budget and made noisy steps (near-duplicate samples)
    filter_threshold: float | None = ALLOCATE_DEFAULTS["filter_threshold"]        # drop prompts with p_i above it
    filter_insufficient: float | None = ALLOCATE_DEFAULTS["filter_insufficient"]  # drop p_i * n_i below it
    zero_accept: str = "explore"         # run default (allocate(), the paper: "skip"): after a 4-sample pilot half
                                         # the prompts read p_i = 0, and a few samples each find the solvable ones
    explore_per_prompt: int = ALLOCATE_DEFAULTS["explore_per_prompt"]
    explore_fraction: float = ALLOCATE_DEFAULTS["explore_fraction"]
    # gvm
    reuse_pilot_samples: bool = True     # the pilot's samples join the training batch; off: thrown away (the paper)
    pilot_step: bool = False             # with reuse: train on the pilot in an optimizer step of its own first, G_i
                                         # from that backward (two steps per iteration; the default until 2026-12)
    stats_ema: float = 0.0               # weight of a prompt's earlier p_i, G_i when seen again; 0: none
    # dapo
    dapo_max_rounds: int = 8             # generation rounds before dapo trains on what it has
    # adaptive
    prior: float = 0.5                   # p_i ~ Beta(prior + successes, prior + failures); 0: the plain rate
    history_decay: float = 0.9           # at each visit a prompt's earlier counts are multiplied by this (every
                                         # bench_convergence run on the hard-tail task used 0.9; 0.7 lost to it)
    amortise_after: float | None = 2.0   # a prompt whose decayed history holds this many samples skips the pilot;
                                         # null: every prompt gets one
    rounds: int = 2                      # the budget after the pilot is spent in this many rounds
    min_useful: float = 0.2              # a prompt takes part in a round when the chance that its samples carry
                                         # gradient (an accepted one; for GRPO both outcomes) is at least this
    # screened (prior and history_decay as adaptive)
    screen_min_useful: float = 0.45      # a prompt is sampled when the chance that its n_per_prompt samples carry
                                         # gradient is at least this (1 for a prompt without history; n = 4 at
                                         # decay 0.9: a last group without gradient reads 0.29-0.30, skipped until
                                         # faded 9-12 times; n = 2 "agreeing" never reaches it: the batch is
                                         # then the most promising of the draws)
    screen_max_draws: int = 4            # prompts drawn per iteration, at most, x prompts_per_iteration; when
                                         # they run out the most promising skipped ones fill the batch
    screen_out: str = "agreeing"         # the groups the screen skips: "agreeing" (all rejected or all accepted:
                                         # GRPO's groups without gradient, and for RAFT also those where it has
                                         # nothing left to learn; the RAFT++ winner, docs/train.md); "auto" the
                                         # algorithm's groups without gradient (RAFT "unsolved", GRPO
                                         # "agreeing"); "solved": the prompts likely all accepted
    screen_probe: int = 0                # a prompt without history first gets this many samples, and the rest
                                         # of its group only when they are not what the screen skips (GRPO: both
                                         # outcomes); the others are dropped, their samples counted; 0: no probe
    screen_max_rate: float = 1.0         # a prompt with history whose posterior mean acceptance is above this is
                                         # skipped too (nearly solved: a third of screened GRPO's useful groups were
                                         # 6-7 of 8 accepted); 1: none skipped for that
    screen_pool: str = "draws"           # "draws": prompts come in the stream's order and the first that pass the
                                         # screen fill the batch (at most screen_max_draws x the batch drawn);
                                         # "all": every training prompt is ranked each iteration by its chance and
                                         # the likeliest fill the batch (each prompt's history fades every
                                         # iteration: set history_decay near 1; screen_min_useful is not used)
    screen_unseen_chance: float = 0.5    # screen_pool=all: the chance a prompt without history ranks at (first
                                         # visits realised 0.28-0.30, as did the chances of 0.45-0.6 history gave)
    screen_group: str = AUTO_SCREEN_GROUP  # a training row field (e.g. "level"): a prompt without history takes the
                                         # mean chance of its group's prompts with history (same value of the
                                         # field), so first visits to a group the policy cannot solve are skipped
                                         # too; "": no pooling (a prompt without history is always sampled);
                                         # "auto": `level` where every training row has it with two or more
                                         # values (the built-in task, MATH), else none, said in the log
    screen_group_min_seen: int = 8       # prompts of a group with history before its mean is used

    def __post_init__(self) -> None:
        require(self.kind in SAMPLERS, "sampler.kind", self.kind, f"must be one of {SAMPLERS}")
        require(self.n_per_prompt is None or self.n_per_prompt >= 1, "sampler.n_per_prompt", self.n_per_prompt,
                "must be >= 1 or null (the algorithm's)")
        require(self.replay >= 0, "sampler.replay", self.replay, "must be >= 0 (0: train on this iteration's samples only)")
        require(self.pilot_n >= 1, "sampler.pilot_n", self.pilot_n, "must be >= 1 (the pilot measures p_i)")
        require(self.budget is None or self.budget >= 1, "sampler.budget", self.budget, "must be >= 1 or null")
        objectives = (AUTO_OBJECTIVE, *OBJECTIVES)
        require(self.objective in objectives, "sampler.objective", self.objective, f"must be one of {objectives}")
        require(self.alpha >= 0, "sampler.alpha", self.alpha, "must be >= 0")
        require(math.isfinite(self.beta), "sampler.beta", self.beta, "must be a finite number (the paper: 2)")
        require(self.min_per_prompt >= 0, "sampler.min_per_prompt", self.min_per_prompt, "must be >= 0")
        require(self.max_per_prompt is None or self.max_per_prompt >= max(1, self.min_per_prompt),
                "sampler.max_per_prompt", self.max_per_prompt, "must be >= max(1, min_per_prompt) or null")
        require(self.filter_threshold is None or 0 <= self.filter_threshold <= 1, "sampler.filter_threshold",
                self.filter_threshold, "must lie in [0, 1] or be null")
        require(self.filter_insufficient is None or self.filter_insufficient >= 0, "sampler.filter_insufficient",
                self.filter_insufficient, "must be >= 0 or null")
        require(self.zero_accept in ZERO_ACCEPT_MODES, "sampler.zero_accept", self.zero_accept,
                f"must be one of {ZERO_ACCEPT_MODES}")
        require(self.explore_per_prompt >= 0, "sampler.explore_per_prompt", self.explore_per_prompt, "must be >= 0")
        require(0 <= self.explore_fraction <= 1, "sampler.explore_fraction", self.explore_fraction,
                "must lie in [0, 1]")
        require(0 <= self.stats_ema < 1, "sampler.stats_ema", self.stats_ema, "must lie in [0, 1)")
        require(not self.pilot_step or self.reuse_pilot_samples, "sampler.pilot_step", self.pilot_step,
                "trains on the pilot, so it needs reuse_pilot_samples=true")
        require(self.dapo_max_rounds >= 1, "sampler.dapo_max_rounds", self.dapo_max_rounds, "must be >= 1")
        require(self.prior >= 0, "sampler.prior", self.prior, "must be >= 0 (0: plain rates)")
        require(0 <= self.history_decay <= 1, "sampler.history_decay", self.history_decay, "must lie in [0, 1]")
        require(self.amortise_after is None or self.amortise_after > 0, "sampler.amortise_after",
                self.amortise_after, "must be > 0 or null (always a pilot)")
        require(self.rounds >= 1, "sampler.rounds", self.rounds, "must be >= 1")
        require(0 <= self.min_useful <= 1, "sampler.min_useful", self.min_useful, "must lie in [0, 1]")
        require(0 <= self.screen_min_useful <= 1, "sampler.screen_min_useful", self.screen_min_useful,
                "must lie in [0, 1] (0: screen nothing)")
        require(self.screen_max_draws >= 1, "sampler.screen_max_draws", self.screen_max_draws, "must be >= 1")
        require(0 < self.screen_max_rate <= 1, "sampler.screen_max_rate", self.screen_max_rate,
                "must lie in (0, 1] (1: skip no prompt for its acceptance rate)")
        require(self.screen_probe >= 0, "sampler.screen_probe", self.screen_probe, "must be >= 0 (0: no probe)")
        require(self.screen_out in (AUTO_OBJECTIVE, *SCREEN_OUT), "sampler.screen_out", self.screen_out,
                f"must be one of {(AUTO_OBJECTIVE, *SCREEN_OUT)}")
        require(self.screen_pool in SCREEN_POOLS, "sampler.screen_pool", self.screen_pool, f"must be one of {SCREEN_POOLS}")
        require(0 <= self.screen_unseen_chance <= 1, "sampler.screen_unseen_chance", self.screen_unseen_chance,
                "must lie in [0, 1]")
        require(self.screen_group_min_seen >= 1, "sampler.screen_group_min_seen", self.screen_group_min_seen,
                "must be >= 1")
        require(self.screen_probe == 0 or self.screen_pool == "draws", "sampler.screen_probe", self.screen_probe,
                "needs sampler.screen_pool=draws (a probe is the first part of a drawn prompt's group); 0 turns it off")

    @property
    def reuses_pilot(self) -> bool:
        """The gvm pilot's samples are trained on."""
        return self.kind == "gvm" and self.reuse_pilot_samples

    def stage2_budget(self, prompts_per_iteration: int) -> int:
        """N, the allocated samples per iteration (uniform: all samples)."""
        if self.budget is None and self.n_per_prompt is None:
            raise ConfigError("config key sampler.n_per_prompt=null: resolve it for the algorithm first "
                              "(RunConfig does; or give sampler.n_per_prompt or sampler.budget)")
        return self.budget if self.budget is not None else self.n_per_prompt * prompts_per_iteration

    def allocate_kwargs(self) -> dict:
        """The keyword arguments of `gvm.allocation.allocate` this config sets (the rule's settings)."""
        return {name: getattr(self, name) for name in ALLOCATE_DEFAULTS}

    def screen_out_for(self, algorithm: str) -> str:
        """screen_out with "auto" resolved for `algorithm`: the groups that carry it no gradient."""
        if self.screen_out != AUTO_OBJECTIVE:
            return self.screen_out
        return "agreeing" if ALGORITHMS[algorithm].needs_both_outcomes else "unsolved"

    def objective_for(self, algorithm: str) -> str:
        """The allocation objective with "auto" resolved for `algorithm`."""
        return ALGORITHMS[algorithm].objective if self.objective == AUTO_OBJECTIVE else self.objective


@dataclass(frozen=True)
class RolloutConfig:
    """The generation engine. `vllm` and `hf` hold VLLMEngineConfig / HFEngineConfig fields; they
    are checked against those classes when the run starts (importing vLLM takes seconds)."""
    engine: str = AUTO                   # "auto": vLLM when it imports, else transformers
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_tokens=96)  # the task's answers: < 70 tokens
    vllm: dict = field(default_factory=dict)  # e.g. {tensor_parallel_size: 2, gpu_memory_utilization: 0.4}
    hf: dict = field(default_factory=dict)    # e.g. {max_batch_size: 32}
    mismatch: MismatchConfig = MismatchConfig()  # engine vs trainer log-prob correction (RAFT++ / GRPO)

    def __post_init__(self) -> None:
        require(self.engine in ENGINE_NAMES, "rollout.engine", self.engine, f"must be one of {ENGINE_NAMES}")
        require(self.sampling.temperature > 0, "rollout.sampling.temperature", self.sampling.temperature,
              "must be > 0: training needs sampled responses (greedy decoding is for eval)")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out accuracy during training (the same code as `python -m gvm.eval`)."""
    every: int = 2                       # iterations between evaluations; 0: only before and after
    k: int = 8                           # samples per prompt: avg@k (the accuracy) and pass@k (4: too noisy)
    temperature: float = 1.0             # the policy RL trains; greedy (0) lags it on the tiny model
    max_tokens: int | None = None        # null: rollout.sampling.max_tokens

    def __post_init__(self) -> None:
        require(self.every >= 0, "eval.every", self.every, "must be >= 0 (0: only before and after training)")
        require(self.k >= 1, "eval.k", self.k, "must be >= 1")
        require(self.temperature >= 0, "eval.temperature", self.temperature, "must be >= 0 (0 = greedy)")
        require(self.max_tokens is None or self.max_tokens >= 1, "eval.max_tokens", self.max_tokens,
              "must be >= 1 or null")


@dataclass(frozen=True)
class LogConfig:
    """What a run writes besides metrics.jsonl and allocations.jsonl."""
    tensorboard: bool = True             # runs/<name>/tb
    plot: bool = True                    # runs/<name>/accuracy.png
    progress: bool = True                # tqdm bars on rank 0
    table: bool = True                   # one table row per iteration on stdout
    wandb: bool = False                  # also to Weights & Biases (the optional extra; WANDB_MODE=offline works)
    wandb_project: str = "gvm"
    wandb_name: str = ""                 # "": the run's name
    wandb_tags: tuple[str, ...] = ()


# Trainer settings whose run default differs from TrainerConfig's (the paper's, for a 1.5B model).
RUN_TRAINER_DEFAULTS = {
    # The warm-started tiny model learns at 2e-4 with a short warm-up: a fresh Adam's first steps
    # are sign steps, and 1e-3 wrecked the model in a few iterations (CPU runs of 2026-11).
    "lr": 2e-4,
    "warmup_steps": 5,
}


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(model_path=BUILTIN_MODEL, **RUN_TRAINER_DEFAULTS)


@dataclass(frozen=True)
class RunConfig:
    """Everything `gvm.train.main` needs. Top-level keys are the ones most runs change."""
    name: str = "default"                # the run folder is <run_root>/<name>
    run_root: str = "runs"
    model: str = BUILTIN_MODEL           # HF folder, or "tiny" (built in the run folder)
    algorithm: str = "raft++"            # "raft", "raft++" or "grpo" (gvm.algorithms)
    iterations: int = 20                 # prompt batches
    epochs: int = 1                      # passes over each iteration's samples
    seed: int = 0                        # model init, data order, sampling (logged)
    resume: bool = False                 # continue from the newest complete checkpoint in the run folder
    overwrite: bool = False              # delete what an earlier run left in the run folder, then start afresh
    checkpoint_every: int = 0            # iterations between checkpoints; 0: at the end only
    checkpoint_keep: int = 2             # complete checkpoints kept (older ones removed); 0: all
    data: DataConfig = DataConfig()
    task: TaskConfig = TaskConfig()
    tiny: TinyModelConfig = TinyModelConfig()
    warmstart: WarmStartConfig = WarmStartConfig()
    sampler: SamplerConfig = SamplerConfig()
    rollout: RolloutConfig = RolloutConfig()
    verifier: VerifierConfig = VerifierConfig(num_workers=1)  # one worker per rank (2-core machines)
    trainer: TrainerConfig = field(default_factory=_default_trainer)
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()

    def __post_init__(self) -> None:
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name", self.name,
              "must be a non-empty folder name without '/'")
        require(bool(self.model), "model", self.model, f"must be a Hugging Face model folder or {BUILTIN_MODEL!r}")
        require(self.algorithm in ALGORITHMS, "algorithm", self.algorithm, f"must be one of {tuple(ALGORITHMS)}")
        require(self.iterations >= 0, "iterations", self.iterations, "must be >= 0")
        require(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        require(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be >= 0")
        require(self.checkpoint_keep >= 0, "checkpoint_keep", self.checkpoint_keep, "must be >= 0 (0 keeps all)")
        require(not (self.resume and self.overwrite), "overwrite", self.overwrite,
                "cannot be true with resume=true: continue the run (resume) or delete it (overwrite), not both")
        expected = {"model_path": self.model, "algorithm": ALGORITHMS[self.algorithm].loss, "seed": self.seed,
                    "temperature": self.rollout.sampling.temperature}
        for name, value in expected.items():
            if getattr(self.trainer, name) != value:  # keep the derived trainer fields in step
                object.__setattr__(self, "trainer", dataclasses.replace(self.trainer, **{name: value}))
        if self.sampler.n_per_prompt is None:      # the algorithm's: written out resolved, so resume compares it
            object.__setattr__(self, "sampler", dataclasses.replace(
                self.sampler, n_per_prompt=ALGORITHMS[self.algorithm].n_per_prompt))
        if self.sampler.kind == "screened" and self.sampler.screen_probe > 0:
            require(self.sampler.screen_probe < self.sampler.n_per_prompt, "sampler.screen_probe",
                    self.sampler.screen_probe, f"must be below sampler.n_per_prompt ({self.sampler.n_per_prompt}): "
                    f"a probe is the first part of a group; 0 turns it off")
            require(self.sampler.screen_probe >= 2 or self.sampler.screen_out_for(self.algorithm) != "agreeing",
                    "sampler.screen_probe", self.sampler.screen_probe,
                    "must be >= 2 where the screen skips agreeing groups (the default): one sample cannot show "
                    "both outcomes, so every probe would be dropped; or set sampler.screen_out=unsolved")
        if self.sampler.kind == "gvm" and self.sampler.max_per_prompt is not None:
            room = self.sampler.max_per_prompt * self.data.prompts_per_iteration
            budget = self.sampler.stage2_budget(self.data.prompts_per_iteration)
            require(room >= budget, "sampler.max_per_prompt", self.sampler.max_per_prompt,
                  f"max_per_prompt * data.prompts_per_iteration = {room} must reach the budget {budget}")
        if self.sampler.kind == "gvm":
            floor = self.sampler.min_per_prompt * self.data.prompts_per_iteration
            budget = self.sampler.stage2_budget(self.data.prompts_per_iteration)
            require(floor <= budget, "sampler.min_per_prompt", self.sampler.min_per_prompt,
                  f"min_per_prompt * data.prompts_per_iteration = {floor} exceeds the budget {budget}")
        if self.sampler.kind == "gvm" and self.trainer.grad_norm_params == "none":
            raise ConfigError("config key trainer.grad_norm_params='none': sampler.kind='gvm' needs the per-sample "
                              "gradient norms G_i; use 'embed', 'head' or 'both'")
        if self.algorithm == "raft" and self.trainer.kl_coef > 0:
            raise ConfigError(f"config key trainer.kl_coef={self.trainer.kl_coef!r}: the KL penalty is GRPO's; "
                              f"set it to 0 or use algorithm=grpo")

    @property
    def builtin_model(self) -> bool:
        return self.model == BUILTIN_MODEL

    @property
    def builtin_task(self) -> bool:
        return self.data.train_data == BUILTIN_TASK

    @property
    def run_dir(self) -> Path:
        return Path(self.run_root) / self.name

    @property
    def prompt_style(self) -> str:
        if self.data.prompt_style != AUTO_STYLE:
            return self.data.prompt_style
        return "compact" if self.builtin_task else "cot"

    @property
    def warmstart_steps(self) -> int:
        if self.warmstart.steps is not None:
            return self.warmstart.steps
        return 600 if self.builtin_task and self.builtin_model else 0

    def to_dict(self) -> dict:
        """Plain nested dict (YAML-ready) that `from_dict` turns back into this config; the derived
        trainer fields are left out (they follow the top-level keys)."""
        out = _plain(dataclasses.asdict(self))
        for name in DERIVED_TRAINER_FIELDS:
            out["trainer"].pop(name)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=120)


# Keys a resumed run may change: its length, its outputs and their cadence. Everything else decides
# what the run is (model, algorithm, sampler, data, task, tiny model, seed, batch sizes, lr, ...).
RESUMABLE_KEYS = ("name", "run_root", "iterations", "resume", "overwrite", "checkpoint_every", "checkpoint_keep",
                  "eval", "log")


def resume_differences(cfg: RunConfig, saved: dict, *, recorded_only: bool = False) -> tuple[list[str], list[str]]:
    """(keys that differ and may, keys that differ and must not) between `cfg` and the resolved
    config a checkpoint was written with, each as "key: saved -> now". recorded_only: only the keys
    `saved` holds (a run written before a key existed says nothing about it)."""
    allowed, refused = [], []
    now, before = _flat(cfg.to_dict()), _flat(saved)
    for key in sorted(set(before) if recorded_only else set(now) | set(before)):
        if now.get(key) == before.get(key):
            continue
        line = f"{key}: {before.get(key)!r} -> {now.get(key)!r}"
        (allowed if key.split(".")[0] in RESUMABLE_KEYS else refused).append(line)
    return allowed, refused


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ENGINE_REGISTRY:   # engine settings compare as a whole
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _plain(value: Any) -> Any:
    """Tuples to lists (YAML has no tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Building a dataclass from nested dicts, with typed conversion and named errors
# ---------------------------------------------------------------------------------------------
# Reading YAML and overrides


def _check_derived(tree: dict) -> None:
    trainer = tree.get("trainer") or {}
    if not isinstance(trainer, dict):
        return
    for name, owner in DERIVED_TRAINER_FIELDS.items():
        if name in trainer:
            raise ConfigError(f"config key trainer.{name} is set by the key {owner!r}; set {owner}=... instead")


def from_dict(tree: dict) -> RunConfig:
    """RunConfig from a nested dict (a YAML file's content)."""
    tree = dict(tree)
    _check_derived(tree)
    if "trainer" in tree and isinstance(tree["trainer"], dict):
        # Start from the run's trainer defaults, not TrainerConfig's bare ones.
        defaults = {k: v for k, v in dataclasses.asdict(_default_trainer()).items()
                    if k not in DERIVED_TRAINER_FIELDS}
        tree["trainer"] = {**defaults, **tree["trainer"], "model_path": tree.get("model", BUILTIN_MODEL)}
    return build(RunConfig, tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then the `key=value` overrides, in that order."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping (key: value), got {type(loaded).__name__}")
        for key, value in loaded.items():  # shortcuts work in files too
            if key in SHORTCUTS:
                set_dotted(tree, SHORTCUTS[key], value)
            else:
                tree[key] = merge(tree.get(key), value)
    for text in overrides:
        key, value = parse_override(text, SHORTCUTS)
        set_dotted(tree, key, value)
    return from_dict(tree)


def check_paths(cfg: RunConfig) -> None:
    """Files the run reads must exist, and a model folder must hold a config and a tokenizer: fail
    here, before any engine or model starts, with the key that points there."""
    for key, source in (("data.train_data", cfg.data.train_data), ("data.eval_data", cfg.data.eval_data)):
        if source and _is_file_like(source) and not Path(source).expanduser().is_file():
            raise ConfigError(f"config key {key}={source!r}: file not found")
    if not cfg.builtin_model:
        check_model_folder(cfg.model, "model")


def _is_file_like(source: str) -> bool:
    """A data-file suffix or a path prefix: a file, never a hub name (as gvm.data reads it)."""
    return source.lower().endswith(DATA_SUFFIXES) or source.startswith(("/", ".", "~")) or Path(source).exists()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_model_folder(path: str, key: str) -> None:
    """A Hugging Face folder with config.json and a tokenizer, or a ConfigError naming `key`."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"config key {key}={path!r}: not a folder; give a Hugging Face model folder "
                          f"or {BUILTIN_MODEL!r} for the built-in model")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"config key {key}={path!r}: no config.json there; point it to a Hugging Face "
                          f"model folder (save_pretrained output)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"config key {key}={path!r}: the folder has no tokenizer (none of "
                          f"{', '.join(TOKENIZER_FILES)}); save the tokenizer beside the model "
                          f"(tokenizer.save_pretrained)")
