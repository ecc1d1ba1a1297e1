"""Named points where a run can be made to die hard, so that tests can kill it at every moment
that matters and check that the resumed run equals the one never killed.

    GVM_FAILPOINT=train python gvm/train.py ...        # exit at the first "train" point
    GVM_FAILPOINT=checkpoint:state@3 ...               # at the third time "checkpoint:state" is reached

The process leaves with `os._exit(FAILPOINT_EXIT)`: no cleanup, no flushing beyond what the code
already did, as a kill -9 would. Unset (the normal case), `failpoint()` costs a dictionary lookup.
"""
from __future__ import annotations

import os
import sys

ENV = "GVM_FAILPOINT"
FAILPOINT_EXIT = 86

# Every point the loop passes, in the order of an iteration.
FAILPOINTS = (
    "generate",             # an engine generation finished, before verification
    "verify",               # a batch verified, before the next step uses it
    "train",                # a training call finished, before the weight sync
    "sync",                 # the trainer holds new weights, the engine has none of them yet
    "sync:engine",          # the engine has taken part of the new weights
    "log",                  # the iteration's metrics row is written, the allocation audit too
    "eval",                 # a held-out evaluation finished, before its row is written
    "checkpoint:trainer",   # the trainer's files of a checkpoint are written, nothing else yet
    "checkpoint:state",     # the loop state and manifest are written, the folder not yet renamed
    "checkpoint:visible",   # the checkpoint folder has its name, `latest` does not point to it yet
)

_reached: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    return name, int(nth) if nth else 1


def check_environment() -> None:
    """A GVM_FAILPOINT that names no failpoint is a mistake: stop before any work."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name not in FAILPOINTS or (nth and not (nth.isdigit() and int(nth) >= 1)):
        raise ValueError(f"{ENV}={spec!r}: expected <name> or <name>@<k> (k >= 1), name one of {FAILPOINTS}")


def failpoint(name: str) -> None:
    """Exit at once if GVM_FAILPOINT names this point and it is reached for the k-th time."""
    if name not in FAILPOINTS:
        raise ValueError(f"unknown failpoint {name!r}; add it to gvm.failpoints.FAILPOINTS")
    target = _target()
    if target is None or target[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == target[1]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(FAILPOINT_EXIT)
