"""gvm.distributed's process-group start in a single process (a subprocess each: the group is
global state): a port it picked itself that is taken by the time the store binds it is replaced;
C++-extension build locks left by killed builds are removed. And the tests' own launcher kills a
timed-out launch whole."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _tiny_runs import run_process_group

import gvm.distributed as gdist

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, socket
    import torch.distributed as dist
    import gvm.distributed as gdist

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    picks = iter([taken])
    free = gdist._free_port
    gdist._free_port = lambda: next(picks, None) or free()     # the first pick is a taken port
    gdist.init_distributed()
    assert dist.is_initialized() and dist.get_world_size() == 1
    assert os.environ["MASTER_PORT"] != str(taken), os.environ["MASTER_PORT"]
    gdist.shutdown()
    print("STARTED")
""")


def test_a_taken_port_of_its_own_choosing_is_replaced():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "MASTER_PORT", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "STARTED" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_stale_extension_build_locks_are_removed_and_fresh_ones_kept(tmp_path, monkeypatch):
    """A build killed mid-way leaves torch's `lock` behind, and every later load of that op waits on
    it forever (CI hung 600 s so on DeepSpeed's FusedAdam): gdist removes locks older than
    STALE_BUILD_LOCK_SECONDS before DeepSpeed starts, and leaves younger ones (a build under way)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "fused_adam" / "lock", tmp_path / "deepspeed_shm_comm" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    (tmp_path / "fused_adam" / "fused_adam.so").touch()  # the op's files are not locks
    old = time.time() - gdist.STALE_BUILD_LOCK_SECONDS - 5
    os.utime(stale, (old, old))
    assert gdist.extension_build_locks() == sorted([stale, fresh])
    assert gdist.clear_stale_build_locks() == [stale]
    assert not stale.exists() and fresh.exists() and (tmp_path / "fused_adam" / "fused_adam.so").exists()
    assert gdist.clear_stale_build_locks() == []


def test_process_group_launches_are_killed_whole_on_timeout():
    """tests/_tiny_runs.run_process_group: a timeout kills the launcher's children too (torchrun's
    ranks), which subprocess.run leaves running."""
    script = "import subprocess, sys, time; c = subprocess.Popen(['sleep', '600']); print(c.pid, flush=True); time.sleep(600)"
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_process_group([sys.executable, "-c", script], timeout=5)
    child = int(raised.value.output.split()[0])
    for _ in range(100):  # the kill is asynchronous: give it up to 10 s to take effect
        if not _running(child):
            return
        time.sleep(0.1)
    raise AssertionError(f"child {child} outlived the launch's timeout")


def _running(pid: int) -> bool:
    """pid exists and is not a zombie (a killed child waits there until init reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
