"""Rewards: does a completion's final answer equal the gold answer? (math-verify 0.9)

Three parts, used in this order:

- `extract_answer(text)`: the completion's final answer (last `\\boxed{}` / `\\fbox{}`, then
  "the answer is X", then the last `$...$`).
- `normalize_gold(raw)`: one gold answer from any of the evaluation files (LaTeX string, integer
  string, JSON float, worked solution ending in a box, list of alternatives) as LaTeX strings.
- `Verifier.score(completions, golds)`: 1.0 / 0.0 per item. math-verify guards its parsing with
  SIGALRM, which works only in a process's main thread and cannot interrupt C code, so scoring
  runs in worker processes with a watchdog that kills and replaces a stuck worker; every failure
  (bad LaTeX, timeout, crash) scores 0 and is counted by reason in `Verifier.stats`.

Units: gold answers carry no units (OlympiadBench keeps them in a separate `unit` field, which we
ignore); math-verify's own normalisation drops common unit words (`\\text{ cm}`, `\\mathrm{m}`)
from both sides, so "45 \\text{ minutes}" still matches a gold of 45.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Sequence

log = logging.getLogger(__name__)

Gold = str | int | float | Sequence[str]

# ----------------------------------------------------------------------------------------------
# Answer extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])(\s*)")
# "the final answer is X", "the answer is: X", "Answer: X"; X runs to the end of its line.
_ANSWER_PHRASE_RE = re.compile(r"(?:(?:final|the)\s+answer\s*(?:is\b|:)|\banswer\s*:)\s*:?\s*([^\n]+)",
                               re.IGNORECASE)
_MATH_SPAN_WINDOW = 4000  # characters at the end of a completion searched for a last math span
_SENTENCE_END_RE = re.compile(r"(?<!\\)\.(?:\s|$)")
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
_BARE_BOX_TOKEN_RE = re.compile(r"[^\s$]+")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each `{` -> position of its `}` (unmatched ones absent), in one linear pass.

    Escaped braces (`\\{`, `\\}`) are literal characters in LaTeX and do not group.
    """
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def _boxes(text: str) -> list[tuple[int, int, int, int]]:
    """(box start, box end, content start, content end) of every balanced box, by start.

    Unbalanced boxes are skipped. Linear in len(text).
    """
    starts = list(_BOX_RE.finditer(text))
    if not starts:
        return []
    closing = _matching_braces(text)
    boxes = []
    for m in starts:
        open_at = m.end()
        if text.startswith("{", open_at):
            close_at = closing.get(open_at)
            if close_at is not None:
                boxes.append((m.start(), close_at + 1, open_at + 1, close_at))
        elif m.group(1):  # `\boxed 5`: TeX takes the next token as the argument
            token = _BARE_BOX_TOKEN_RE.match(text, open_at)
            if token:
                content_end = open_at + len(token.group(0).rstrip("."))
                boxes.append((m.start(), token.end(), open_at, content_end))
    return boxes


def _last_box(text: str) -> str | None:
    """Content of the last top-level balanced box (a box inside another box is not top level),
    with `\boxed{\boxed{5}}` unwrapped to 5."""
    boxes = _boxes(text)
    last = None
    for box in boxes:
        if last is None or box[0] >= last[1]:
            last = box
    if last is None:
        return None
    by_start = {box[0]: box for box in boxes}
    lo, hi = last[2], last[3]
    while True:
        while lo < hi and text[lo].isspace():
            lo += 1
        while hi > lo and text[hi - 1].isspace():
            hi -= 1
        inner = by_start.get(lo)
        if inner is None or inner[1] != hi:
            return text[lo:hi]
        lo, hi = inner[2], inner[3]


def extract_answer(text: str, *, fallbacks: bool = True) -> str | None:
    """The completion's final answer as a LaTeX string, or None when it gives none.

    The content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces kept; an unbalanced last
    box is skipped in favour of the previous balanced one). Without a box and with `fallbacks`:
    the text after the last "final answer is" / "the answer is" / "answer:", else the last math
    span (`$...$`, `$$...$$`, `\\[...\\]`, `\\(...\\)`). Linear in the length of `text`.
    """
    if not isinstance(text, str):
        raise ValueError(f"extract_answer: text must be a str, got {type(text).__name__}")
    boxed = _last_box(text)
    if boxed is not None:
        return boxed or None
    if not fallbacks:
        return None
    phrases = list(_ANSWER_PHRASE_RE.finditer(text))
    if phrases:
        answer = phrases[-1].group(1).strip()
        math_first = _MATH_SPAN_RE.match(answer)
        if math_first:  # "$X$ since ..." -> X
            answer = next(g for g in math_first.groups() if g is not None)
        else:  # "X. I hope it is correct." -> X: cut at the first sentence end outside math
            dollars, counted_to = 0, 0
            for end in _SENTENCE_END_RE.finditer(answer):
                dollars += answer.count("$", counted_to, end.start())
                counted_to = end.start()
                if dollars % 2 == 0:
                    answer = answer[:end.start()]
                    break
        answer = answer.strip().rstrip(".").strip()
        if answer:
            return answer
    # The last math span, looked for near the end only: a lazy regex over a long text full of
    # unclosed `\(` would take quadratic time.
    spans = list(_MATH_SPAN_RE.finditer(text[-_MATH_SPAN_WINDOW:]))
    if spans:
        last = next(g for g in spans[-1].groups() if g is not None).strip()
        return last or None
    return None


# ----------------------------------------------------------------------------------------------
# Gold answers

_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")
# 4.5e33 / 1e-5 as a whole number: math-verify would read the `e` as Euler's number.
_SCIENTIFIC_RE = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")


def scientific_to_latex(latex: str) -> str:
    """`4.5e33` -> `4.5\\times 10^{33}`, so that it means a number rather than 4.5 * e * 33."""
    return _SCIENTIFIC_RE.sub(r"\1\\times 10^{\2}", latex)


def _normalize_gold_string(raw: str) -> str:
    if _BOX_RE.search(raw):  # a worked solution (Minerva): the answer is its last box
        raw = _last_box(raw) or raw
    # OlympiadBench writes "$69$,$84$": drop math delimiters, keep escaped dollars (`\$18.90`).
    return scientific_to_latex(_UNESCAPED_DOLLAR_RE.sub("", raw).strip())


def normalize_gold(raw: Gold) -> str | list[str]:
    """Gold answer(s) as LaTeX strings, from every format of the evaluation files.

    str -> the string without `$` delimiters, or the last `\\boxed{}` when it is a worked solution;
    int / float -> "27" for 27.0, else the shortest repr; list of str -> list of normalised
    alternatives (any may match). Raises ValueError on empty or unsupported golds.
    """
    if isinstance(raw, bool):
        raise ValueError("normalize_gold: raw must be a str, number or list of str, got bool")
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise ValueError(f"normalize_gold: raw must be finite, got {raw}")
        return str(int(raw)) if raw.is_integer() else repr(raw)
    if isinstance(raw, str):
        gold = _normalize_gold_string(raw)
        if not gold:
            raise ValueError(f"normalize_gold: empty gold answer {raw!r}; drop the row or fix its answer")
        return gold
    if isinstance(raw, (list, tuple)):
        alternatives: list[str] = []
        for item in raw:
            normalized = normalize_gold(item)
            for alt in [normalized] if isinstance(normalized, str) else normalized:
                if alt not in alternatives:
                    alternatives.append(alt)
        if not alternatives:
            raise ValueError("normalize_gold: raw is an empty list; give at least one gold answer")
        return alternatives
    raise ValueError(f"normalize_gold: raw must be a str, number or list of str, got {type(raw).__name__}")


def _gold_key(gold: Gold) -> tuple[str, ...]:
    """Hashable, normalised form of a gold: the tuple of its acceptable LaTeX strings."""
    normalized = normalize_gold(gold)
    return (normalized,) if isinstance(normalized, str) else tuple(normalized)


# ----------------------------------------------------------------------------------------------
# Scoring one item (runs in a worker process, or in the main thread when num_workers == 0)

REASONS = ("correct", "wrong", "no_answer", "too_long", "too_deep", "parse_error", "gold_error",
           "timeout", "crashed", "scored", "reward_error", "not_a_number")
# "scored": a user reward function returned a number (any float); "reward_error": it raised;
# "not_a_number": it returned something that is not a finite number.
BUILTIN_REWARDS = ("math", "exact")   # math-verify's equivalence; normalised string equality


class _Deadline(BaseException):
    """Raised by SIGALRM when an item overruns its time budget.

    A BaseException, so that math-verify's and sympy's `except Exception` cannot swallow it.
    """


def _on_alarm(signum: int, frame: object) -> None:
    raise _Deadline()


def _run_with_alarm(seconds: float, fn, *args):
    """fn(*args) under a SIGALRM budget (main thread only); raises _Deadline when it runs over."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _as_math(latex: str) -> str:
    """`$latex$`, the form math-verify's LaTeX extractor reads; stray `$` inside are dropped.

    Measured on the five evaluation files: `$x$` and `\\boxed{x}` agree on every gold, and `$x$`
    parses twice as fast.
    """
    return "$" + _UNESCAPED_DOLLAR_RE.sub("", latex) + "$"


def _brace_depth(text: str) -> int:
    depth = deepest = 0
    for c in text:
        if c == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif c == "}":
            depth = max(0, depth - 1)
    return deepest


def load_reward_function(spec: str):
    """The user reward `package.module:function` or `path/to/file.py:function`, checked to be
    callable as function(completion, gold, row). Raises ValueError naming it otherwise."""
    import importlib
    import importlib.util
    import inspect

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"reward={spec!r}: expected one of {BUILTIN_REWARDS}, 'package.module:function' or "
                         f"'path/to/file.py:function'")
    try:
        if where.endswith(".py"):
            path = os.path.abspath(os.path.expanduser(where))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file {path}")
            module_spec = importlib.util.spec_from_file_location(f"_gvm_reward_{abs(hash(path))}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        fn = getattr(module, name)
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises, name it
        raise ValueError(f"reward={spec!r} cannot be imported: {type(error).__name__}: {error}") from None
    if not callable(fn):
        raise ValueError(f"reward={spec!r}: {name} is not a function")
    try:
        inspect.signature(fn).bind("completion", "gold", {})
    except TypeError as error:
        raise ValueError(f"reward={spec!r}: {name} must take (completion, gold, row): {error}") from None
    except ValueError:
        pass  # a builtin without a signature: trust it
    return fn


def _normalise_text(text: str) -> str:
    """For reward="exact": no surrounding $ or spaces, inner whitespace dropped, lower case."""
    return re.sub(r"\s+", "", text.strip().strip("$")).lower()


class _ItemScorer:
    """Scores (completion, gold) pairs with math-verify, parsing each distinct gold once.

    Uses SIGALRM for its time budgets, so it must run in a process's main thread. math-verify's own
    alarms are switched off (`parsing_timeout=None`): they share the one ITIMER_REAL with ours and
    would cancel it.
    """

    def __init__(self, timeout_s: float, max_answer_chars: int, max_brace_depth: int,
                 fallbacks: bool, reward: str = "math", gold_cache_size: int = 4096):
        self.timeout_s = timeout_s
        self.max_answer_chars = max_answer_chars
        self.max_brace_depth = max_brace_depth
        self.fallbacks = fallbacks
        self.reward = reward
        self.user_fn = None if reward in BUILTIN_REWARDS else load_reward_function(reward)
        self.gold_cache_size = gold_cache_size
        self._golds: OrderedDict[tuple[str, ...], list | None] = OrderedDict()

    def _parse_gold(self, gold_key: tuple[str, ...]) -> list | None:
        """All alternatives' parses concatenated (verify accepts any pair), None when none parse."""
        if gold_key in self._golds:
            self._golds.move_to_end(gold_key)
            return self._golds[gold_key]
        from math_verify import parse

        def parse_all() -> list:
            return [p for alt in gold_key for p in parse(_as_math(alt), parsing_timeout=None)]

        try:
            parsed = _run_with_alarm(self.timeout_s, parse_all) or None
        except _Deadline:
            parsed = None
        except Exception:  # noqa: BLE001 - a gold that math-verify cannot read scores nothing
            parsed = None
        self._golds[gold_key] = parsed
        if len(self._golds) > self.gold_cache_size:
            self._golds.popitem(last=False)
        return parsed

    def _score_answer(self, completion: str, gold: list) -> tuple[float, str]:
        from math_verify import parse, verify

        answer = extract_answer(completion, fallbacks=self.fallbacks)
        if answer is None:
            return 0.0, "no_answer"
        if len(answer) > self.max_answer_chars:
            return 0.0, "too_long"
        if _brace_depth(answer) > self.max_brace_depth:
            return 0.0, "too_deep"
        parsed = parse(_as_math(scientific_to_latex(answer)), parsing_timeout=None)
        if not parsed:
            return 0.0, "parse_error"
        if verify(gold, parsed, timeout_seconds=None):
            return 1.0, "correct"
        return 0.0, "wrong"

    def _score_exact(self, completion: str, gold_key: tuple[str, ...]) -> tuple[float, str]:
        answer = extract_answer(completion, fallbacks=self.fallbacks)
        if answer is None:
            return 0.0, "no_answer"
        if _normalise_text(answer) in {_normalise_text(g) for g in gold_key}:
            return 1.0, "correct"
        return 0.0, "wrong"

    def _score_user(self, completion: str, row: dict) -> tuple[float, str]:
        try:
            value = _run_with_alarm(self.timeout_s, self.user_fn, completion, row.get("answer"), row)
        except _Deadline:
            return 0.0, "timeout"
        except Exception:  # noqa: BLE001 - a failing reward scores 0 and is counted, never stops training
            return 0.0, "reward_error"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return 0.0, "not_a_number"
        return float(value), "scored"

    def score(self, completion: str, gold_key: tuple[str, ...], row: dict | None = None) -> tuple[float, str]:
        """(reward, reason); never raises on bad input."""
        if self.user_fn is not None:
            return self._score_user(completion, row if row is not None else {"answer": list(gold_key)})
        if self.reward == "exact":
            return self._score_exact(completion, gold_key)
        gold = self._parse_gold(gold_key)
        if gold is None:
            return 0.0, "gold_error"
        try:
            return _run_with_alarm(self.timeout_s, self._score_answer, completion, gold)
        except _Deadline:
            return 0.0, "timeout"
        except RecursionError:
            return 0.0, "too_deep"
        except Exception:  # noqa: BLE001 - bad LaTeX must score 0, never stop training
            return 0.0, "parse_error"


def _quiet_math_verify() -> None:
    """math-verify logs every unparsable string at WARNING; failures are counted in stats instead."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _worker_main() -> None:
    """A worker (`python -c ...` started by _Worker; argv: this file, socket fd, scorer args as JSON).

    Announces readiness, then scores ((gold_key, row), [(index, completion), ...]) tasks, sending back
    (index, reward, reason) per item, until it receives None or the socket closes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    conn = Connection(int(sys.argv[2]))
    _quiet_math_verify()
    warnings.simplefilter("ignore")  # sympy's warnings on odd inputs would flood the trainer's stderr
    import math_verify  # noqa: F401 - pay the sympy import before announcing readiness

    args = json.loads(sys.argv[3])
    sys.path[:0] = [p for p in args.pop("sys_path", []) if p not in sys.path]  # the parent's, for user rewards
    try:
        scorer = _ItemScorer(**args)
    except ValueError as error:  # a user reward that imports in the parent but not here
        print(f"verifier worker: {error}", file=sys.stderr)
        return
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        (gold_key, row), items = task
        for index, completion in items:
            reward, reason = scorer.score(completion, gold_key, row)
            conn.send((index, reward, reason))


# ----------------------------------------------------------------------------------------------
# The verifier: configuration, worker pool with watchdog, in-process mode

def _default_num_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class VerifierConfig:
    num_workers: int = field(default_factory=_default_num_workers)  # 0: score in this process's main thread
    timeout_s: float = 5.0  # budget per item (extract + parse + verify), and per distinct gold's parse
    kill_grace_s: float = 2.0  # the watchdog kills a worker this long after its own alarm should have fired
    startup_timeout_s: float = 120.0  # a worker that is not ready by then is an environment failure
    chunk_size: int = 16  # items of one gold per message: the worker parses that gold once per chunk
    max_answer_chars: int = 2000  # longer extracted answers score 0 unparsed ("too_long")
    max_brace_depth: int = 32  # deeper answers score 0 unparsed ("too_deep"): the parser recurses
    fallbacks: bool = True  # without a box, accept "the answer is X" and a last $...$
    reward: str = "math"  # "math" (math-verify), "exact" (normalised string equality), or a user function
    # "package.module:function" / "path/to/file.py:function", called as function(completion, gold, row)
    accept_threshold: float = 0.5  # a sample is accepted (RAFT trains on it; GVM's p_i) when reward >= this

    def __post_init__(self):
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = in-process), got {self.num_workers}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.kill_grace_s < 0 or self.startup_timeout_s <= 0:
            raise ValueError("kill_grace_s must be >= 0 and startup_timeout_s > 0, "
                             f"got {self.kill_grace_s} and {self.startup_timeout_s}")
        if self.chunk_size < 1 or self.max_answer_chars < 1 or self.max_brace_depth < 1:
            raise ValueError("chunk_size, max_answer_chars and max_brace_depth must be >= 1, got "
                             f"{self.chunk_size}, {self.max_answer_chars}, {self.max_brace_depth}")
        if not math.isfinite(self.accept_threshold):
            raise ValueError(f"accept_threshold must be a finite number, got {self.accept_threshold}")
        if self.reward not in BUILTIN_REWARDS:
            load_reward_function(self.reward)  # stops before any work when it cannot be used

    @property
    def user_reward(self) -> bool:
        """A user function: it gets the data row, so the rows travel with the items."""
        return self.reward not in BUILTIN_REWARDS

    def scorer_args(self) -> dict:
        return {"timeout_s": self.timeout_s, "max_answer_chars": self.max_answer_chars,
                "max_brace_depth": self.max_brace_depth, "fallbacks": self.fallbacks, "reward": self.reward}


# The worker loads this file by path, not `gvm.verify`: the package's __init__ may import torch.
_WORKER_CODE = ("import importlib.util, sys; "
                "spec = importlib.util.spec_from_file_location('_gvm_verify_worker', sys.argv[1]); "
                "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; "
                "spec.loader.exec_module(module); module._worker_main()")


class _Worker:
    """One worker process, its socket, and the chunk it is working through.

    A fresh interpreter that runs only this file (like multiprocessing's spawn, so nothing of the
    parent's torch threads or locks is inherited). Unlike spawn and forkserver it does not re-run
    the caller's main script, which in a trainer imports torch, transformers and vLLM: measured
    2 s more per worker start with torch alone (forkserver's "__main__" preload does not help on
    Python 3.11), and hundreds of MB per worker.
    """

    def __init__(self, scorer_args: dict, startup_timeout_s: float):
        parent_sock, child_sock = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, os.path.abspath(__file__), str(child_sock.fileno()),
                 json.dumps(scorer_args)],
                pass_fds=(child_sock.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.ready = False
        self.eof = False  # the socket closed: the worker is dead or dying
        self.task_key: tuple | None = None   # (gold key, row) of the chunk it is working through
        self.items: deque[tuple[int, str]] = deque()  # sent, not yet answered, in order
        self.deadline = time.monotonic() + startup_timeout_s

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return bool(self.items)

    @property
    def dead(self) -> bool:
        return self.eof or self.process.poll() is not None

    def stop(self) -> None:
        """Ask it to exit, and kill it anyway: it holds no state, and one stuck in C code would
        never read the request."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # unkillable (e.g. stuck in the kernel): nothing more we can do
        self.conn.close()


class Verifier:
    """Scores completions against gold answers: 1.0 when math-verify finds them equal, else 0.0.

    Never raises on bad completions and never hangs: each item has `timeout_s` of wall time; a
    worker that overruns it (stuck in C code, where SIGALRM cannot reach) is killed and replaced.
    Reasons are counted in `stats` (see REASONS), replaced workers in `restarts`. Workers start on
    first use and live until `close()`. The budget is wall time, so a heavily oversubscribed
    machine turns a few slow items into timeouts: 3 of 10,844 MATH500 answer pairs at 5 s with
    2 workers on 2 cores shared with ~6 other busy processes.
    `num_workers=0` scores in the calling thread, which must be the main thread; its timeouts
    cannot interrupt C code, so use it for small, trusted jobs and tests.
    """

    def __init__(self, config: VerifierConfig | None = None, **overrides):
        self.config = replace(config or VerifierConfig(), **overrides)
        self.stats: Counter[str] = Counter()  # items by reason (REASONS)
        self.restarts: Counter[str] = Counter()  # workers replaced: "killed" (overran), "died"
        self._workers: list[_Worker] = []
        self._in_process: _ItemScorer | None = None
        self._lock = threading.Lock()  # one score() at a time: the pool is not re-entrant

    # -- public API ----------------------------------------------------------------------------

    def score(self, completions: Sequence[str], golds: Sequence[Gold], rows: Sequence[dict] | None = None
              ) -> list[float]:
        """Reward per completion: for "math" and "exact", 1.0 if its final answer equals its gold
        (any alternative), else 0.0; for a user function, what it returns. `rows` (the data row of
        each item, extra fields kept) are what a user function gets as its third argument."""
        return self.score_with_reasons(completions, golds, rows)[0]

    def score_with_reasons(self, completions: Sequence[str], golds: Sequence[Gold],
                           rows: Sequence[dict] | None = None) -> tuple[list[float], list[str]]:
        """Rewards and, per item, why (one of REASONS); also added to `stats`."""
        if len(completions) != len(golds) or (rows is not None and len(rows) != len(golds)):
            raise ValueError(f"completions, golds and rows must have the same length, got "
                             f"{len(completions)}, {len(golds)} and {len(rows) if rows is not None else '-'}")
        for i, completion in enumerate(completions):
            if not isinstance(completion, str):
                raise ValueError(f"completions[{i}] must be a str, got {type(completion).__name__}")
        if not completions:
            return [], []
        keys: dict[int, tuple[str, ...]] = {}  # id(gold) -> key: normalise each gold object once
        gold_keys = [keys[id(g)] if id(g) in keys else keys.setdefault(id(g), _gold_key(g)) for g in golds]
        if not self.config.user_reward:
            rows = None  # the built-in rewards need only the gold
        elif rows is None:
            rows = [{"answer": g} for g in golds]
        with self._lock:
            if self.config.num_workers == 0:
                results = self._score_in_process(completions, gold_keys, rows)
            else:
                results = self._score_in_pool(completions, gold_keys, rows)
        rewards = [r for r, _ in results]
        reasons = [why for _, why in results]
        self.stats.update(reasons)
        return rewards, reasons

    def start(self) -> "Verifier":
        """Start the workers now (otherwise on the first score()); returns self."""
        if self.config.num_workers > 0:
            with self._lock:
                self._ensure_workers()
        return self

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def busy_worker_pids(self) -> list[int]:
        """Workers scoring a chunk right now (another thread may be inside `score`)."""
        return [w.pid for w in self._workers if w.busy]

    def close(self) -> None:
        """Stop the workers. The verifier can be used again: it restarts them on demand."""
        busy = self.busy_worker_pids()
        if busy:
            log.warning("verifier closed while workers %s were scoring (an interrupted score call)", busy)
        workers, self._workers = self._workers, []
        for w in workers:
            w.stop()

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn modules down
            pass

    # -- in-process mode -----------------------------------------------------------------------

    def _score_in_process(self, completions: Sequence[str], gold_keys: list[tuple[str, ...]],
                          rows: Sequence[dict] | None) -> list[tuple[float, str]]:
        if threading.current_thread() is not threading.main_thread():
            raise ValueError("num_workers=0 scores with SIGALRM timeouts, which work only in the main "
                             "thread; call score() from the main thread or use num_workers >= 1")
        if self._in_process is None:
            self._in_process = _ItemScorer(**self.config.scorer_args())
        logger = logging.getLogger("math_verify")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return [self._in_process.score(c, k, rows[i] if rows is not None else None)
                    for i, (c, k) in enumerate(zip(completions, gold_keys))]
        finally:
            logger.setLevel(level)

    # -- pool mode -----------------------------------------------------------------------------

    def _new_worker(self) -> _Worker:
        return _Worker({**self.config.scorer_args(), "sys_path": sys.path}, self.config.startup_timeout_s)

    def _ensure_workers(self) -> None:
        """Start missing workers and wait until all are ready (imports done)."""
        self._workers = [w for w in self._workers if not w.dead]
        while len(self._workers) < self.config.num_workers:
            self._workers.append(self._new_worker())
        for w in self._workers:
            if not w.ready:
                self._await_ready(w)

    def _await_ready(self, w: _Worker) -> None:
        remaining = w.deadline - time.monotonic()
        if w.conn.poll(max(0.0, remaining)):
            try:
                if w.conn.recv() == "ready":
                    w.ready = True
                    return
            except (EOFError, OSError):
                pass
        w.kill()
        self._workers.remove(w)
        raise RuntimeError(f"a verifier worker did not start within {self.config.startup_timeout_s} s "
                           f"(exit code {w.process.returncode}); its error, if any, is printed above; "
                           f"check that `{sys.executable} -c 'import math_verify'` works")

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = fresh = self._new_worker()
        self._await_ready(fresh)

    def _dispatch(self, w: _Worker, key: tuple, items: list[tuple[int, str]]) -> bool:
        try:
            w.conn.send((key, items))
        except (OSError, ValueError):
            return False  # the worker died while idle; the caller replaces it and requeues
        w.task_key = key
        w.items = deque(items)
        # The first item may also pay for parsing the gold: two budgets.
        w.deadline = time.monotonic() + 2 * self.config.timeout_s + self.config.kill_grace_s
        return True

    def _score_in_pool(self, completions: Sequence[str], gold_keys: list[tuple[str, ...]],
                       rows: Sequence[dict] | None) -> list[tuple[float, str]]:
        self._ensure_workers()
        results: list[tuple[float, str] | None] = [None] * len(completions)
        # Items of one gold (and, for a user reward, one row) go together: the worker parses that
        # gold once per chunk. A task is ((gold key, row or None), [(index, completion), ...]).
        by_key: dict[tuple, list[int]] = {}
        for i, key in enumerate(gold_keys):
            by_key.setdefault((key, id(rows[i]) if rows is not None else None), []).append(i)
        size = self.config.chunk_size
        tasks: deque = deque(
            ((key, rows[idx[0]] if rows is not None else None), [(i, completions[i]) for i in idx[s:s + size]])
            for (key, _), idx in by_key.items() for s in range(0, len(idx), size))

        try:
            while tasks or any(w.busy for w in self._workers):
                self._dispatch_all(tasks)
                self._watch(tasks, results)
        except BaseException:
            self.close()  # e.g. Ctrl-C: answers still in flight would confuse the next call
            raise
        return results  # type: ignore[return-value]

    def _dispatch_all(self, tasks: deque) -> None:
        """Give a chunk to every idle worker; a worker found dead is replaced, its chunk requeued."""
        for slot in range(len(self._workers)):
            if tasks and not self._workers[slot].busy:
                key, items = tasks.popleft()
                if not self._dispatch(self._workers[slot], key, items):
                    tasks.appendleft((key, items))
                    self.restarts["died"] += 1
                    self._replace(self._workers[slot])

    def _watch(self, tasks: deque, results: list) -> None:
        """Wait for answers until the nearest deadline; kill and replace overdue or dead workers."""
        busy = [w for w in self._workers if w.busy]
        if not busy:
            return
        wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
        wait([w.conn for w in busy], timeout=wait_s)  # a dying worker's socket reads as EOF
        for w in busy:
            self._collect(w, results)
            if not w.busy:
                continue
            dead = w.dead
            if dead or time.monotonic() > w.deadline:
                # The item at the head of the chunk is the one that hung or crashed the worker.
                index, _ = w.items.popleft()
                results[index] = (0.0, "crashed" if dead else "timeout")
                if w.items:
                    tasks.appendleft((w.task_key, list(w.items)))
                w.items.clear()
                self.restarts["died" if dead else "killed"] += 1
                self._replace(w)

    def _collect(self, w: _Worker, results: list) -> None:
        """Read every answer the worker has sent; each one restarts its per-item clock."""
        try:
            while w.items and w.conn.poll():
                index, reward, reason = w.conn.recv()
                expected, _ = w.items.popleft()
                if index != expected:
                    raise RuntimeError(f"verifier worker answered item {index}, expected {expected}")
                results[index] = (reward, reason)
                w.deadline = time.monotonic() + self.config.timeout_s + self.config.kill_grace_s
        except (EOFError, OSError):
            w.eof = True  # died mid-chunk: the caller replaces it
