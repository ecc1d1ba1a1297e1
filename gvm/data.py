"""Prompts in, prompts out: read problem/answer rows from a file or the Hugging Face hub, and
turn a problem into the text the policy model sees.

Every row is a dict `{"index", "line", "problem", "answer", ...other fields}`. `index` is the
row's position in the source (counting skipped rows, from 0), so it stays stable when rows are
filtered and can key per-prompt statistics; `line` is where it stands in the file (the line of
a JSONL file, the record of JSON or Parquet, from 1), which every message names. `answer` is kept raw (a string, a number or a list, as the
source has it); `gvm.verify.normalize_gold` turns it into a gold answer.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
PROBLEM_KEY, ANSWER_KEY = "problem", "answer"   # the fields every row has after loading

# Qwen2.5-Math chain-of-thought prompt, as the GVM authors build their training data.
SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
COT_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."

# How many skipped line numbers the warning names.
SHOWN_SKIPPED = 5


# ---------------------------------------------------------------------------------------------
# Reading


# The shapes peers write, tried in order when the keys are left at their defaults: (who, problem
# key, answer key). Dotted keys reach into nested fields; a problem may be chat messages.
SHAPES = (
    ("gvm", PROBLEM_KEY, ANSWER_KEY),
    ("verl", "prompt", "reward_model.ground_truth"),     # verl's RL parquet: chat messages, reward_model
    ("TRL", "prompt", "solution"),                      # TRL's conversational rows
    ("TRL", "prompt", ANSWER_KEY),
)


def load_prompts(source: str | Path, problem_key: str = PROBLEM_KEY, answer_key: str = ANSWER_KEY,
                 split: str | None = None) -> list[dict]:
    """Read rows from a JSONL, JSON (a list, or `{"data": [...]}`) or Parquet file, or from a
    Hugging Face dataset name (needs the `datasets` package and the hub; `split` defaults to
    "train" there and must be None for a file).

    With the default keys, the shape is found among SHAPES (ours, verl's, TRL's); other keys are
    read as given (OpenRLHF's input_key / label_key, or a dotted path such as
    reward_model.ground_truth). The problem (a string, or chat messages) and the answer are
    renamed to "problem" and "answer"; other fields are kept (a field that would collide with
    "index", "line", "problem" or "answer" is kept as "source_<name>"). Rows without a problem or
    an answer are skipped with one warning. Raises FileNotFoundError when the source is neither a
    file nor a reachable dataset, and ValueError naming the file and line when a file is not what
    its suffix says, or naming the keys it found when it is in no known shape.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        raise ValueError(f"{source}: is a folder; give one JSONL, JSON or Parquet file")
    if path.is_file():
        if split is not None:
            raise ValueError(f"split={split!r} applies to hub datasets only; {source} is one file")
        records, unit = _read_file(path), _record_unit(path)
    elif _looks_like_path(str(source)):
        raise FileNotFoundError(f"prompt file not found: {source}")
    else:
        records, unit = _read_hub(str(source), split or "train"), "record"
    if (problem_key, answer_key) == (PROBLEM_KEY, ANSWER_KEY):
        problem_key, answer_key = _find_shape(records, str(source))
    return _to_rows(records, problem_key, answer_key, name=str(source), unit=unit)


def lookup(record: dict, dotted: str) -> Any:
    """record["a"]["b"] for "a.b" (None where a part is missing); a key that holds the dots
    itself is taken as it is."""
    if dotted in record:
        return record[dotted]
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _find_shape(records: list[tuple[int, Any]], name: str) -> tuple[str, str]:
    """The (problem key, answer key) of the first shape the first records are written in."""
    sample = [r for _, r in records[:20] if isinstance(r, dict)]
    for _, problem_key, answer_key in SHAPES:
        if sample and all(lookup(r, problem_key) is not None and lookup(r, answer_key) is not None for r in sample[:1]):
            return problem_key, answer_key
    found = sorted({key for r in sample[:1] for key in _keys(r)})
    shapes = "; ".join(f"{who}: {p!r} and {a!r}" for who, p, a in SHAPES)
    raise ValueError(f"{name}: its rows are in no known shape ({shapes}); its first row holds the keys "
                     f"{found}. Name the fields with data.problem_key=... and data.answer_key=... (on gvm.eval: "
                     f"problem_key=, answer_key=); a dotted path reaches into a nested field")


def _keys(record: dict, prefix: str = "") -> list[str]:
    """Every key of a record, nested ones as dotted paths."""
    out = []
    for key, value in record.items():
        out.append(f"{prefix}{key}")
        if isinstance(value, dict):
            out += _keys(value, f"{prefix}{key}.")
    return out


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write rows one JSON object a line (UTF-8) for `load_prompts` to read back. "index" is
    left out: it is the position in the source, and the new file is a new source."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            record = {key: value for key, value in row.items() if key not in ("index", "line")}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _looks_like_path(source: str) -> bool:
    """A source with a data-file suffix or a path prefix is a file that is missing, never a
    hub name (hub names are `owner/name`)."""
    return source.lower().endswith(DATA_SUFFIXES) or source.startswith(("/", ".", "~"))


def _record_unit(path: Path) -> str:
    """What a position in this file is called in messages: JSONL lines, JSON records, rows."""
    suffix = path.suffix.lower()
    return "line" if suffix in JSONL_SUFFIXES else "row" if suffix in PARQUET_SUFFIXES else "record"


def _read_file(path: Path) -> list[tuple[int, Any]]:
    """(1-based position, record) pairs; the position is a line number for JSONL."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return list(_read_jsonl(path))
    if suffix in JSON_SUFFIXES:
        return _read_json(path)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raise ValueError(f"{path}: unknown file type {suffix!r}; use one of {', '.join(DATA_SUFFIXES)}")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {line_number} is not UTF-8 ({e.reason})") from e
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}: line {line_number} is not valid JSON ({e.msg}, column {e.colno})"
                ) from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_number} is a JSON {type(record).__name__}, "
                                 f"expected an object per line")
            yield line_number, record


def _read_json(path: Path) -> list[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # Many ".json" datasets are JSON Lines in fact; read them as such.
            return _with_record_numbers(record for _, record in _read_jsonl(path))
        raise ValueError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from e
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects or {{\"data\": [...]}}, "
                         f"got a {type(data).__name__}")
    for position, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {position} is a JSON {type(record).__name__}, "
                             f"expected an object")
    return _with_record_numbers(data)


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    return _with_record_numbers(table.to_pylist())


def _read_hub(name: str, split: str) -> list[tuple[int, dict]]:
    """Rows of a Hugging Face dataset; `datasets` is optional and imported only here."""
    try:
        import datasets
    except ImportError as e:
        raise FileNotFoundError(
            f"{name!r} is neither a file nor a reachable Hugging Face dataset: no such file, and "
            f"the `datasets` package is not installed (pip install datasets)"
        ) from e
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as e:  # the hub raises many types; all mean "cannot get it"
        raise FileNotFoundError(
            f"{name!r} is neither a file nor a reachable Hugging Face dataset (split {split!r}): "
            f"{type(e).__name__}: {e}"
        ) from e
    return _with_record_numbers(dataset)


def _with_record_numbers(records: Iterable[dict]) -> list[tuple[int, dict]]:
    return list(enumerate(records, start=1))


def is_chat(problem: Any) -> bool:
    """Chat messages: a non-empty list of {"role", "content"} dicts with string contents."""
    return (isinstance(problem, (list, tuple)) and len(problem) > 0
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in problem))


def _is_problem(value: Any) -> bool:
    """A non-blank string, or chat messages with something to say."""
    if isinstance(value, str):
        return bool(value.strip())
    return is_chat(value) and any(m["content"].strip() for m in value)


def _has_answer(value: Any) -> bool:
    """0 and 0.0 are answers; None, blank strings and empty lists are not."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple)):
        return len(value) > 0
    return True


def _to_rows(records: list[tuple[int, dict]], problem_key: str, answer_key: str, *, name: str,
             unit: str) -> list[dict]:
    rows, skipped = [], []
    for index, (position, record) in enumerate(records):
        problem, answer = lookup(record, problem_key), lookup(record, answer_key)
        if not _is_problem(problem) or not _has_answer(answer):
            skipped.append(position)
            continue
        row = {"index": index, "line": position, "problem": problem, "answer": answer}
        for key, value in record.items():
            if key in (problem_key, answer_key):
                continue
            row[f"source_{key}" if key in row else key] = value
        rows.append(row)
    if not rows:
        raise ValueError(f"{name}: none of its {len(records)} {unit}s has both {problem_key!r} and "
                         f"{answer_key!r}; set problem_key/answer_key to the source's field names")
    if skipped:
        shown = ", ".join(map(str, skipped[:SHOWN_SKIPPED]))
        more = ", ..." if len(skipped) > SHOWN_SKIPPED else ""
        plural = "s" if len(skipped) > 1 else ""
        warnings.warn(
            f"{name}: skipped {len(skipped)} of {len(records)} {unit}s without a problem in "
            f"{problem_key!r} or an answer in {answer_key!r} ({unit}{plural} {shown}{more})",
            stacklevel=3,
        )
    return rows


# ---------------------------------------------------------------------------------------------
# Prompt formatting


def _cot_messages(problem: str) -> list[dict]:
    """Qwen2.5-Math chain of thought: the system prompt, the problem and the instruction."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{problem} {COT_INSTRUCTION}"}]


def _compact_messages(problem: str) -> list[dict]:
    """The bare problem, for the character-level toy model whose context is ~1k characters."""
    return [{"role": "user", "content": problem}]


PROMPT_STYLES = {"cot": _cot_messages, "compact": _compact_messages}


def format_prompt(problem: str | list[dict], tokenizer: Any = None, style: str = "cot") -> str:
    """The text the policy continues: the style's messages through the tokenizer's chat
    template (with the assistant turn opened) when it has one, plain text otherwise.

    style "cot" is the Qwen2.5-Math chain-of-thought prompt used for real models; "compact"
    is the bare problem, for the built-in arithmetic task and the tiny model. A problem given as
    chat messages (verl's and TRL's rows) goes through the template as it is, whatever the style:
    no second system prompt, no instruction added.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    messages = [dict(m) for m in problem] if is_chat(problem) else PROMPT_STYLES[style](problem)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages) + "\n"
