"""Rewards (gvm.verify): answer extraction, gold formats of the five evaluation files, scoring through
the worker pool and in process, and inputs that must score 0 quickly instead of hanging or raising.

Self-consistency thresholds (a gold written as "... so the answer is \\boxed{GOLD}." scores 1
against its own gold), measured with math-verify 0.9: every file scores 100 %. We require 99 % on
MATH500 (the brief), Minerva and OlympiadBench (LaTeX-heavy; a regression in extraction or gold
normalisation moves them by several points), and 100 % on the integer-answer files AIME24 and
AMC23.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
from decimal import Decimal

import pytest
from _seed import seed_for

from gvm.verify import REASONS, Verifier, VerifierConfig, extract_answer, normalize_gold, scientific_to_latex

SELF_CONSISTENCY_MIN = {"math500": 0.99, "aime24": 1.0, "amc23": 1.0, "minerva_math": 0.99,
                        "olympiad_bench": 0.99}
# Another problem's (different) gold may still be equal for math-verify, e.g. gold "5" and "x=5"
# (MATH500: 1 of 498 pairs; OlympiadBench "k=1" and "1"). Measured 0-0.2 % per file, so a sample
# of 40-80 pairs may hold one or two such pairs by chance (Minerva: 1 of 37 in one run, 0 of
# 3,100 in a re-measurement): allow 1 % of the pairs but at least two. A verifier that accepts
# wrong answers accepts far more.
WRONG_PAIR_MAX_ACCEPTED = 0.01
WRONG_PAIR_MIN_ALLOWED = 2
# Wall-time bounds only catch hangs and blow-ups (work that never ends or takes hours), never speed:
# every bounded piece of work here takes a few seconds at most, even on a loaded 2-core machine.
HANG_GUARD_S = 120.0
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?")

rng = random.Random(seed_for(__name__))  # fresh each session, replayed from GVM_TEST_SEED


def _load(eval_dir, name: str) -> list[dict]:
    with open(eval_dir / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f]


def _alternatives(gold) -> list[str]:
    normalized = normalize_gold(gold)
    return [normalized] if isinstance(normalized, str) else normalized


def _completion(answer: str) -> str:
    return f"We work it out step by step... so the answer is \\boxed{{{answer}}}."


def _different_value(gold: str, others: list[str]) -> str:
    """gold + 1 for a number; otherwise another problem's gold that is a different string."""
    if _NUMBER_RE.fullmatch(gold):
        return str(Decimal(gold) + 1)
    while True:
        other = rng.choice(others)
        if other != gold:
            return other


# ----------------------------------------------------------------------------------------------
# Fixtures: one pool for the module; each evaluation file scored once (own gold and a wrong value)

WRONG_SAMPLE = 80  # wrong values per file: a fresh random sample keeps the module under a minute


@pytest.fixture(scope="module")
def pool():
    # A generous budget: these tests check answers, and a loaded CI machine must not turn slow
    # items into timeouts (the budget itself is tested below).
    with Verifier(num_workers=2, timeout_s=30.0) as verifier:
        yield verifier


@pytest.fixture(scope="module")
def strict_pool():
    """Short budgets for the tests of timeouts, the watchdog and dead workers."""
    with Verifier(VerifierConfig(num_workers=2, timeout_s=1.0, kill_grace_s=0.5)).start() as verifier:
        yield verifier


@pytest.fixture(scope="module", params=list(SELF_CONSISTENCY_MIN))
def scored_file(request, eval_dir, pool):
    name = request.param
    golds = [row["answer"] for row in _load(eval_dir, name)]
    firsts = [_alternatives(g)[0] for g in golds]
    picks = rng.sample(range(len(golds)), min(WRONG_SAMPLE, len(golds)))
    wrong_values = [_different_value(firsts[i], firsts) for i in picks]
    completions = [_completion(a) for a in firsts] + [_completion(w) for w in wrong_values]
    rewards, reasons = pool.score_with_reasons(completions, golds + [golds[i] for i in picks])
    n = len(golds)
    return {"name": name, "golds": firsts, "wrong_golds": [firsts[i] for i in picks],
            "wrong_values": wrong_values, "self": (rewards[:n], reasons[:n]),
            "wrong": (rewards[n:], reasons[n:])}


# ----------------------------------------------------------------------------------------------
# The evaluation files

@pytest.mark.slow
def test_own_gold_scores_one(scored_file):
    name, golds = scored_file["name"], scored_file["golds"]
    rewards, reasons = scored_file["self"]
    failures = [(g, why) for g, r, why in zip(golds, rewards, reasons) if r != 1.0]
    rate = 1 - len(failures) / len(golds)
    print(f"{name}: own gold accepted {rate:.2%} ({len(golds) - len(failures)}/{len(golds)})")
    for gold, why in failures:
        print(f"  not accepted ({why}): {gold!r}")
    assert rate >= SELF_CONSISTENCY_MIN[name], failures[:20]


@pytest.mark.slow
def test_different_value_scores_zero(scored_file):
    name = scored_file["name"]
    rewards, reasons = scored_file["wrong"]
    pairs = list(zip(scored_file["wrong_golds"], scored_file["wrong_values"], rewards))
    numeric = [(g, w, r) for g, w, r in pairs if _NUMBER_RE.fullmatch(g)]
    other = [(g, w, r) for g, w, r in pairs if not _NUMBER_RE.fullmatch(g)]
    # gold + 1 must never be accepted.
    print(f"{name}: gold + 1 accepted {sum(p[2] for p in numeric):.0f}/{len(numeric)}")
    assert [p for p in numeric if p[2] != 0.0] == []
    accepted = [p for p in other if p[2] != 0.0]
    print(f"{name}: another problem's gold accepted {len(accepted)}/{len(other)}: {accepted}")
    assert len(accepted) <= max(WRONG_PAIR_MIN_ALLOWED, WRONG_PAIR_MAX_ACCEPTED * len(other))
    assert set(reasons) <= {"wrong", "correct"}  # parsed and compared, not failed


# ----------------------------------------------------------------------------------------------
# extract_answer

@pytest.mark.parametrize("text, expected", [
    (r"so $x = \boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
    (r"\boxed{\left\{ x^{2} : x \in \{1, 2\} \right\}}", r"\left\{ x^{2} : x \in \{1, 2\} \right\}"),
    (r"\boxed {x^{2}+1}", "x^{2}+1"),
    (r"\fbox{7}", "7"),
    (r"first \boxed{1}, then \fbox{2}, finally \boxed{3}.", "3"),
    (r"\boxed{\boxed{5}}", "5"),
    (r"good \boxed{12} then broken \boxed{\frac{1}{2}", "12"),  # unbalanced last box: previous one
    (r"\boxed 5.", "5"),
    (r"escaped \boxed{\{1,2\}}", r"\{1,2\}"),
])
def test_extract_answer_boxes(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Adding them, the answer is 42.", "42"),
    (r"Therefore, the final answer is $\frac{3}{4}$. I hope it is correct.", r"\frac{3}{4}"),
    ("Final Answer: 3.5", "3.5"),
    ("Answer: x = 5. Because the sum is 10.", "x = 5"),
    (r"The answer is $\frac{1}{2}. $ Then we stop.", r"\frac{1}{2}"),
    ("The answer is\n$$x = 12$$", "x = 12"),
    ("the answer isn't 4; we get $7$", "7"),
    (r"we get $x = 2$ and then $y = 7$", "y = 7"),
    (r"so \[ z = 9 \]", "z = 9"),
])
def test_extract_answer_fallbacks(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, fallbacks=False) is None


@pytest.mark.parametrize("text", ["", "no answer here", r"\boxed{}", r"\boxed{\frac{1}{2}", "\\boxed{" * 50])
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_extract_answer_rejects_non_str():
    with pytest.raises(ValueError, match="text must be a str"):
        extract_answer(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# normalize_gold

def test_normalize_gold_formats():
    assert normalize_gold("\\left( 3, \\frac{\\pi}{2} \\right)") == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert normalize_gold("204") == "204"
    assert normalize_gold(27.0) == "27"
    assert normalize_gold(0.25) == "0.25"
    assert normalize_gold(12) == "12"
    assert normalize_gold("s=\\frac{45}{3600} 7200=\\boxed{1.6} \\mathrm{~cm}") == "1.6"
    assert normalize_gold(["$\\frac{1}{2 n+2}$"]) == ["\\frac{1}{2 n+2}"]
    assert normalize_gold(["$69$,$84$"]) == ["69,84"]
    assert normalize_gold(["$2$", "2"]) == ["2"]
    assert normalize_gold("\\$18.90") == "\\$18.90"  # an escaped dollar is part of the answer
    assert normalize_gold("so $x=\\boxed{a+$ $b}$") == "a+ b"
    assert normalize_gold("L \\simeq \\boxed{4.5e33} \\mathrm{ergs}") == "4.5\\times 10^{33}"


def test_scientific_notation_is_a_number():
    assert scientific_to_latex("1e-5") == "1\\times 10^{-5}"
    assert scientific_to_latex("2e^{x}") == "2e^{x}"  # e as Euler's number stays
    with Verifier(num_workers=0) as verifier:
        assert verifier.score([r"\boxed{4.5 \times 10^{33}}", r"\boxed{4.5e33}", r"\boxed{4.6e33}"],
                              ["4.5e33"] * 3) == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("raw", ["", "  $ $ ", [], True, None, float("nan"), {"answer": "1"}])
def test_normalize_gold_rejects(raw):
    with pytest.raises(ValueError, match="normalize_gold"):
        normalize_gold(raw)


# ----------------------------------------------------------------------------------------------
# Scoring: list golds, pool == in-process, pathological inputs, the watchdog

def test_any_alternative_matches(pool):
    rewards = pool.score([r"\boxed{3}", r"\boxed{4}", r"\boxed{5}"], [["3", "4"], ["3", "4"], ["3", "4"]])
    assert rewards == [1.0, 1.0, 0.0]


def test_pool_and_in_process_agree(eval_dir, pool):
    golds = [row["answer"] for row in _load(eval_dir, "math500")]
    firsts = [_alternatives(g)[0] for g in golds]
    picks = rng.sample(range(len(golds)), 40)
    completions = []
    for i in picks:  # own gold, a different value, or prose without an answer
        kind = rng.randrange(3)
        answer = firsts[i] if kind == 0 else _different_value(firsts[i], firsts)
        completions.append(_completion(answer) if kind < 2 else "I am not sure how to finish this.")
    sample_golds = [golds[i] for i in picks]
    before = sum(pool.stats.values())
    in_pool = pool.score_with_reasons(completions, sample_golds)
    assert sum(pool.stats.values()) == before + len(picks)
    with Verifier(num_workers=0) as in_process:
        assert in_process.score_with_reasons(completions, sample_golds) == in_pool
        assert sum(in_process.stats.values()) == len(picks)


def _pathological_inputs() -> list[str]:
    junk = random.randbytes(20_000).decode("utf-8", errors="replace")  # seeded per test (conftest)
    return [
        r"so the answer is \boxed{\frac{1}{2}",  # unbalanced
        r"\boxed{}",  # empty box
        "x" * 200_000,  # 200 kB, no answer
        r"\boxed{" + "1+" * 100_000 + "1}",  # 200 kB inside a box
        (r"\boxed{" + "$" * 7) * 20_000,  # 200 kB of unbalanced boxes and dollars
        r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",  # 5000 nested braces
        "{" * 5000 + "}" * 5000,
        junk,
        r"\boxed{" + junk + "}",
        r"\boxed{\frac{\sqrt{}{}}^^_{\left(}",
    ] + EXTRACTION_WORST_CASES


# Inputs that would make a naive extractor quadratic (each 200 kB or more).
EXTRACTION_WORST_CASES = [
    r"\boxed{" * 5000 + "1" + "}" * 5000,  # 5000 nested boxes: the answer is 1
    r"\(" * 100_000,  # unclosed math spans
    "the answer is $" + ". " * 100_000,  # sentence ends inside math
    r"\boxed{" * 30_000,  # unbalanced boxes
]


def test_extract_answer_is_fast_on_worst_cases():
    start = time.monotonic()
    answers = [extract_answer(text) for text in EXTRACTION_WORST_CASES]
    assert answers[0] == "1" and answers[1] is None and answers[3] is None
    assert time.monotonic() - start < HANG_GUARD_S  # linear: ~0.2 s; quadratic would take hours


def _assert_pathological_score_zero_quickly(verifier: Verifier) -> None:
    inputs = _pathological_inputs()
    start = time.monotonic()
    rewards, reasons = verifier.score_with_reasons(inputs, ["1/2"] * len(inputs))
    elapsed = time.monotonic() - start
    print(f"num_workers={verifier.config.num_workers}: {elapsed:.2f} s, reasons {reasons}")
    assert rewards == [0.0] * len(inputs)
    assert set(reasons) <= set(REASONS) - {"correct"}
    assert elapsed < HANG_GUARD_S  # about 0.5 s of work; a hang would never end


def test_pathological_inputs_score_zero_in_pool(strict_pool):
    _assert_pathological_score_zero_quickly(strict_pool)


def test_pathological_inputs_score_zero_in_process():
    _assert_pathological_score_zero_quickly(Verifier(num_workers=0, timeout_s=1.0))


def test_slow_input_times_out_and_pool_goes_on(strict_pool):
    # sympy evaluates the tower of powers in Python loops: SIGALRM stops it at timeout_s. The
    # three items share a gold, so one worker scores them in order.
    completions = [r"\boxed{9^{9^{9}}}", r"\boxed{\frac{1}{2}}", r"\boxed{0.5}"]
    start = time.monotonic()
    rewards, reasons = strict_pool.score_with_reasons(completions, ["1/2"] * 3)
    elapsed = time.monotonic() - start
    assert (rewards, reasons) == ([0.0, 1.0, 1.0], ["timeout", "correct", "correct"])
    assert elapsed < HANG_GUARD_S  # the tower alone would run for hours


@pytest.mark.slow
def test_stuck_worker_is_killed_and_replaced(strict_pool):
    """A worker that cannot run its SIGALRM handler (here: stopped, as if stuck in C code)."""
    stuck = strict_pool.worker_pids()[0]  # the first chunk goes to the first worker
    os.kill(stuck, signal.SIGSTOP)
    timeouts, killed = strict_pool.stats["timeout"], strict_pool.restarts["killed"]
    start = time.monotonic()
    rewards, reasons = strict_pool.score_with_reasons([r"\boxed{1}", r"\boxed{2}", r"\boxed{3}"], ["1", "2", "4"])
    elapsed = time.monotonic() - start
    assert stuck not in strict_pool.worker_pids()
    assert (rewards, reasons) == ([0.0, 1.0, 0.0], ["timeout", "correct", "wrong"])
    assert (strict_pool.stats["timeout"], strict_pool.restarts["killed"]) == (timeouts + 1, killed + 1)
    # watchdog: 2 * timeout_s + kill_grace_s = 2.5 s, then a fresh worker starts (~1 s); a stopped
    # worker that nobody killed would block forever
    assert elapsed < HANG_GUARD_S


@pytest.mark.slow
def test_dead_worker_is_replaced(strict_pool):
    # Dead while idle: its chunk goes to a fresh worker, nothing is lost.
    idle = strict_pool.worker_pids()[0]
    os.kill(idle, signal.SIGKILL)
    time.sleep(0.1)
    assert strict_pool.score([r"\boxed{1}", r"\boxed{2}"], ["1", "1"]) == [1.0, 0.0]
    assert idle not in strict_pool.worker_pids()

    # Dead in the middle of an item: that item is "crashed", the rest of its chunk is scored.
    busy = strict_pool.worker_pids()[0]
    os.kill(busy, signal.SIGSTOP)
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        out=strict_pool.score_with_reasons([r"\boxed{1}", r"\boxed{1}"], ["1", "1"])))
    thread.start()
    deadline = time.monotonic() + HANG_GUARD_S
    while busy not in strict_pool.busy_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(busy, signal.SIGKILL)
    thread.join(timeout=30)
    assert result["out"] == ([0.0, 1.0], ["crashed", "correct"])


def test_close_stops_workers_and_reopens():
    verifier = Verifier(num_workers=1).start()
    pids = verifier.worker_pids()
    assert len(pids) == 1
    verifier.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert verifier.score([r"\boxed{2}"], [2.0]) == [1.0]  # restarts on demand
    verifier.close()


def test_in_process_mode_needs_main_thread():
    errors = []
    verifier = Verifier(num_workers=0)
    thread = threading.Thread(target=lambda: errors.append(pytest.raises(ValueError, verifier.score, ["x"], ["1"])))
    thread.start()
    thread.join()
    assert "main thread" in str(errors[0].value)


@pytest.mark.parametrize("overrides, message", [
    ({"num_workers": -1}, "num_workers"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"kill_grace_s": -1.0}, "kill_grace_s"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_config_rejects(overrides, message):
    with pytest.raises(ValueError, match=message):
        VerifierConfig(**overrides)


def test_score_rejects_mismatched_inputs():
    verifier = Verifier(num_workers=0)
    with pytest.raises(ValueError, match="same length"):
        verifier.score(["a", "b"], ["1"])
    with pytest.raises(ValueError, match=r"completions\[0\] must be a str"):
        verifier.score([None], ["1"])  # type: ignore[list-item]
