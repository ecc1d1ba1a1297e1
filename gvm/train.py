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

from gvm.allocation import predicted_variance_ratio
from gvm.config import ConfigError, RunConfig, load_config
from gvm.distributed import add_launcher_args, shutdown
from gvm.eval import evaluate
from gvm.failpoints import failpoint
from gvm.loop_state import save_checkpoint
from gvm.replay import joined
from gvm.run_log import acceptance_histogram, count_spread
from gvm.run_setup import Run, start_run
from gvm.samplers import Collected
from gvm.stages import TrainData, make_samples, train_on, train_summary, unweighted_norms, useful_samples


def main(cfg: RunConfig) -> dict:
    """Run training as configured (on every rank of a launch). Returns the summary rank 0 prints."""
    run = start_run(cfg)
    swap, timer, state = run.swap, run.timer, run.state
    first_eval = last_eval = evaluate_before_rl(run) if state.iteration == 0 else None
    bar = tqdm(total=cfg.iterations, initial=state.iteration, desc=f"{cfg.algorithm} / {cfg.sampler.kind}", unit="it",
               dynamic_ncols=True, disable=not (cfg.log.progress and run.rank == 0))
    for it in range(state.iteration, cfg.iterations):
        iteration_start = time.perf_counter()
        # Stages 1 and 2 (gvm.samplers; "gvm" is the paper's): a pilot of N' samples per prompt
        # measures p_i and G_i, allocate() shares the budget, n_i more samples per prompt are
        # generated and verified. Every generated sample is counted.
        collected = run.sampler.collect(it)
        state.samples_generated += collected.generated
        state.prompts_drawn = run.stream.position

        # Train on them (RAFT / RAFT++ / GRPO), then push the new weights into the engine.
        # With sampler.replay, earlier iterations' gradient-carrying samples join the batch (gvm.replay).
        data = make_samples(collected.batch, run.algorithm, f"{it}/main", baseline=collected.baseline,
                            reweight=cfg.sampler.reweight)
        replayed = run.replay.data()
        collected.row["replayed"] = len(replayed.samples)
        with swap.training(), timer("train"):
            train = train_on(run.trainer, joined(data, replayed), run.algorithm, epochs=cfg.epochs,
                             mismatch=cfg.rollout.mismatch, rng_key=[cfg.seed, it, 2])
        failpoint("train")
        run.replay.add(data)
        run.sampler.observe_training([p.key for p in collected.batch.prompts], data.owners,
                                     unweighted_norms(train["grad_norms"], data))
        swap.sync()
        state.seconds += time.perf_counter() - iteration_start
        state.iteration = it + 1

        # Log: metrics, the allocation audit, a table row; evaluate and checkpoint on schedule.
        run.log.allocation({"iteration": it + 1, "sampler": cfg.sampler.kind, **collected.audit,
                            "accepted": collected.batch.accepted_per_prompt()})
        last_eval = log_iteration(run, collected, data, train, last_eval)
        bar.update(1)
        if last_eval is not None:
            bar.set_postfix(acc=f"{last_eval['accuracy']:.3f}", samples=state.samples_generated)
        if cfg.checkpoint_every > 0 and state.iteration % cfg.checkpoint_every == 0 and state.iteration < cfg.iterations:
            checkpoint(run)
    bar.close()
    return finish_run(run, first_eval, last_eval)


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
    failpoint("eval")
    return {**result.summary(), "seconds": time.perf_counter() - start}


def evaluate_before_rl(run: Run) -> dict | None:
    """Iteration 0: the held-out accuracy of the starting policy, logged as the first metrics row."""
    result = held_out_eval(run)
    run.log.metrics({"iteration": 0, "samples_generated": 0, "seconds": 0.0, "eval": result,
                     "warmstart_seconds": run.warm_seconds}, step=0)
    if result is not None:
        run.log.print(f"held-out accuracy before RL: {result['accuracy']:.3f} ({result['num_prompts']} prompts)")
    return result


def log_iteration(run: Run, collected: Collected, data: TrainData, train: dict, last_eval: dict | None) -> dict | None:
    """Evaluate when scheduled, then write the iteration's metrics row and table line. Returns the
    latest evaluation."""
    cfg, state, batch = run.cfg, run.state, collected.batch
    evaluate_now = state.iteration == cfg.iterations or (cfg.eval.every > 0 and state.iteration % cfg.eval.every == 0)
    if evaluate_now:
        last_eval = held_out_eval(run)
    rates = collected.estimates[0] if collected.estimates is not None else batch.accept_rates()
    useful = useful_samples(data) + collected.useful_trained
    row = {
        "iteration": state.iteration, **collected.row,
        "samples_generated": state.samples_generated, "seconds": state.seconds,
        "wall_seconds": time.perf_counter() - run.wall_start,
        "eval": (last_eval if evaluate_now else None),
        "accept_rate": float(np.nanmean(batch.accept_rates())) if batch.num_samples else None,
        "accept_hist": acceptance_histogram(rates),
        "n_per_prompt": count_spread(collected.counts_used) if len(collected.counts_used) else None,
        "samples": collected.generated,
        "useful_fraction": useful / collected.generated if collected.generated else None,
        "R_pred": predicted_ratio(run, collected),
        "train": train_summary(train),
        "prompts_tracked": len(run.stats),
        "epochs_of_prompts": run.stream.epochs,
        "time": run.timer.pop(),
    }
    if evaluate_now and last_eval is not None:
        row["time"]["eval"] = last_eval["seconds"]
    run.log.metrics(row, step=state.iteration)
    run.log.table_row(row, phases(cfg))
    failpoint("log")
    return last_eval


def predicted_ratio(run: Run, collected: Collected) -> float:
    """R_pred: the allocation's predicted estimator variance against an even split of the same
    samples over the same prompts (1 for samplers that split evenly: uniform, and dapo over the
    prompts it drew)."""
    if collected.estimates is None:
        return 1.0
    rates, grad = collected.estimates
    sampler = run.cfg.sampler
    return predicted_variance_ratio(grad, rates, collected.counts_used, collected.generated, alpha=sampler.alpha,
                                    beta=sampler.beta, objective=sampler.objective_for(run.cfg.algorithm))


def phases(cfg: RunConfig) -> list[str]:
    """The table's phase columns, in loop order."""
    sampler = cfg.sampler
    if sampler.kind in ("uniform", "dapo", "screened"):
        return ["rollout", "verify", "train", "sync", "eval"]
    if sampler.kind == "adaptive":
        return ["pilot_rollout", "rollout", "verify", "train", "sync", "eval"]
    pilot = ["pilot_rollout", "verify"] + (["train_pilot"] if sampler.pilot_step else []) + ["grad_norms"]
    return pilot + ["allocate", "rollout", "train", "sync", "eval"]


def checkpoint(run: Run) -> None:
    """A checkpoint of the loop as it stands (gvm.loop_state: whole or absent)."""
    state = run.state
    state.stats = run.stats.state_dict()
    state.replay = run.replay.state_dict()
    state.wall_seconds = time.perf_counter() - run.wall_start
    with run.swap.training():
        save_checkpoint(run.trainer, run.rollouts, run.run_dir, state, run.cfg.checkpoint_keep)


def finish_run(run: Run, first_eval: dict | None, last_eval: dict | None) -> dict:
    """The last checkpoint (to resume from), the HF folder, the plot and the summary of the whole
    run (earlier launches of a resumed run included)."""
    cfg, state = run.cfg, run.state
    checkpoint(run)
    with run.swap.training():
        final_dir = run.trainer.save_hf(run.run_dir / "final")
    plot = run.log.plot(title=f"{cfg.algorithm} / {cfg.sampler.kind}")
    evaluations = [r for r in run.log.history if r.get("eval")]
    first = evaluations[0]["eval"] if evaluations and evaluations[0]["iteration"] == 0 else first_eval
    last = evaluations[-1]["eval"] if evaluations else last_eval
    summary = {
        "run_dir": str(run.run_dir), "final_model": str(final_dir), "iterations": cfg.iterations,
        "accuracy_before": first["accuracy"] if first else None,
        "accuracy_final": last["accuracy"] if last else None,
        "samples_generated": state.samples_generated, "seconds": state.seconds,
        "warmstart_seconds": next((r.get("warmstart_seconds", 0.0) for r in run.log.history if r["iteration"] == 0),
                                  run.warm_seconds),
        "wall_seconds": time.perf_counter() - run.wall_start, "plot": str(plot) if plot else None,
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
    finally:
        shutdown()
