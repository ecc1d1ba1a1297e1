"""The loop owns the memory swap (gvm.colocation): the real training loop on the CPU, where the
trainer's offload and the engine's sleep are logged no-ops that still count, never generates while
the trainer holds its states and never computes with the trainer while the engine is awake - in
the pilot, stage 2, the pilot's training step, the statistics-only pass, the old-log-prob pass,
evaluation and checkpoints, for both engines."""
import json
from pathlib import Path

import pytest
from _tiny_runs import QUIET, TASK, run_script

pytest.importorskip("deepspeed")

WORKER = Path(__file__).resolve().parent / "_phase_worker.py"
SMALL = [*TASK, *QUIET, "iterations=2", "eval.k=1", "eval.every=1", "checkpoint_every=1",
         "data.prompts_per_iteration=8", "sampler.pilot_n=2", "sampler.n_per_prompt=2", "rollout.sampling.max_tokens=16"]
CASES = {  # the paths through the loop: every sampler, the pilot trained on first or thrown away, both engines
    "gvm-vllm": ["rollout.engine=vllm", "sampler.kind=gvm"],
    "gvm-pilot-step-hf": ["rollout.engine=hf", "sampler.kind=gvm", "sampler.pilot_step=true"],
    "gvm-paper-hf": ["rollout.engine=hf", "sampler.kind=gvm", "sampler.reuse_pilot_samples=false",
                     "sampler.zero_accept=skip"],
    "uniform-grpo-hf": ["rollout.engine=hf", "sampler.kind=uniform", "algorithm=grpo"],
    "dapo-hf": ["rollout.engine=hf", "sampler.kind=dapo"],
    "adaptive-grpo-vllm": ["rollout.engine=vllm", "sampler.kind=adaptive", "algorithm=grpo", "sampler.n_per_prompt=4"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_and_trainer_compute_never_overlap(case, warm_model, tmp_path, seed):
    if "vllm" in case:
        pytest.importorskip("vllm")
    stdout = run_script(WORKER, [f"run_root={tmp_path}", f"model={warm_model}", f"seed={seed}", *SMALL, *CASES[case]])
    lines = [x for x in stdout.splitlines() if x.startswith("PHASES ")]
    assert lines, stdout[-3000:]
    seen = json.loads(lines[-1][len("PHASES "):])
    assert seen["violations"] == []
    # The watch saw the work it guards: evaluations (3), pilots and stage-2 rounds, training steps.
    assert seen["generate"] >= 3 + 2 * (2 if case.startswith("gvm") else 1)
    assert seen["compute"].get("train_step", 0) >= 2
    if case.startswith("gvm") and "pilot-step" not in case:   # (pilot_step reads G_i off its training step)
        assert seen["compute"].get("grad_norms", 0) >= 1           # the statistics-only pass for G_i
    assert seen["compute"].get("logprobs", 0) >= 2                 # pi_old for RAFT++ / GRPO
