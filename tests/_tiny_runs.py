"""Short real runs of the training loop on the CPU, shared by the loop-level tests: one-digit
sums after a short warm start, so pilot samples are accepted and every phase has work."""
import subprocess
import sys
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "gvm" / "train.py"
TASK = ["task.num_train=64", "task.num_eval=8", "task.levels=[1]", "task.level_weights=[1.0]"]
QUIET = ["log.progress=false", "log.tensorboard=false", "log.plot=false", "rollout.vllm={cpu_kv_cache_bytes: 16777216}"]


def run_script(script: Path, args: list[str], timeout: int = 900) -> str:
    """`python <script> <args>` (gvm/train.py or a test worker); its stdout, or a failure with its logs."""
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def build_warm_model(root: Path, seed: int) -> Path:
    """The tiny model after a 150-step warm start on one-digit sums (about 25 s on 2 cores)."""
    run_script(TRAIN, [f"run_root={root}", "name=warm", f"seed={seed}", *TASK, "iterations=0", "warmstart.steps=150",
                       "rollout.engine=hf", *QUIET])
    return root / "warm" / "final"
