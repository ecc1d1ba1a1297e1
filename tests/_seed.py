"""The test session's one random seed, so that any failure replays with one command:

    GVM_TEST_SEED=<seed> python -m pytest '<test id>'

Unset, each session draws a fresh seed (tests/conftest.py prints it in the header and in every
failure report). Every module and every test derives its own seed from it by name
(`seed_for`), so a test draws the same inputs whether it runs alone or with the whole suite.
"""
from __future__ import annotations

import os
import random

ENV = "GVM_TEST_SEED"


def _session_seed() -> int:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return random.SystemRandom().randrange(2**31)
    try:
        return int(text)
    except ValueError:
        raise SystemExit(f"{ENV}={text!r}: must be an integer (the seed a failure report printed)") from None


SESSION_SEED = _session_seed()
os.environ[ENV] = str(SESSION_SEED)  # test subprocesses (kernels under the interpreter) replay it too


def seed_for(name: str) -> int:
    """A seed in [0, 2**31) for `name` (a module or test id), fixed by the session seed."""
    return random.Random(f"{SESSION_SEED}:{name}").randrange(2**31)
