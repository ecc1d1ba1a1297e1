"""Each list of names is declared once, where the thing it names lives; everything else reads it
from there. A copy elsewhere (in code, not in comments or docstrings) fails here."""
import ast
from pathlib import Path

import pytest

from gvm.algorithms import ALGORITHMS
from gvm.data import PROMPT_STYLES
from gvm.engines.factory import ENGINE_NAMES, ENGINE_REGISTRY
from gvm_kernels.policy_loss import AGGREGATIONS, KINDS

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("gvm", "kernels", "benchmarks") for p in (REPO / folder).rglob("*.py"))

# name list -> the one module allowed to spell it out
HOMES = {
    "loss kinds": (set(KINDS), "kernels/policy_loss.py"),
    "aggregations": (set(AGGREGATIONS), "kernels/policy_loss.py"),
    "engines": (set(ENGINE_REGISTRY), "gvm/engines/factory.py"),
    "prompt styles": (set(PROMPT_STYLES), "gvm/data.py"),
}


def _literal_collections(path: Path) -> list[tuple[int, set]]:
    """(line, set of strings) of every tuple / list / set literal of 2+ strings."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        items = getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and items and len(items) >= 2:
            values = {n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if len(values) >= 2:
                out.append((node.lineno, values))
    return out


@pytest.mark.parametrize("what", sorted(HOMES))
def test_name_lists_are_spelled_out_only_at_home(what):
    names, home = HOMES[what]
    copies = [f"{path.relative_to(REPO)}:{line}" for path in SOURCES if str(path.relative_to(REPO)) != home
              for line, values in _literal_collections(path) if names <= values]
    assert not copies, f"{what} {sorted(names)} are spelled out outside {home}: {copies}"


def test_the_registries_are_what_the_config_offers():
    from gvm.config import RunConfig
    from gvm.engines.factory import AUTO

    assert ENGINE_NAMES == (AUTO, *ENGINE_REGISTRY)
    assert set(ALGORITHMS) == {"raft", "raft++", "grpo"} and {a.loss for a in ALGORITHMS.values()} <= set(KINDS)
    assert RunConfig().algorithm in ALGORITHMS
