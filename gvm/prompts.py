"""The prompts a run trains and evaluates on: rows from files or the built-in arithmetic task,
formatted and tokenized once, and a deterministic order of prompt batches.

`Prompt.key` is the row's stable index in the training set: it keys the per-prompt statistics
(gvm.stats) and the allocation audit log. The stream of prompts depends only on the seed and its
position, so a resumed run continues with the prompts it would have taken.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gvm.arithmetic import make_split, with_slips
from gvm.data import SHOWN_SKIPPED, format_prompt, load_prompts, write_jsonl
from gvm.verify import normalize_gold


@dataclass
class Prompt:
    key: int                     # stable index in its set
    problem: str
    gold: str | list[str]        # normalised gold answer(s)
    token_ids: list[int]         # the formatted prompt, tokenized
    row: dict = field(repr=False, default_factory=dict)  # the source row (solution, level, ...)
    too_long: bool = False       # over the prompt budget: evaluation counts it unanswered, training drops it


def encode_prompt(problem: str, tokenizer: Any, style: str) -> list[int]:
    """Token ids of the formatted prompt. A chat template writes its own special tokens, so none
    are added then (no doubled BOS)."""
    text = format_prompt(problem, tokenizer, style=style)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer.encode(text, add_special_tokens=not has_template))


def row_line(row: dict, position: int) -> int:
    """The row's line in its file (its record number for JSON and Parquet), counted from 1."""
    return int(row.get("line", position + 1))


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:SHOWN_SKIPPED]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{', ...' if len(numbers) > SHOWN_SKIPPED else ''}"


def to_prompts(rows: list[dict], tokenizer: Any, style: str, *, max_tokens: int | None = None,
               name: str = "data", keep_too_long: bool = False) -> list[Prompt]:
    """Rows -> Prompts (key = the row's position in `rows`). A row the tokenizer cannot encode is
    skipped; a prompt over `max_tokens` is dropped (training) or kept marked too_long
    (`keep_too_long`, evaluation: it counts as unanswered); each with one warning naming the
    lines. Raises ValueError naming the line when a gold answer is unusable."""
    prompts, too_long, unencodable = [], [], []
    for position, row in enumerate(rows):
        try:
            gold = normalize_gold(row["answer"])
        except ValueError as error:
            raise ValueError(f"{name}: line {row_line(row, position)} has an unusable answer: {error}") from None
        try:
            ids = encode_prompt(row["problem"], tokenizer, style)
        except (TypeError, ValueError, UnicodeError):    # e.g. a lone surrogate the tokenizer refuses
            unencodable.append(row_line(row, position))
            continue
        over = max_tokens is not None and len(ids) > max_tokens
        if over:
            too_long.append(row_line(row, position))
            if not keep_too_long:
                continue
        prompts.append(Prompt(key=position, problem=row["problem"], gold=gold, token_ids=ids, row=row, too_long=over))
    if unencodable:
        warnings.warn(f"{name}: skipped {len(unencodable)} of {len(rows)} rows the tokenizer cannot encode "
                      f"({_lines(unencodable)})", stacklevel=2)
    if too_long:
        what = "kept as unanswered (scored 0)" if keep_too_long else "dropped"
        warnings.warn(f"{name}: {len(too_long)} of {len(rows)} prompts are longer than the prompt budget of "
                      f"{max_tokens} tokens, {what} ({_lines(too_long)}); the budget is the smaller of "
                      f"data.max_prompt_tokens and the model's context minus the response tokens", stacklevel=2)
    if not prompts or not (keep_too_long or any(not p.too_long for p in prompts)):
        raise ValueError(f"{name}: no prompt fits the prompt budget of {max_tokens} tokens (of {len(rows)} rows)")
    return prompts


def prompt_budget(max_prompt_tokens: int, context: int | None, response_tokens: int) -> int:
    """Tokens a prompt may have: data.max_prompt_tokens, and room for the response in the context."""
    if context is None:
        return max_prompt_tokens
    return max(0, min(max_prompt_tokens, context - response_tokens))


def load_rows(cfg, data_dir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows) for a RunConfig: the built-in task (written to data_dir as JSONL
    so `python -m gvm.eval` can read the same held-out set) or the configured files."""
    if cfg.builtin_task:
        task = cfg.task
        train, held_out = make_split(task.num_train, task.num_eval, seed=task.seed, levels=task.levels,
                                     weights=task.level_weights)
        train = with_slips(train, task.slip_rate, seed=task.seed)
        if data_dir is not None:
            write_jsonl(train, Path(data_dir) / "train.jsonl")
            write_jsonl(held_out, Path(data_dir) / "eval.jsonl")
    else:
        train = load_prompts(cfg.data.train_data, cfg.data.problem_key, cfg.data.answer_key)
        held_out = []
    if cfg.data.eval_data:
        held_out = load_prompts(cfg.data.eval_data, cfg.data.problem_key, cfg.data.answer_key)
    if cfg.data.max_eval_prompts is not None:
        held_out = held_out[: cfg.data.max_eval_prompts]
    return train, held_out


class PromptStream:
    """The training prompts as an endless shuffled stream: epoch e is a permutation seeded by
    (seed, e), and `take(k)` returns the next k prompts of the concatenated epochs. The position is
    all the state there is (a checkpoint saves it), so a resumed run draws what it would have."""

    def __init__(self, prompts: list[Prompt], seed: int, position: int = 0):
        if not prompts:
            raise ValueError("the prompt stream needs at least one prompt")
        self.prompts, self.seed, self.position = prompts, seed, position
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
        return self._orders[epoch]

    def take(self, count: int) -> list[Prompt]:
        out = []
        for position in range(self.position, self.position + count):
            epoch, offset = divmod(position, len(self.prompts))
            out.append(self.prompts[int(self._order(epoch)[offset])])
        self.position += count
        return out

    @property
    def epochs(self) -> float:
        """Passes over the training prompts so far."""
        return self.position / len(self.prompts)
