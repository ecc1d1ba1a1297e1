"""Short real runs of the training loop on the CPU, shared by the loop-level tests: one-digit
sums after a short warm start, so pilot samples are accepted and every phase has work."""
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1] / "gvm" / "train.py"
TASK = ["task.num_train=64", "task.num_eval=8", "task.levels=[1]", "task.level_weights=[1.0]"]
QUIET = ["log.progress=false", "log.tensorboard=false", "log.plot=false", "rollout.vllm={cpu_kv_cache_bytes: 16777216}"]


def run_process_group(command: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True) in a session of its own, which a
    timeout kills whole: subprocess.run kills only the launcher, and torchrun's ranks (or train.py's
    verifier workers) would live on, holding the cores and the two-rank lock's shm segments."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr) from None
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def run_script(script: Path, args: list[str], timeout: int = 900) -> str:
    """`python <script> <args>` (gvm/train.py or a test worker); its stdout, or a failure with its logs."""
    proc = run_process_group([sys.executable, str(script), *args], timeout=timeout)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def build_warm_model(root: Path, seed: int) -> Path:
    """The tiny model after a 150-step warm start on one-digit sums (about 25 s on 2 cores)."""
    run_script(TRAIN, [f"run_root={root}", "name=warm", f"seed={seed}", *TASK, "iterations=0", "warmstart.steps=150",
                       "rollout.engine=hf", *QUIET])
    return root / "warm" / "final"


@contextlib.contextmanager
def one_two_rank_vllm_group_at_a_time():
    """Held around a launch whose two ranks form one vLLM group. vLLM's CPU communicator names its
    /dev/shm segments after the rendezvous ("env://" under torchrun), not the port, so two such
    groups at once (pytest-xdist workers) would open each other's segments."""
    with open(Path(tempfile.gettempdir()) / "gvm-tests-two-rank-vllm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
