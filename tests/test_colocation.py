"""The loop owns the memory swap (gvm.colocation): the real training loop on the CPU, where the
trainer's offload and the engine's sleep are logged no-ops that still count, never generates while
the trainer holds its states and never computes with the trainer while the engine is awake - in
the pilot, stage 2, the pilot's training step, the statistics-only pass, the old-log-prob pass,
evaluation and checkpoints, for both engines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("deepspeed")

WORKER = Path(__file__).resolve().parent / "_phase_worker.py"
# One-digit sums after a short warm start: pilot samples are accepted, so every phase has work.
TASK = ["task.num_train=64", "task.num_eval=8", "task.levels=[1]", "task.level_weights=[1.0]"]
SMALL = [*TASK, "iterations=2", "eval.k=1", "eval.every=1", "checkpoint_every=1", "data.prompts_per_iteration=8",
         "sampler.pilot_n=2", "sampler.n_per_prompt=2", "rollout.sampling.max_tokens=16", "log.progress=false",
         "log.tensorboard=false", "log.plot=false", "rollout.vllm={cpu_kv_cache_bytes: 16777216}"]
CASES = {  # the paths through the loop: pilot reused (trained on) or thrown away, uniform, GRPO
    "gvm-reuse-vllm": ["rollout.engine=vllm"],
    "gvm-paper-hf": ["rollout.engine=hf", "sampler.reuse_pilot_samples=false", "sampler.zero_accept=skip"],
    "uniform-grpo-hf": ["rollout.engine=hf", "sampler.kind=uniform", "algorithm=grpo"],
}


def _run(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory, module_seed) -> Path:
    root = tmp_path_factory.mktemp("warm")
    _run([f"run_root={root}", "name=warm", f"seed={module_seed}", *TASK, "iterations=0", "warmstart.steps=150",
          "rollout.engine=hf", "log.progress=false", "log.tensorboard=false", "log.plot=false"])
    return root / "warm" / "final"


@pytest.mark.parametrize("case", sorted(CASES))
def test_generation_and_trainer_compute_never_overlap(case, warm_model, tmp_path, seed):
    if "vllm" in case:
        pytest.importorskip("vllm")
    stdout = _run([f"run_root={tmp_path}", f"model={warm_model}", f"seed={seed}", *SMALL, *CASES[case]])
    lines = [x for x in stdout.splitlines() if x.startswith("PHASES ")]
    assert lines, stdout[-3000:]
    seen = json.loads(lines[-1][len("PHASES "):])
    assert seen["violations"] == []
    # The watch saw the work it guards: evaluations (3), pilots and stage-2 rounds, training steps.
    assert seen["generate"] >= 3 + 2 * (1 if "uniform" in case else 2)
    assert seen["compute"].get("train_step", 0) >= 2
    if case == "gvm-paper-hf":
        assert seen["compute"].get("grad_norms", 0) >= 1           # the statistics-only pass
    if "reuse" in case or "grpo" in case:
        assert seen["compute"].get("logprobs", 0) >= 2             # pi_old for RAFT++ / GRPO
