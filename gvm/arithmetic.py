"""Arithmetic world: the built-in task, seeded arithmetic problems of graded difficulty.

GVM only pays off when acceptance rates differ across prompts, so the levels are chosen to
spread a tiny model's per-prompt acceptance over (0, 1): one-digit sums are learnt almost at
once, four-digit sums and multi-digit products stay rare. Each problem carries a short worked
solution ending in `\\boxed{answer}`, written one step a line, for a supervised warm start of
the character-level toy model (`gvm.toy`). Format its prompt with
`gvm.data.format_prompt(problem, tokenizer, style="compact")`.

    level 1   a+b, a-b               one digit each
    level 2   a+b, a-b (2 digits), a*b (1 digit)
    level 3   a+b, a-b (3 digits), a*b (2 by 1 digits)
    level 4   a+b, a-b (4 digits), a*b (3 by 1), a+b-c (2 digits each)
    level 5   a*b (2 by 2, 3 by 2), a*b+c (2 by 1, plus 2 digits)

Subtraction never goes below zero, so every gold answer is a non-negative integer.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem: `problem` is the expression, `answer` the gold integer as a
    string, `solution` the worked steps ending in `\\boxed{answer}`."""

    problem: str
    answer: str
    level: int
    solution: str

    def to_row(self, index: int) -> dict:
        """The row format `gvm.data.load_prompts` returns, so both feed the same pipeline (`line`:
        where it stands in the split's JSONL file)."""
        return {"index": index, "line": index + 1, "problem": self.problem, "answer": self.answer,
                "level": self.level, "solution": self.solution}


def _digits(number: int) -> list[int]:
    """Digits, least significant first."""
    return [int(c) for c in reversed(str(number))]


def _number(rng: random.Random, num_digits: int) -> int:
    """A uniform integer with exactly `num_digits` digits (0..9 for one digit)."""
    if num_digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (num_digits - 1), 10**num_digits - 1)


def _finish(expression: str, steps: list[str], value: int, level: int) -> Problem:
    answer = str(value)
    return Problem(expression, answer, level, "\n".join([*steps, f"\\boxed{{{answer}}}"]))


def _add(a: int, b: int, level: int) -> Problem:
    """Column addition right to left, one line a column: `7+5=12`, then `4+8+1=13`."""
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = da[i] if i < len(da) else 0, db[i] if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = total // 10
    return _finish(f"{a}+{b}", steps, a + b, level)


def _subtract(a: int, b: int, level: int) -> Problem:
    """Column subtraction right to left (a >= b): `2-7+10=5` borrows, the next column pays
    `-1`: `5-1-1=3`."""
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], db[i] if i < len(db) else 0
        difference = x - y - borrow
        text = f"{x}-{y}{'-1' if borrow else ''}"
        borrow = int(difference < 0)
        steps.append(f"{text}{'+10' if borrow else ''}={difference + 10 * borrow}")
    return _finish(f"{a}-{b}", steps, a - b, level)


def _multiply(a: int, b: int, level: int) -> Problem:
    """By a one-digit b: column steps with carries (`7*6=42`, `4*6+4=28`). By a longer b: one
    partial product per digit of b, then their sum."""
    if b < 10:
        steps, carry = [], 0
        for x in _digits(a):
            product = x * b + carry
            steps.append(f"{x}*{b}{f'+{carry}' if carry else ''}={product}")
            carry = product // 10
        return _finish(f"{a}*{b}", steps, a * b, level)
    partials = [a * d * 10**k for k, d in enumerate(_digits(b))]
    steps = [f"{a}*{d * 10**k}={p}" for k, (d, p) in enumerate(zip(_digits(b), partials))]
    steps.append(f"{'+'.join(map(str, partials))}={sum(partials)}")
    return _finish(f"{a}*{b}", steps, a * b, level)


def _add_then_subtract(a: int, b: int, c: int, level: int) -> Problem:
    return _finish(f"{a}+{b}-{c}", [f"{a}+{b}={a + b}", f"{a + b}-{c}={a + b - c}"], a + b - c, level)


def _multiply_then_add(a: int, b: int, c: int, level: int) -> Problem:
    return _finish(f"{a}*{b}+{c}", [f"{a}*{b}={a * b}", f"{a * b}+{c}={a * b + c}"], a * b + c, level)


def _binary(make: Callable[[int, int, int], Problem], digits_a: int, digits_b: int,
            ordered: bool = False) -> Callable[[random.Random, int], Problem]:
    """A generator for `a op b`; `ordered` swaps the operands so a >= b (no negative results)."""
    def generate(rng: random.Random, level: int) -> Problem:
        a, b = _number(rng, digits_a), _number(rng, digits_b)
        if ordered and a < b:
            a, b = b, a
        return make(a, b, level)
    return generate


def _two_step_add_subtract(rng: random.Random, level: int) -> Problem:
    a, b = _number(rng, 2), _number(rng, 2)
    return _add_then_subtract(a, b, rng.randint(10, min(99, a + b)), level)


def _two_step_multiply_add(rng: random.Random, level: int) -> Problem:
    return _multiply_then_add(_number(rng, 2), _number(rng, 1), _number(rng, 2), level)


GENERATORS: dict[int, tuple[Callable[[random.Random, int], Problem], ...]] = {
    1: (_binary(_add, 1, 1), _binary(_subtract, 1, 1, ordered=True)),
    2: (_binary(_add, 2, 2), _binary(_subtract, 2, 2, ordered=True), _binary(_multiply, 1, 1)),
    3: (_binary(_add, 3, 3), _binary(_subtract, 3, 3, ordered=True), _binary(_multiply, 2, 1)),
    4: (_binary(_add, 4, 4), _binary(_subtract, 4, 4, ordered=True), _binary(_multiply, 3, 1),
        _two_step_add_subtract),
    5: (_binary(_multiply, 2, 2), _binary(_multiply, 3, 2), _two_step_multiply_add),
}


class ArithmeticTask:
    """A seeded stream of arithmetic problems; the same seed and levels give the same stream.

    `levels` lists the difficulty levels to draw from (uniformly, then a uniform operation
    within the level); repeats are possible, `make_split` removes them.
    """

    def __init__(self, seed: int = 0, levels: Sequence[int] = LEVELS):
        unknown = sorted(set(levels) - set(GENERATORS))
        if not levels or unknown:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {list(levels)}")
        self.levels = tuple(levels)
        self.rng = random.Random(seed)

    def sample_level(self, level: int) -> Problem:
        """One problem of the given level."""
        return self.rng.choice(GENERATORS[level])(self.rng, level)

    def sample(self, n: int) -> list[Problem]:
        """The next `n` problems of the stream."""
        return [self.sample_level(self.rng.choice(self.levels)) for _ in range(n)]


def make_split(num_train: int, num_eval: int, *, seed: int = 0, levels: Sequence[int] = LEVELS,
               weights: Sequence[float] | None = None, max_tries: int = 200) -> tuple[list[dict], list[dict]]:
    """Train and held-out eval rows with no problem text in common and none repeated.

    Levels are drawn uniformly, or in proportion to `weights` (one per level, e.g. more hard
    problems so that acceptance rates spread further). A level whose distinct problems run out
    (level 1 has only 155) stops being drawn after `max_tries` misses, so big splits hold fewer
    easy problems rather than duplicates. Eval is drawn first, so its problems do not depend on
    `num_train`. Raises ValueError when all levels run out before both splits are full.
    """
    if num_train < 0 or num_eval < 0:
        raise ValueError(f"num_train and num_eval must be >= 0, got {num_train} and {num_eval}")
    if weights is not None and (len(weights) != len(levels) or any(w < 0 for w in weights) or sum(weights) <= 0):
        raise ValueError(f"weights must be {len(levels)} non-negative numbers, not all 0; got {list(weights)}")
    task = ArithmeticTask(seed, levels)
    seen: set[str] = set()
    level_weights = dict.fromkeys(task.levels, 1.0) if weights is None else dict(zip(task.levels, weights))
    open_levels = {level: float(w) for level, w in level_weights.items() if w > 0}

    def pick_level() -> int:
        if weights is None:
            return task.rng.choice(list(open_levels))
        return task.rng.choices(list(open_levels), weights=list(open_levels.values()))[0]

    def draw(count: int) -> list[dict]:
        rows: list[dict] = []
        while len(rows) < count:
            if not open_levels:
                raise ValueError(
                    f"levels {list(task.levels)} hold fewer than {num_train + num_eval} distinct "
                    f"problems; lower num_train/num_eval or add harder levels"
                )
            level = pick_level()
            for _ in range(max_tries):
                problem = task.sample_level(level)
                if problem.problem not in seen:
                    seen.add(problem.problem)
                    rows.append(problem.to_row(len(rows)))
                    break
            else:
                del open_levels[level]
        return rows

    eval_rows = draw(num_eval)
    return draw(num_train), eval_rows


# ---------------------------------------------------------------------------------------------
# Slips: warm-start solutions with misread digits


_EXPRESSION = re.compile(r"(\d+)([+*-])(\d+)(?:([+-])(\d+))?")


def solve(expression: str, level: int = 0) -> Problem:
    """The worked solution of an expression the generators write (`a+b`, `a-b`, `a*b`, `a+b-c`,
    `a*b+c`). Raises ValueError for anything else, or a result below zero."""
    match = _EXPRESSION.fullmatch(expression)
    if match is None:
        raise ValueError(f"not an arithmetic-task expression: {expression!r}")
    a, op, b, op2, c = match.groups()
    a, b = int(a), int(b)
    if op2 is None:
        if op == "-" and a < b:
            raise ValueError(f"{expression}: below zero")
        return {"+": _add, "-": _subtract, "*": _multiply}[op](a, b, level)
    if (op, op2) == ("+", "-") and a + b >= int(c):
        return _add_then_subtract(a, b, int(c), level)
    if (op, op2) == ("*", "+"):
        return _multiply_then_add(a, b, int(c), level)
    raise ValueError(f"not an arithmetic-task expression: {expression!r}")


def misread(expression: str, rng: random.Random, rate: float) -> str:
    """The expression with each operand digit, with probability `rate`, read one higher or lower
    (a leading digit never becomes 0). Operators are kept."""
    def read(number: str) -> str:
        digits = list(number)
        for k, digit in enumerate(digits):
            if rng.random() < rate:
                changed = int(digit) + rng.choice((-1, 1))
                if (1 if k == 0 and len(digits) > 1 else 0) <= changed <= 9:
                    digits[k] = str(changed)
        return "".join(digits)

    return "".join(read(part) if part.isdigit() else part for part in re.split(r"([+*-])", expression))


def with_slips(rows: list[dict], rate: float, seed: int) -> list[dict]:
    """Rows whose worked `solution` is, where a digit was misread, the correct working of the
    misread problem: consistent steps that box a wrong answer. `problem` and the gold `answer`
    are unchanged. A model warm-started on these makes the same slips at the same rate, more of
    them on longer numbers (a harder tail); reward-filtered RL learns to stop making them, which
    is the improvement the built-in run shows. rate 0 returns the rows unchanged."""
    if not 0 <= rate <= 1:
        raise ValueError(f"slip rate must lie in [0, 1], got {rate}")
    if rate == 0:
        return rows
    rng = random.Random(seed)
    out = []
    for row in rows:
        seen = misread(row["problem"], rng, rate)
        if seen == row["problem"]:
            out.append(row)
            continue
        try:
            solution = solve(seen, row.get("level", 0)).solution
        except ValueError:          # the misread problem would go below zero: read it right
            solution = row["solution"]
        out.append({**row, "solution": solution})
    return out
