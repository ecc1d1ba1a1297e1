"""GVM-RAFT training: the paper's Algorithm 1 as one loop.

    python gvm/train.py                                   # built-in default: tiny model, arithmetic task
    deepspeed --num_gpus 2 gvm/train.py --config configs/gvm_raft++.yaml sampler.budget=64
    deepspeed gvm/train.py model=/path/to/hf train_data=train.jsonl eval_data=math500.jsonl

Per iteration t (sampler "gvm"; "uniform" skips stage 1 and samples n per prompt):

    prompts  <- batch t of the training prompts
    stage 1:  N' samples per prompt                            (engine, split over replicas)
              verify -> p_i
              G_i    <- the backward of training on them (reuse_pilot_samples), else
                        trainer.grad_norms (statistics-only pass)
              smooth p_i, G_i with earlier iterations (sampler.stats_ema)
    allocate: n_i = allocate(G, p, N)                           (integers, sum N)
    stage 2:  n_i samples per prompt, verify
    train:    RAFT / RAFT++ / GRPO on them (mini-batches, epochs)
    sync:     push the trainer's weights into the engine
    log:      metrics.jsonl, allocations.jsonl (p_i, G_i, n_i of every prompt), TensorBoard,
              table row; evaluate every eval.every iterations; checkpoint every checkpoint_every

Every sample the engine generates is counted (`samples_generated`, pilot included); `seconds` is
the wall time of the RL loop without evaluation and checkpoints. `main(cfg)` runs on every rank
of a `deepspeed` / `torchrun` launch, or alone as one process.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script (deepspeed gvm/train.py): keep gvm/'s own module names (config, data, eval)
    # from shadowing top-level packages of the same name.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass

import numpy as np

from gvm.config import ConfigError, RunConfig, check_paths, load_config

log = logging.getLogger("gvm.train")

LOOP_STATE = "loop_state.json"


# ---------------------------------------------------------------------------------------------
# Set-up


def _set_threads() -> None:
    """On the CPU, share the cores among the ranks of this node (unless OMP_NUM_THREADS is set)."""
    import torch

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


def prepare_run_dir(cfg: RunConfig, rank: int, resuming: bool) -> Path:
    """The run folder with config.yaml; a fresh run clears the outputs of an earlier one."""
    from gvm import distributed as gdist

    run_dir = cfg.run_dir
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for name in ("tb", "checkpoints", "final"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    gdist.barrier()
    return run_dir


def prepare_model(cfg: RunConfig, run_dir: Path, rank: int) -> Path:
    """The base model folder: `model`, or the built-in tiny model written to run_dir/base_model."""
    from gvm import distributed as gdist

    if not cfg.builtin_model:
        return Path(cfg.model)
    folder = run_dir / "base_model"
    if rank == 0 and not (folder / "config.json").is_file():
        from gvm.toy import build_tiny

        build_tiny(folder, seed=cfg.seed, **cfg.tiny.build_kwargs())
    gdist.barrier()
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        return None
    tag_dir = run_dir / "checkpoints" / latest.read_text().strip()
    return tag_dir if (tag_dir / LOOP_STATE).is_file() else None


# ---------------------------------------------------------------------------------------------
# Samples and training


@dataclass
class TrainData:
    """The samples of a RolloutBatch that enter training, with what each came from."""
    samples: list            # gvm.packing.Sample
    completions: list        # the engine's Completion of each (its log-probs)
    owners: list[int]        # prompt index of each
    rewards: list[float]     # verifier reward of each


def make_samples(batch, algorithm, tag: str, baseline=None) -> TrainData:
    """Training samples of a verified RolloutBatch. Advantages per the algorithm, with each
    prompt's `baseline` rewards (the pilot's) joining its group statistics; only the samples the
    algorithm selects (RAFT: accepted ones) and that hold at least one token are kept."""
    from gvm.algorithms import advantages_with_baseline
    from gvm.packing import Sample

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
    advantages = advantages_with_baseline(algorithm, rewards, groups, base_rewards, base_groups)
    for (i, j), reward, advantage, kept in zip(flat, rewards, advantages, algorithm.select(rewards)):
        completion = batch.completions[i][j]
        if not kept or not completion.token_ids:
            continue
        data.samples.append(Sample(sample_id=f"{tag}/{i}/{j}", prompt_ids=batch.prompts[i].token_ids,
                                   response_ids=completion.token_ids, advantage=float(advantage)))
        data.completions.append(completion)
        data.owners.append(i)
        data.rewards.append(float(reward))
    return data


def with_old_logprobs(trainer, samples: list, completions: list, mismatch) -> tuple[list, dict]:
    """Samples with the trainer's log-probs as pi_old (computed once, so epochs > 1 keep them) and
    the engine/trainer mismatch weights folded into per-token advantages (A * w_t; w > 0, so the
    clipped surrogate scales the same way)."""
    import torch

    from gvm.rollout.mismatch import mismatch_weights, pad_logprobs

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


def train_on(trainer, data: TrainData, algorithm, cfg: RunConfig, rng_key: list[int]) -> dict:
    """cfg.epochs passes of trainer.train_step over the samples (shuffled alike on every rank).
    Returns the last step's scalars and the per-sample gradient norms of the first pass (the
    first mini-batch of an iteration has ratio 1: its norms are exact)."""
    samples = data.samples
    if not samples:
        return {"num_samples": 0, "grad_norms": {}}
    result: dict = {}
    if algorithm.uses_old_logp:
        samples, result["mismatch"] = with_old_logprobs(trainer, samples, data.completions, cfg.rollout.mismatch)
    rng = np.random.default_rng(rng_key)
    norms, exact = None, None
    for _ in range(cfg.epochs):
        metrics = trainer.train_step([samples[i] for i in rng.permutation(len(samples))], algorithm.loss)
        if norms is None:
            norms, exact = metrics["grad_norms"], metrics["grad_norms_exact"]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    result.update(scalars)
    result["grad_norms"] = norms
    result["grad_norms_exact_frac"] = float(np.mean(list(exact.values()))) if exact else math.nan
    return result


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


def allocate_counts(grad, accept, budget: int, sampler) -> tuple[np.ndarray, str]:
    """n_i from gvm.allocation.allocate; when no prompt can take the budget (all unsolved under
    zero_accept="skip", or all filtered) the iteration falls back to an even split, and says so."""
    from gvm.allocation import allocate, allocate_uniform

    try:
        return allocate(grad, accept, budget, **sampler.allocate_kwargs()), "gvm"
    except ValueError as error:
        log.warning("allocation fell back to an even split: %s", error)
        return allocate_uniform(len(accept), budget), "uniform-fallback"


def _spread(counts) -> dict:
    counts = np.asarray(counts)
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max()),
            "zero": int((counts == 0).sum())}


def _train_summary(metrics: dict) -> dict:
    keep = ("loss", "grad_norm", "lr", "clip_frac", "ratio_mean", "approx_kl", "kl_ref", "num_samples",
            "num_tokens", "grad_norms_exact_frac", "time_s")
    out = {k: metrics[k] for k in keep if k in metrics}
    if "mismatch" in metrics:
        out["mismatch_mean_abs_log_ratio"] = metrics["mismatch"]["mismatch/mean_abs_log_ratio"]
    return out


# ---------------------------------------------------------------------------------------------
# The run


def main(cfg: RunConfig) -> dict:
    """Run training as configured (on every rank of a launch). Returns the summary rank 0 prints."""
    # Check everything that can be checked before any work: paths, engine settings.
    check_paths(cfg)
    from gvm.eval import engine_configs

    from gvm.ds_config import resolve_dtype

    engine_name, vllm_config, hf_config = engine_configs(
        cfg.rollout.engine, cfg.rollout.vllm, cfg.rollout.hf, cfg.seed, prefix="rollout.",
        dtype=str(resolve_dtype(cfg.trainer.dtype)).removeprefix("torch."))
    _set_threads()
    from transformers import AutoTokenizer

    from gvm import distributed as gdist
    from gvm.algorithms import get_algorithm
    from gvm.allocation import allocate_uniform
    from gvm.eval import build_engine, evaluate, stop_ids
    from gvm.prompts import PromptBatches, load_rows, to_prompts
    from gvm.rollouts import Rollouts
    from gvm.run_log import PhaseTimer, RunLog, acceptance_histogram
    from gvm.stats import PromptStats
    from gvm.trainer import PolicyTrainer
    from gvm.verify import Verifier
    from gvm.warmstart import is_done, warm_start

    gdist.init_distributed()
    rank = gdist.rank()
    _quiet_libraries(rank)
    wall_start = time.perf_counter()
    resume_from = latest_checkpoint(cfg.run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None and rank == 0:
        log.warning("resume=true but %s holds no checkpoint: starting from scratch", cfg.run_dir / "checkpoints")
    run_dir = prepare_run_dir(cfg, rank, resuming=resume_from is not None)
    runlog = RunLog(run_dir, enabled=rank == 0, tensorboard=cfg.log.tensorboard, table=cfg.log.table,
                    plot=cfg.log.plot, fresh=resume_from is None)
    runlog.print(f"# run {run_dir} (world size {gdist.world_size()}, engine {engine_name})\n{cfg.to_yaml()}")
    algorithm = get_algorithm(cfg.algorithm)

    # Model, tokenizer, prompts.
    base_model = prepare_model(cfg, run_dir, rank)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    train_rows, eval_rows = load_rows(cfg, run_dir / "data" if rank == 0 else None)
    style = cfg.prompt_style
    train_prompts = to_prompts(train_rows, tokenizer, style, max_tokens=cfg.data.max_prompt_tokens, name="train_data")
    eval_prompts = (to_prompts(eval_rows, tokenizer, style, max_tokens=cfg.data.max_prompt_tokens, name="eval_data")
                    if eval_rows else [])
    batches = PromptBatches(train_prompts, cfg.data.prompts_per_iteration, cfg.seed)

    # Supervised warm start (built-in default), so that acceptance rates spread over (0, 1).
    policy_dir, warm_seconds = base_model, 0.0
    warm_dir = run_dir / "warmstart"
    if cfg.warmstart_steps > 0:
        if resume_from is not None or (cfg.resume and is_done(warm_dir)):
            policy_dir = warm_dir if is_done(warm_dir) else base_model
        else:
            start = time.perf_counter()
            policy_dir, losses = warm_start(
                dataclasses.replace(cfg.trainer, model_path=str(base_model)), train_rows, tokenizer, warm_dir,
                steps=cfg.warmstart_steps, batch_size=cfg.warmstart.batch_size, lr=cfg.warmstart.lr,
                warmup_steps=cfg.warmstart.warmup_steps, style=style, solution_key=cfg.warmstart.solution_key,
                seed=cfg.seed, progress=cfg.log.progress and rank == 0)
            warm_seconds = time.perf_counter() - start
            runlog.print(f"warm start: {cfg.warmstart_steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, "
                         f"{warm_seconds:.0f} s")

    # Trainer, engine, verifier.
    trainer = PolicyTrainer(dataclasses.replace(cfg.trainer, model_path=str(policy_dir)), tokenizer)
    engine = build_engine(engine_name, policy_dir, vllm_config, hf_config)
    tp = vllm_config.tensor_parallel_size if engine_name == "vllm" else 1
    rollouts = Rollouts(engine, Verifier(cfg.verifier), tensor_parallel_size=tp, stop_token_ids=stop_ids(policy_dir))
    sampling = cfg.rollout.sampling
    eval_sampling = dataclasses.replace(sampling, temperature=cfg.eval.temperature,
                                        max_tokens=cfg.eval.max_tokens or sampling.max_tokens)
    stats = PromptStats(cfg.sampler.stats_ema)
    budget = cfg.sampler.stage2_budget(cfg.data.prompts_per_iteration)
    gvm_sampler = cfg.sampler.kind == "gvm"
    reuse = gvm_sampler and cfg.sampler.reuse_pilot_samples

    start_iteration, samples_generated, loop_seconds = 0, 0, 0.0
    if resume_from is not None:
        state = json.loads((resume_from / LOOP_STATE).read_text())
        if state.get("world_size", gdist.world_size()) != gdist.world_size():
            raise ConfigError(f"config key resume=true: {resume_from} was written by {state['world_size']} ranks, this "
                              f"launch has {gdist.world_size()}; ZeRO's optimizer state cannot be re-partitioned, "
                              f"so launch with the same number of ranks")
        trainer.load_checkpoint(run_dir / "checkpoints")
        start_iteration, samples_generated, loop_seconds = state["iteration"], state["samples_generated"], state["seconds"]
        stats.load_state_dict(state["stats"])
        rollouts.push_weights(trainer)
        runlog.print(f"resumed from {resume_from} at iteration {start_iteration}")

    def run_eval(iteration: int) -> dict | None:
        if not eval_prompts:
            return None
        start = time.perf_counter()
        result = evaluate(rollouts, eval_prompts, k=cfg.eval.k, sampling=eval_sampling, name="eval")
        return {**result.summary(), "seconds": time.perf_counter() - start}

    def save_checkpoint(next_iteration: int) -> None:
        tag_dir = trainer.save_checkpoint(run_dir / "checkpoints")
        if rank == 0:
            (tag_dir / LOOP_STATE).write_text(json.dumps({
                "iteration": next_iteration, "samples_generated": samples_generated, "seconds": loop_seconds,
                "world_size": gdist.world_size(), "stats": stats.state_dict()}))
        gdist.barrier()

    first_eval = None
    if start_iteration == 0:
        first_eval = run_eval(0)
        runlog.metrics({"iteration": 0, "samples_generated": 0, "seconds": 0.0, "eval": first_eval,
                        "warmstart_seconds": warm_seconds}, step=0)
        if first_eval is not None:
            runlog.print(f"held-out accuracy before RL: {first_eval['accuracy']:.3f} "
                         f"({first_eval['num_prompts']} prompts)")
    bar = None
    if cfg.log.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start_iteration, desc=f"{cfg.algorithm} / {cfg.sampler.kind}",
                   unit="it", dynamic_ncols=True)

    timer = PhaseTimer()
    phases = ((["pilot_rollout", "verify", "train_pilot" if reuse else "grad_norms", "allocate"] if gvm_sampler
               else ["verify"]) + ["rollout", "train", "sync", "eval"])
    if reuse:
        phases.insert(phases.index("allocate"), "grad_norms")  # only for samples the pilot step left out
    last_eval = first_eval
    for it in range(start_iteration, cfg.iterations):
        iteration_start = time.perf_counter()
        prompts = batches.batch(it)
        keys = [p.key for p in prompts]
        row: dict = {"iteration": it + 1}
        audit: dict = {"iteration": it + 1, "sampler": cfg.sampler.kind, "budget": budget, "keys": keys}
        pilot = None

        if gvm_sampler:
            # Stage 1: N' samples per prompt measure the acceptance rate p_i.
            with timer("pilot_rollout"):
                pilot = rollouts.generate(prompts, cfg.sampler.pilot_n, sampling)
            with timer("verify"):
                rollouts.score(pilot)
            samples_generated += pilot.num_samples
            pilot_data = make_samples(pilot, algorithm, f"{it}/pilot")
            trained_norms: dict = {}
            if reuse:
                # The pilot is training data: train on it now, and read G_i off that backward.
                with timer("train_pilot"):
                    pilot_train = train_on(trainer, pilot_data, algorithm, cfg, [cfg.seed, it, 1])
                trained_norms = pilot_train["grad_norms"]
                row["train_pilot"] = _train_summary(pilot_train)
                if pilot_data.samples:
                    with timer("sync"):
                        rollouts.push_weights(trainer)
            # G_i: mean gradient norm over the accepted pilot samples.
            with timer("grad_norms"):
                grad_now = pilot_grad_norms(trainer, pilot_data, trained_norms, len(prompts))
            accept_now = pilot.accept_rates()
            accept, grad = stats.update(keys, accept_now, grad_now, it)
            # Allocate N stage-2 samples: n_i proportional to G_i / sqrt(p_i + alpha p_i^(1 - beta)).
            with timer("allocate"):
                counts, how = allocate_counts(grad, accept, budget, cfg.sampler)
            audit.update(p_pilot=accept_now, G_pilot=grad_now, p=accept, G=grad, allocation=how,
                         allocate_kwargs=cfg.sampler.allocate_kwargs())
            row["pilot_accept_rate"] = float(np.mean(accept_now))
        else:
            counts = allocate_uniform(len(prompts), budget)

        # Stage 2: n_i samples per prompt, verified.
        with timer("rollout"):
            batch = rollouts.generate(prompts, counts, sampling)
        with timer("verify"):
            rollouts.score(batch)
        samples_generated += batch.num_samples

        # Train on them (the pilot's rewards join each prompt's group baseline when reused).
        data = make_samples(batch, algorithm, f"{it}/main", baseline=pilot if reuse else None)
        rollouts.engine.sleep()
        with timer("train"):
            train = train_on(trainer, data, algorithm, cfg, [cfg.seed, it, 2])
        # Push the new weights into the engine.
        with timer("sync"):
            rollouts.push_weights(trainer)
        loop_seconds += time.perf_counter() - iteration_start

        # Log: metrics, the allocation audit, a table row; evaluate and checkpoint on schedule.
        stage2_rates = batch.accept_rates()
        audit.update(n=counts, accepted=[int(sum(r)) for r in batch.rewards])
        runlog.allocation(audit)
        evaluate_now = it + 1 == cfg.iterations or (cfg.eval.every > 0 and (it + 1) % cfg.eval.every == 0)
        if evaluate_now:
            last_eval = run_eval(it + 1)
        hist_rates = audit["p"] if gvm_sampler else stage2_rates
        row.update({
            "samples_generated": samples_generated, "seconds": loop_seconds,
            "wall_seconds": time.perf_counter() - wall_start,
            "eval": (last_eval if evaluate_now else None),
            "accept_rate": float(np.nanmean(stage2_rates)) if batch.num_samples else None,
            "accept_hist": acceptance_histogram(hist_rates),
            "n_per_prompt": _spread(counts),
            "train": _train_summary(train),
            "prompts_tracked": len(stats),
            "time": timer.pop(),
        })
        if evaluate_now and last_eval is not None:
            row["time"]["eval"] = last_eval["seconds"]
        runlog.metrics(row, step=it + 1)
        runlog.table_row(row, phases)
        if bar is not None:
            bar.update(1)
            if last_eval is not None:
                bar.set_postfix(acc=f"{last_eval['accuracy']:.3f}", samples=samples_generated)
        if cfg.checkpoint_every > 0 and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            save_checkpoint(it + 1)

    if bar is not None:
        bar.close()
    # The end: a checkpoint to resume from, the HF folder, the plot.
    if cfg.iterations > start_iteration or resume_from is None:
        save_checkpoint(cfg.iterations)
    final_dir = trainer.save_hf(run_dir / "final")
    plot = runlog.plot(title=f"{cfg.algorithm} / {cfg.sampler.kind}")
    summary = {
        "run_dir": str(run_dir), "final_model": str(final_dir), "iterations": cfg.iterations,
        "accuracy_before": first_eval["accuracy"] if first_eval else None,
        "accuracy_final": last_eval["accuracy"] if last_eval else None,
        "samples_generated": samples_generated, "seconds": loop_seconds,
        "warmstart_seconds": warm_seconds, "wall_seconds": time.perf_counter() - wall_start,
        "plot": str(plot) if plot else None,
    }
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        before = f"{summary['accuracy_before']:.3f}" if summary["accuracy_before"] is not None else "-"
        after = f"{summary['accuracy_final']:.3f}" if summary["accuracy_final"] is not None else "-"
        runlog.print(f"held-out accuracy {before} -> {after} after {cfg.iterations} iterations, "
                     f"{samples_generated} samples generated, {loop_seconds:.0f} s of RL "
                     f"({summary['wall_seconds']:.0f} s in all); model in {final_dir}")
    runlog.close()
    rollouts.close()
    return summary


def parse_args(argv: list[str] | None = None) -> RunConfig:
    from gvm.distributed import add_launcher_args

    parser = add_launcher_args(argparse.ArgumentParser(
        prog="gvm/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--config", help="YAML file (configs/*.yaml); keys it leaves out keep their defaults")
    parser.add_argument("overrides", nargs="*", help="key=value, dotted into sections: sampler.budget=64")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides)


if __name__ == "__main__":
    try:
        main(parse_args())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
