"""The rollout engine interface and its data types (the registry and factory: gvm.engines.factory).

GVM gives every prompt its own sample count n_i (possibly 0), so `generate` takes one count
per prompt and returns one list of completions per prompt.
"""
from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Sequence

import torch

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled. temperature 0 means greedy decoding."""

    temperature: float = 1.0  # 1.0 samples the policy itself, as RAFT/GRPO need
    top_p: float = 1.0  # < 1 truncates the distribution; log-probs are then of the truncated one
    max_tokens: int = 256  # response length cap; hitting it gives finish reason "length"
    seed: int | None = None  # None: the engine's own per-rank random stream
    stop_token_ids: tuple[int, ...] = ()  # stop at these besides the model's EOS ids

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled response. `logprobs[t]` is log p(token_ids[t] | prefix) under the
    distribution the engine sampled from (temperature-scaled, top-p truncated); for greedy
    decoding, under the unscaled distribution. A stop token, when hit, is the last token."""

    token_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"token_ids ({len(self.token_ids)}) and logprobs ({len(self.logprobs)}) must "
                f"have the same length: one log-prob per generated token"
            )
        if self.finish_reason not in ("stop", "length"):
            raise ValueError(f"finish_reason must be 'stop' or 'length', got {self.finish_reason!r}")


def normalize_counts(n_per_prompt: Sequence[int] | int, num_prompts: int) -> list[int]:
    """One non-negative sample count per prompt, from a list or one int for all."""
    if isinstance(n_per_prompt, int):
        counts = [n_per_prompt] * num_prompts
    else:
        counts = [int(n) for n in n_per_prompt]
    if len(counts) != num_prompts:
        raise ValueError(
            f"n_per_prompt has {len(counts)} entries but there are {num_prompts} prompts: give "
            f"one count per prompt or a single int"
        )
    if any(n < 0 for n in counts):
        raise ValueError(f"n_per_prompt must be >= 0 everywhere, got {counts}")
    return counts


class PrivateRNG:
    """An engine's own random stream: unseeded sampling draws from it, so generating neither
    moves the trainer's global RNG nor depends on it (ranks that seed the trainer alike would
    otherwise sample alike)."""

    def __init__(self, seed: int) -> None:
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed)
            self._state = self._capture()

    @staticmethod
    def _devices() -> list[int]:
        return [torch.cuda.current_device()] if torch.cuda.is_available() else []

    @staticmethod
    def _capture() -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None

    def state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Where the stream stands (saved with checkpoints, so a resumed run samples the same)."""
        cpu, cuda = self._state
        return cpu.clone(), None if cuda is None else cuda.clone()

    def load(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        cpu, cuda = state
        self._state = (cpu.clone(), None if cuda is None or not torch.cuda.is_available() else cuda.clone())

    @contextlib.contextmanager
    def active(self, seed: int | None = None) -> Iterator[None]:
        """Inside, the global torch RNG is this stream (or a fresh one from `seed`, which
        leaves the stream where it was); outside, the caller's state is back."""
        with torch.random.fork_rng(devices=self._devices()):
            if seed is not None:
                torch.manual_seed(seed)
                yield
                return
            cpu, cuda = self._state
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda)
            yield
            self._state = self._capture()


class Engine(ABC):
    """A generator of completions that can take new weights and give its memory back.

    Colocated use, per iteration (gvm.colocation): generate -> sleep -> train -> update_weights
    (wakes the engine) -> generate. `close()` frees the engine for good. Engines sample unseeded
    requests from their own `PrivateRNG` held as `self._rng` (sampling_state saves it).
    """

    @abstractmethod
    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n_per_prompt: Sequence[int] | int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]:
        """n_per_prompt[i] completions of prompt i, as result[i]; an empty list where n_i = 0."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load weights given by Hugging Face parameter names, in place. The iterable is
        consumed once, lazily: a caller may gather each tensor just before it is yielded."""

    @abstractmethod
    def sleep(self) -> None:
        """Release accelerator memory while the trainer runs (where unsupported, nothing moves but
        the engine still counts as asleep: `generate` refuses until it wakes)."""

    @abstractmethod
    def wake(self) -> None:
        """Take the memory back after `sleep`."""

    @property
    @abstractmethod
    def asleep(self) -> bool:
        """Between `sleep` and `wake` / `update_weights`."""

    @property
    def needs_weights(self) -> bool:
        """The last sleep dropped the weights: only `update_weights` makes the engine usable again."""
        return False

    def sampling_state(self):
        """The engine's own random stream (unseeded sampling draws from it), for checkpoints."""
        return self._rng.state()

    def load_sampling_state(self, state) -> None:
        self._rng.load(state)

    @abstractmethod
    def close(self) -> None:
        """Free the engine; it cannot be used afterwards."""
