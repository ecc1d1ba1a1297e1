"""GVM-RAFT training: the paper's Algorithm 1 as one loop.

    python gvm/train.py                                   # built-in default: tiny model, arithmetic task
    deepspeed --num_gpus 2 gvm/train.py --config configs/paper_gvm_raft++.yaml model=/path/to/hf
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

The trainer and the engine hand the accelerator to each other (gvm.colocation): the trainer
offloads before every generation, the engine sleeps before every trainer computation. Every
sample the engine generates is counted (`samples_generated`, pilot included); `seconds` is the
wall time of the RL loop without evaluation and checkpoints. `main(cfg)` runs on every rank of a
`deepspeed` / `torchrun` launch, or alone as one process; the set-up is gvm.run_setup.
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
import time

import numpy as np
from tqdm import tqdm

from gvm.allocation import allocate_uniform
from gvm.config import ConfigError, RunConfig, load_config
from gvm.distributed import add_launcher_args
from gvm.eval import evaluate
from gvm.loop_state import save_checkpoint
from gvm.rollouts import RolloutBatch
from gvm.run_log import acceptance_histogram, count_spread
from gvm.run_setup import Run, start_run
from gvm.stages import allocate_counts, make_samples, pilot_grad_norms, train_on, train_summary


def main(cfg: RunConfig) -> dict:
    """Run training as configured (on every rank of a launch). Returns the summary rank 0 prints."""
    run = start_run(cfg)
    rollouts, swap, timer, state, sampler = run.rollouts, run.swap, run.timer, run.state, cfg.sampler
    gvm_sampler, sampling = sampler.kind == "gvm", cfg.rollout.sampling
    budget = sampler.stage2_budget(cfg.data.prompts_per_iteration)
    first_eval = last_eval = evaluate_before_rl(run) if state.iteration == 0 else None
    bar = tqdm(total=cfg.iterations, initial=state.iteration, desc=f"{cfg.algorithm} / {sampler.kind}", unit="it",
               dynamic_ncols=True, disable=not (cfg.log.progress and run.rank == 0))
    for it in range(state.iteration, cfg.iterations):
        iteration_start = time.perf_counter()
        prompts = run.batches.batch(it)
        keys = [p.key for p in prompts]
        row: dict = {"iteration": it + 1}
        audit: dict = {"iteration": it + 1, "sampler": sampler.kind, "budget": budget, "keys": keys}
        pilot = None
        if gvm_sampler:
            # Stage 1: N' samples per prompt measure the acceptance rate p_i ...
            with swap.generation(), timer("pilot_rollout"):
                pilot = rollouts.generate(prompts, sampler.pilot_n, sampling)
            with timer("verify"):
                rollouts.score(pilot)
            state.samples_generated += pilot.num_samples
            # ... and their gradients the scale G_i (training on them first when they are reused).
            grad_now = pilot_statistics(run, pilot, it, row)
            accept_now = pilot.accept_rates()
            accept, grad = run.stats.update(keys, accept_now, grad_now, it)
            # Allocate N stage-2 samples: n_i proportional to G_i / sqrt(p_i + alpha p_i^(1 - beta)).
            with timer("allocate"):
                counts, how = allocate_counts(grad, accept, budget, sampler)
            audit.update(p_pilot=accept_now, G_pilot=grad_now, p=accept, G=grad, allocation=how,
                         allocate_kwargs=sampler.allocate_kwargs())
            row["pilot_accept_rate"] = float(np.mean(accept_now))
        else:
            counts = allocate_uniform(len(prompts), budget)

        # Stage 2: n_i samples per prompt, verified.
        with swap.generation(), timer("rollout"):
            batch = rollouts.generate(prompts, counts, sampling)
        with timer("verify"):
            rollouts.score(batch)
        state.samples_generated += batch.num_samples

        # Train on them (the pilot's rewards join each prompt's group baseline when reused), then
        # push the new weights into the engine.
        data = make_samples(batch, run.algorithm, f"{it}/main", baseline=pilot if sampler.reuses_pilot else None)
        with swap.training(), timer("train"):
            train = train_on(run.trainer, data, run.algorithm, epochs=cfg.epochs, mismatch=cfg.rollout.mismatch,
                             rng_key=[cfg.seed, it, 2])
        swap.sync()
        state.seconds += time.perf_counter() - iteration_start
        state.iteration = it + 1

        # Log: metrics, the allocation audit, a table row; evaluate and checkpoint on schedule.
        audit.update(n=counts, accepted=[int(sum(r)) for r in batch.rewards])
        run.log.allocation(audit)
        last_eval = log_iteration(run, row, batch, counts, audit, train, last_eval)
        bar.update(1)
        if last_eval is not None:
            bar.set_postfix(acc=f"{last_eval['accuracy']:.3f}", samples=state.samples_generated)
        if cfg.checkpoint_every > 0 and state.iteration % cfg.checkpoint_every == 0 and state.iteration < cfg.iterations:
            checkpoint(run)
    bar.close()
    return finish_run(run, first_eval, last_eval)


def pilot_statistics(run: Run, pilot: RolloutBatch, it: int, row: dict) -> np.ndarray:
    """G_i of this iteration's pilot (NaN where nothing was accepted). With reuse_pilot_samples the
    pilot is training data: train on it now and read G_i off that backward (the next generation
    pushes the new weights into the engine)."""
    cfg, timer = run.cfg, run.timer
    pilot_data = make_samples(pilot, run.algorithm, f"{it}/pilot")
    trained_norms: dict = {}
    with run.swap.training():
        if cfg.sampler.reuses_pilot:
            with timer("train_pilot"):
                pilot_train = train_on(run.trainer, pilot_data, run.algorithm, epochs=cfg.epochs,
                                       mismatch=cfg.rollout.mismatch, rng_key=[cfg.seed, it, 1])
            trained_norms = pilot_train["grad_norms"]
            row["train_pilot"] = train_summary(pilot_train)
        with timer("grad_norms"):  # only for accepted samples the pilot step left out
            return pilot_grad_norms(run.trainer, pilot_data, trained_norms, len(pilot.prompts))


def held_out_eval(run: Run) -> dict | None:
    """avg@k / pass@k on the held-out prompts (None without them), with its seconds."""
    if not run.eval_prompts:
        return None
    cfg = run.cfg
    eval_sampling = dataclasses.replace(cfg.rollout.sampling, temperature=cfg.eval.temperature,
                                        max_tokens=cfg.eval.max_tokens or cfg.rollout.sampling.max_tokens)
    start = time.perf_counter()
    with run.swap.generation():
        result = evaluate(run.rollouts, run.eval_prompts, k=cfg.eval.k, sampling=eval_sampling, name="eval")
    return {**result.summary(), "seconds": time.perf_counter() - start}


def evaluate_before_rl(run: Run) -> dict | None:
    """Iteration 0: the held-out accuracy of the starting policy, logged as the first metrics row."""
    result = held_out_eval(run)
    run.log.metrics({"iteration": 0, "samples_generated": 0, "seconds": 0.0, "eval": result,
                     "warmstart_seconds": run.warm_seconds}, step=0)
    if result is not None:
        run.log.print(f"held-out accuracy before RL: {result['accuracy']:.3f} ({result['num_prompts']} prompts)")
    return result


def log_iteration(run: Run, row: dict, batch: RolloutBatch, counts, audit: dict, train: dict,
                  last_eval: dict | None) -> dict | None:
    """Evaluate when scheduled, then write the iteration's metrics row and table line. Returns the
    latest evaluation."""
    cfg, state = run.cfg, run.state
    evaluate_now = state.iteration == cfg.iterations or (cfg.eval.every > 0 and state.iteration % cfg.eval.every == 0)
    if evaluate_now:
        last_eval = held_out_eval(run)
    stage2_rates = batch.accept_rates()
    row.update({
        "samples_generated": state.samples_generated, "seconds": state.seconds,
        "wall_seconds": time.perf_counter() - run.wall_start,
        "eval": (last_eval if evaluate_now else None),
        "accept_rate": float(np.nanmean(stage2_rates)) if batch.num_samples else None,
        "accept_hist": acceptance_histogram(audit["p"] if "p" in audit else stage2_rates),
        "n_per_prompt": count_spread(counts),
        "train": train_summary(train),
        "prompts_tracked": len(run.stats),
        "time": run.timer.pop(),
    })
    if evaluate_now and last_eval is not None:
        row["time"]["eval"] = last_eval["seconds"]
    run.log.metrics(row, step=state.iteration)
    run.log.table_row(row, phases(cfg))
    return last_eval


def phases(cfg: RunConfig) -> list[str]:
    """The table's phase columns, in loop order."""
    if cfg.sampler.kind != "gvm":
        return ["verify", "rollout", "train", "sync", "eval"]
    pilot = ["pilot_rollout", "verify"] + (["train_pilot"] if cfg.sampler.reuses_pilot else []) + ["grad_norms"]
    return pilot + ["allocate", "rollout", "train", "sync", "eval"]


def checkpoint(run: Run) -> None:
    run.state.stats = run.stats.state_dict()
    with run.swap.training():
        save_checkpoint(run.trainer, run.run_dir, run.state)


def finish_run(run: Run, first_eval: dict | None, last_eval: dict | None) -> dict:
    """The last checkpoint (to resume from), the HF folder, the plot and the summary."""
    cfg, state = run.cfg, run.state
    checkpoint(run)
    with run.swap.training():
        final_dir = run.trainer.save_hf(run.run_dir / "final")
    plot = run.log.plot(title=f"{cfg.algorithm} / {cfg.sampler.kind}")
    summary = {
        "run_dir": str(run.run_dir), "final_model": str(final_dir), "iterations": cfg.iterations,
        "accuracy_before": first_eval["accuracy"] if first_eval else None,
        "accuracy_final": last_eval["accuracy"] if last_eval else None,
        "samples_generated": state.samples_generated, "seconds": state.seconds,
        "warmstart_seconds": run.warm_seconds, "wall_seconds": time.perf_counter() - run.wall_start,
        "plot": str(plot) if plot else None,
    }
    if run.rank == 0:
        (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        before = f"{summary['accuracy_before']:.3f}" if summary["accuracy_before"] is not None else "-"
        after = f"{summary['accuracy_final']:.3f}" if summary["accuracy_final"] is not None else "-"
        run.log.print(f"held-out accuracy {before} -> {after} after {cfg.iterations} iterations, "
                      f"{state.samples_generated} samples generated, {state.seconds:.0f} s of RL "
                      f"({summary['wall_seconds']:.0f} s in all); model in {final_dir}")
    run.log.close()
    run.rollouts.close()
    return summary


def parse_args(argv: list[str] | None = None) -> RunConfig:
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
