"""gvm.distributed's process-group start in a single process (a subprocess each: the group is
global state): a port it picked itself that is taken by the time the store binds it is replaced."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
