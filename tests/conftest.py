"""Shared test fixtures: the session seed (tests/_seed.py) with its replay line in every failure
report, per-test seeding of the global RNGs, the evaluation data folder beside the checkout, and
a small thread count so parallel test processes do not oversubscribe the CI machine's 2 cores."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _seed import ENV, SESSION_SEED, seed_for

torch.set_num_threads(2)

EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval"


def pytest_configure(config):
    try:
        from hypothesis import core
        from hypothesis.internal.conjecture import providers
    except ImportError:
        return
    if config.getoption("hypothesis_seed", None) is None:
        core.global_force_seed = SESSION_SEED  # property tests draw fresh inputs per session, replayable
    # Hypothesis also mixes in literals it finds in every loaded project module, so the inputs of a
    # test would depend on which other test files were collected: a failure seen in the whole
    # suite would not replay alone. Without them, the seed alone decides.
    if hasattr(providers, "_get_local_constants"):
        empty = providers.Constants()
        providers._get_local_constants = lambda: empty


# The longest modules go first: under pytest-xdist (`-n 2 --dist loadfile --no-loadscope-reorder`, the
# Makefile's test command) each module runs whole on one worker, and a long one started last would
# leave the other worker idle at the end.
LONGEST_FIRST = ("test_train", "test_resume", "test_colocation", "test_bring_your_own", "test_rollout_zero3")


def pytest_collection_modifyitems(config, items):
    def module(item) -> str:
        return item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")

    items.sort(key=lambda item: LONGEST_FIRST.index(module(item)) if module(item) in LONGEST_FIRST
               else len(LONGEST_FIRST))


def pytest_report_header(config):
    return f"{ENV}={SESSION_SEED} (set it to replay this session's random inputs)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("replay", f"{ENV}={SESSION_SEED} python -m pytest '{item.nodeid}'"))


@pytest.fixture(autouse=True)
def _seeded_global_rngs(request):
    """python, numpy and torch global RNGs seeded from the test's id: unseeded draws replay too."""
    value = seed_for(request.node.nodeid)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


@pytest.fixture
def seed(request) -> int:
    """This test's own seed (printed: pytest shows it with a failure)."""
    value = seed_for(request.node.nodeid)
    print(f"seed {value} ({ENV}={SESSION_SEED})")
    return value


@pytest.fixture(scope="module")
def module_seed(request) -> int:
    """One seed for a module's shared fixtures (models built once per module)."""
    value = seed_for(request.module.__name__)
    print(f"module seed {value} ({ENV}={SESSION_SEED})")
    return value


@pytest.fixture(scope="session")
def warm_model(tmp_path_factory) -> Path:
    """The tiny model after a short warm start on one-digit sums (tests/_tiny_runs.py), built once."""
    pytest.importorskip("deepspeed")
    from _tiny_runs import build_warm_model

    return build_warm_model(tmp_path_factory.mktemp("warm"), seed_for("warm_model"))


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """`../shared/data/eval`; tests that need it skip when it is absent (a user's machine)."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"evaluation data not found at {EVAL_DIR}")
    return EVAL_DIR
