"""Process-group set-up and the few collectives the trainer needs.

The trainer runs under `deepspeed` / `torchrun` with any world size, and also as a plain single
process: then the launcher's environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) is filled
with one-process defaults, the port chosen free so that parallel test processes do not collide.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_ATTEMPTS = 5   # single-process runs: ports tried for the process group's store
# A torch C++-extension build lock older than this is a build that was killed: DeepSpeed's ops
# (its CPU shm communicator, FusedAdam) build in under a minute on the CPU, a few on CUDA.
STALE_BUILD_LOCK_SECONDS = 600

log = logging.getLogger(__name__)


def extension_build_locks() -> list[Path]:
    """The `lock` files of torch's C++-extension builds (torch.utils.cpp_extension's layout:
    $TORCH_EXTENSIONS_DIR/<op>/lock, or <cache>/torch_extensions/<python>_<accelerator>/<op>/lock)."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is not None:
        return sorted(Path(root).glob("*/lock"))
    return sorted(Path(get_default_build_root()).glob("*/*/lock"))


def clear_stale_build_locks(max_age_s: float = STALE_BUILD_LOCK_SECONDS) -> list[Path]:
    """Remove build locks older than max_age_s, and return them. A build killed mid-way (SIGKILL,
    a timeout) leaves its lock behind, and every later process that loads the op then waits on it
    forever (torch's FileBaton.wait), silently: the trainer would hang at DeepSpeed's start."""
    removed = []
    for lock in extension_build_locks():
        try:
            age = time.time() - lock.stat().st_mtime
            if age < max_age_s:
                continue
            lock.unlink()
        except FileNotFoundError:  # another rank removed it, or its build just finished
            continue
        log.warning("removed %s, a C++-extension build lock %.0f s old (its build was killed; loading the op "
                    "would have waited on it forever)", lock, age)
        removed.append(lock)
    return removed


def init_distributed() -> None:
    """Join (or create) the default process group: NCCL on CUDA, gloo on the CPU. Idempotent."""
    if dist.is_available() and dist.is_initialized():
        return
    own_port = "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ
    if "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ["WORLD_SIZE"] = "1"
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    import deepspeed  # imported late: importing it costs seconds

    clear_stale_build_locks()  # DeepSpeed builds its CPU communicator op on first use
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    for attempt in range(PORT_ATTEMPTS):
        try:
            deepspeed.init_distributed(dist_backend=backend)
            return
        except dist.DistNetworkError as error:
            # A port we picked ourselves can be taken between _free_port() and the store's bind
            # (seen in CI: EADDRINUSE); pick another. A port the user or launcher set is kept.
            if not own_port or "EADDRINUSE" not in str(error) or attempt == PORT_ATTEMPTS - 1:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (pickled; for small per-sample results)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place, returned for chaining)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Destroy the process group before the interpreter exits. Left to interpreter teardown,
    gloo's worker threads can still hold work whose tensors need the GIL, and a rank aborts
    ("terminate called without an active exception", SIGABRT) after its work is done. Local: no
    collective, so it is safe on an error path too."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_after_success() -> None:
    """For a launched worker whose work is done and written: flush stdout / stderr, destroy the
    process group, and end the process without interpreter teardown. Even after shutdown(), a rank
    has been seen to abort in teardown's C++ destructors ("terminate called without an active
    exception", SIGABRT, after its results were on disk), failing a run that succeeded. Only for
    the success path: an error should still unwind normally; and not in a rank of a multi-rank
    vLLM group, whose teardown removes the group's /dev/shm segments (left behind, they make the
    next launch fail with EEXIST; a single-process engine leaves none, seen in test_colocation)."""
    sys.stdout.flush()
    sys.stderr.flush()
    shutdown()
    os._exit(0)


def add_launcher_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Accept the `--local_rank` / `--local-rank` the deepspeed launcher passes to scripts."""
    parser.add_argument("--local_rank", "--local-rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)),
                        help="set by the deepspeed launcher; ignored otherwise")
    return parser
