"""Everything a training run builds before its first iteration, in the order it must happen:
checks, the process group, the run folder (gvm.run_folder) and its log, the model folder, the
prompts, the supervised warm start, the trainer, the engine and verifier, and the state of a
resumed run.

`start_run(cfg)` returns a `Run` holding them; `gvm.train.main` is the loop over it. Every rank
calls it (collective).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from gvm import distributed as gdist
from gvm.algorithms import Algorithm, get_algorithm
from gvm.colocation import Colocation
from gvm.config import ConfigError, RunConfig, check_paths
from gvm.ds_config import resolve_dtype
from gvm.engines.factory import EngineSpec, context_length, model_stop_ids, resolve_engine
from gvm.failpoints import check_environment as check_failpoint_environment
from gvm.loop_state import LoopState, load_checkpoint, peek_iteration
from gvm.prompts import Prompt, PromptStream, load_rows, prompt_budget, to_prompts
from gvm.replay import ReplayBuffer
from gvm.rollouts import Rollouts
from gvm.run_folder import apply_launch, plan_launch
from gvm.run_log import PhaseTimer, RunLog
from gvm.samplers import Sampler, SamplerContext, make_sampler
from gvm.stats import PromptStats
from gvm.toy import build_tiny
from gvm.trainer import PolicyTrainer
from gvm.verify import Verifier
from gvm.wandb_log import WandbLog
from gvm.warmstart import is_done, warm_start

log = logging.getLogger("gvm.train")


@dataclass
class Run:
    """The parts of a training run (see the module docstring)."""
    cfg: RunConfig
    run_dir: Path
    log: RunLog
    algorithm: Algorithm
    eval_prompts: list[Prompt]
    stream: PromptStream         # the training prompts, in the order the samplers draw them
    sampler: Sampler
    trainer: PolicyTrainer
    rollouts: Rollouts
    swap: Colocation             # who holds the accelerator: trainer or engine
    timer: PhaseTimer
    stats: PromptStats
    replay: ReplayBuffer         # earlier iterations' samples that join each training batch (sampler.replay)
    state: LoopState
    wall_start: float            # time.perf_counter() at the run's start (earlier launches included)
    warm_seconds: float = 0.0    # the warm start's wall time (0 when none ran now)

    @property
    def rank(self) -> int:
        return gdist.rank()


def start_run(cfg: RunConfig) -> Run:
    """Build the run (see the module docstring); fails before any work on bad paths or settings, a
    used run folder, or a resume whose settings differ from the checkpoint's."""
    check_paths(cfg)
    try:
        check_failpoint_environment()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    spec = resolve_engine(cfg.rollout.engine, cfg.rollout.vllm, cfg.rollout.hf, seed=cfg.seed, prefix="rollout.",
                          dtype=str(resolve_dtype(cfg.trainer.dtype)).removeprefix("torch."))
    _set_threads()
    gdist.init_distributed()
    rank = gdist.rank()
    _quiet_libraries(rank)
    launch = plan_launch(cfg)
    apply_launch(cfg, launch)
    run_dir, resume_from = launch.run_dir, launch.resume_from
    wandb = (WandbLog(run_dir, project=cfg.log.wandb_project, name=cfg.log.wandb_name or cfg.name,
                      tags=cfg.log.wandb_tags, config=cfg.to_dict()) if cfg.log.wandb and rank == 0 else None)
    runlog = RunLog(run_dir, enabled=rank == 0, tensorboard=cfg.log.tensorboard, table=cfg.log.table,
                    plot=cfg.log.plot, resume_at=peek_iteration(resume_from) if resume_from is not None else None,
                    wandb=wandb)
    runlog.print(f"# run {run_dir} (world size {gdist.world_size()}, engine {spec.name})\n{cfg.to_yaml()}")

    base_model = prepare_model(cfg, run_dir, rank)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    train_rows, train_prompts, eval_prompts = prepare_prompts(cfg, base_model, run_dir, tokenizer)
    policy_dir, warm_seconds = run_warm_start(cfg, base_model, run_dir, train_rows, tokenizer, runlog,
                                              resuming=resume_from is not None)

    trainer = PolicyTrainer(dataclasses.replace(cfg.trainer, model_path=str(policy_dir)), tokenizer)
    rollouts = build_rollouts(spec, policy_dir, cfg)
    timer = PhaseTimer()
    swap = Colocation(trainer, rollouts, timer)
    stats, state = PromptStats(cfg.sampler.stats_ema), LoopState(world_size=gdist.world_size())
    replay = ReplayBuffer(cfg.sampler.replay)
    if resume_from is not None:
        state = load_checkpoint(trainer, rollouts, run_dir, resume_from)
        stats.load_state_dict(state.stats)
        replay.load_state_dict(state.replay)
        swap.sync()          # the engine was built from the warm start, not the checkpoint
        timer.pop()
        runlog.print(f"resumed from {resume_from} at iteration {state.iteration}")
    state.config = cfg.to_dict()
    stream = PromptStream(train_prompts, cfg.seed, position=state.prompts_drawn)
    algorithm = get_algorithm(cfg.algorithm)
    sampler = make_sampler(SamplerContext(cfg=cfg, algorithm=algorithm, rollouts=rollouts, swap=swap, timer=timer,
                                          trainer=trainer, stream=stream, stats=stats))
    return Run(cfg=cfg, run_dir=run_dir, log=runlog, algorithm=algorithm, eval_prompts=eval_prompts, stream=stream,
               sampler=sampler, trainer=trainer, rollouts=rollouts, swap=swap, timer=timer, stats=stats, replay=replay,
               state=state,
               wall_start=time.perf_counter() - state.wall_seconds, warm_seconds=warm_seconds)


def prepare_prompts(cfg: RunConfig, model_dir: Path, run_dir: Path, tokenizer
                    ) -> tuple[list[dict], list[Prompt], list[Prompt]]:
    """(training rows, training prompts, held-out prompts), tokenized once. A prompt over the budget (data.max_prompt_tokens,
    and room for the response in the model's context) would crash the engine: training drops it,
    evaluation counts it unanswered; both say how many."""
    train_rows, eval_rows = load_rows(cfg, run_dir / "data" if gdist.rank() == 0 else None)
    context = context_length(model_dir, cfg.rollout.vllm.get("max_model_len"))
    style, limit = cfg.prompt_style, cfg.data.max_prompt_tokens
    train_budget = prompt_budget(limit, context, cfg.rollout.sampling.max_tokens)
    eval_budget = prompt_budget(limit, context, cfg.eval.max_tokens or cfg.rollout.sampling.max_tokens)
    train = to_prompts(train_rows, tokenizer, style, max_tokens=train_budget, name="train_data")
    held_out = (to_prompts(eval_rows, tokenizer, style, max_tokens=eval_budget, name="eval_data", keep_too_long=True)
                if eval_rows else [])
    if len(train) < cfg.data.prompts_per_iteration:
        raise ConfigError(f"config key data.prompts_per_iteration={cfg.data.prompts_per_iteration}: exceeds the "
                          f"{len(train)} training prompts")
    return train_rows, train, held_out


def run_warm_start(cfg: RunConfig, base_model: Path, run_dir: Path, train_rows: list[dict], tokenizer,
                   runlog: RunLog, *, resuming: bool) -> tuple[Path, float]:
    """The folder RL starts from and the warm start's seconds: the supervised warm start (built-in
    default), done now or found done in the run folder, else the base model itself."""
    warm_dir = run_dir / "warmstart"
    if cfg.warmstart_steps == 0:
        return base_model, 0.0
    if resuming or is_done(warm_dir):
        return (warm_dir if is_done(warm_dir) else base_model), 0.0
    start = time.perf_counter()
    policy_dir, losses = warm_start(
        dataclasses.replace(cfg.trainer, model_path=str(base_model)), cfg.warmstart, train_rows, tokenizer, warm_dir,
        steps=cfg.warmstart_steps, style=cfg.prompt_style, seed=cfg.seed, progress=cfg.log.progress and gdist.rank() == 0)
    seconds = time.perf_counter() - start
    runlog.print(f"warm start: {cfg.warmstart_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {seconds:.0f} s")
    return policy_dir, seconds


def build_rollouts(spec: EngineSpec, policy_dir: Path, cfg: RunConfig) -> Rollouts:
    """The engine on the policy's folder, with the verifier (its workers started now, so the first
    iteration does not pay their imports), as one Rollouts over all ranks."""
    verifier = Verifier(cfg.verifier).start()
    log.info("verifier: %d worker process(es) on rank %d, pids %s", cfg.verifier.num_workers, gdist.rank(),
             verifier.worker_pids())
    return Rollouts(spec.build(policy_dir), verifier, tensor_parallel_size=spec.tensor_parallel_size,
                    stop_token_ids=model_stop_ids(policy_dir))


def prepare_model(cfg: RunConfig, run_dir: Path, rank: int) -> Path:
    """The base model folder: `model`, or the built-in tiny model written to run_dir/base_model."""
    if not cfg.builtin_model:
        return Path(cfg.model)
    folder = run_dir / "base_model"
    if rank == 0 and not (folder / "config.json").is_file():
        build_tiny(folder, seed=cfg.seed, **dataclasses.asdict(cfg.tiny))
    gdist.barrier()
    return folder


def _set_threads() -> None:
    """On the CPU, share the cores among the ranks of this node (unless OMP_NUM_THREADS is set)."""
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def _quiet_libraries(rank: int) -> None:
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("DeepSpeed", "deepspeed", "vllm", "torch.distributed", "httpx", "gvm.trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch's c10d logger repeats this every step of DeepSpeed's ZeRO-3 collectives.
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.", category=FutureWarning)
