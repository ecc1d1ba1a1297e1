"""Shared test fixtures: the evaluation data folder beside the checkout, and a small thread
count so parallel test processes do not oversubscribe the CI machine's 2 cores."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """`../shared/data/eval`; tests that need it skip when it is absent (a user's machine)."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"evaluation data not found at {EVAL_DIR}")
    return EVAL_DIR
