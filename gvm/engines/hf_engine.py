"""The transformers fallback engine: `model.generate` behind the rollout interface.

Used where vLLM is not installed (e.g. a GPU image without it) and as the reference the vLLM
engine is tested against. Log-probs are those of the distribution sampled from: HF's own
temperature / top-p warpers are switched off and applied by `_TemperedLogProbs`, which also
records log_softmax of the processed scores, so memory stays one (batch, vocab) buffer
instead of `output_scores`' max_tokens of them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from gvm.engines.base import Completion, Engine, PrivateRNG, SamplingConfig, normalize_counts
from gvm.engines.weight_sync import hf_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HFEngineConfig:
    max_batch_size: int = 64  # sequences per generate call; bounds the KV cache and logit buffer
    dtype: str = "auto"  # torch dtype name, or "auto" for the checkpoint's
    device: str | None = None  # None: cuda when available, else cpu
    seed: int = 0  # unseeded sampling uses its own stream from this seed

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


class _TemperedLogProbs(LogitsProcessor):
    """Applies temperature and top-p like vLLM (scale, then truncate) and keeps log_softmax of
    the result, i.e. the log-probs of the distribution the next token is drawn from."""

    def __init__(self, temperature: float, top_p: float) -> None:
        self.warpers = []
        if temperature not in (0.0, 1.0):
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.last_logprobs: torch.Tensor | None = None  # (B, V)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        self.last_logprobs = torch.log_softmax(scores, dim=-1)
        return scores


class _GatherChosen(StoppingCriteria):
    """Runs after each new token is appended: gathers its log-prob. Never stops anything."""

    def __init__(self, source: _TemperedLogProbs) -> None:
        self.source = source
        self.steps: list[torch.Tensor] = []  # one (B,) per generated position

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        chosen = input_ids[:, -1:]
        self.steps.append(self.source.last_logprobs.gather(1, chosen).squeeze(1))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFEngine(Engine):
    """Batched `generate` with left padding; greedy when temperature == 0."""

    config_class = HFEngineConfig

    def __init__(
        self,
        model_path: str | None = None,
        config: HFEngineConfig | None = None,
        *,
        model: PreTrainedModel | None = None,
        tokenizer=None,
    ) -> None:
        self.config = config or HFEngineConfig()
        if model is None and model_path is None:
            raise ValueError("give model_path (a Hugging Face folder) or model=")
        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.config.dtype)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_path)
        self.device = torch.device(device)
        self.eos_token_ids = self._model_eos_ids()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_ids[0]
        # Only what we set below may steer generation: no sampling defaults from the checkpoint
        # (Qwen ships top_k / repetition_penalty there), which vLLM would not apply either.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )
        self._rng = PrivateRNG(self.config.seed)
        self._asleep = False

    def _model_eos_ids(self) -> list[int]:
        ids: list[int] = []
        for source in (self.model.generation_config.eos_token_id, self.model.config.eos_token_id,
                       self.tokenizer.eos_token_id):
            for token in source if isinstance(source, (list, tuple)) else [source]:
                if token is not None and int(token) not in ids:
                    ids.append(int(token))
        if not ids:
            raise ValueError("the model has no EOS token id (config, generation config or tokenizer)")
        return ids

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n_per_prompt: Sequence[int] | int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]:
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake() or update_weights(...) before generate")
        counts = normalize_counts(n_per_prompt, len(prompt_token_ids))
        # Greedy: decode each prompt once and copy (n identical decodes would waste compute).
        rows = [i for i, n in enumerate(counts) for _ in range(1 if sampling.greedy else n) if n > 0]
        rows.sort(key=lambda i: len(prompt_token_ids[i]))  # similar lengths pad less
        results: list[list[Completion]] = [[] for _ in prompt_token_ids]
        with self._rng.active(sampling.seed):
            for start in range(0, len(rows), self.config.max_batch_size):
                batch = rows[start:start + self.config.max_batch_size]
                for i, completion in zip(batch, self._generate_batch([prompt_token_ids[i] for i in batch], sampling)):
                    copies = counts[i] if sampling.greedy else 1
                    results[i].extend(
                        Completion(list(completion.token_ids), completion.text, list(completion.logprobs),
                                   completion.finish_reason)
                        for _ in range(copies)
                    )
        return results

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):  # left padding: every prompt ends at column width-1
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
        stops = self.eos_token_ids + [t for t in sampling.stop_token_ids if t not in self.eos_token_ids]
        recorder = _TemperedLogProbs(sampling.temperature, sampling.top_p)
        gather = _GatherChosen(recorder)
        generation = GenerationConfig(
            do_sample=not sampling.greedy,
            max_new_tokens=sampling.max_tokens, min_new_tokens=0,
            eos_token_id=stops, pad_token_id=self.pad_token_id,
        )
        if not sampling.greedy:  # HF's warpers off (top_k defaults to 50): ours apply T and top-p
            generation.update(temperature=1.0, top_p=1.0, top_k=0)
        sequences = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
            generation_config=generation,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([gather]),
        )
        new_tokens = sequences[:, width:].cpu()
        logprobs = torch.stack(gather.steps[:new_tokens.shape[1]], dim=1).float().cpu()  # (B, T)
        stop_set = set(stops)
        completions = []
        for row in range(len(prompts)):
            tokens = new_tokens[row].tolist()
            end = next((t + 1 for t, tok in enumerate(tokens) if tok in stop_set), None)
            finish = "stop" if end is not None else "length"
            end = end if end is not None else len(tokens)
            tokens = tokens[:end]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            completions.append(Completion(tokens, text, logprobs[row, :end].tolist(), finish))
        return completions

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each tensor into the parameter (or buffer) of the same Hugging Face name (waking
        the engine first, as vLLM's does)."""
        self.wake()
        targets = dict(self.model.named_parameters(remove_duplicate=False))
        targets.update(self.model.named_buffers())
        for name, tensor in named_tensors:
            key = hf_name(name)
            if key not in targets:
                raise ValueError(f"update_weights: the model has no parameter named {key!r} (given {name!r})")
            if targets[key].shape != tensor.shape:
                raise ValueError(
                    f"update_weights: {key!r} has shape {tuple(targets[key].shape)}, the tensor given "
                    f"has {tuple(tensor.shape)}"
                )
            targets[key].copy_(tensor)

    def sleep(self) -> None:
        """On an accelerator, move the model to host memory while the trainer runs; on the CPU
        there is nothing to release (the engine only counts as asleep)."""
        if self._asleep:
            return
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self._asleep = True

    def wake(self) -> None:
        """Move the model back after `sleep`."""
        if not self._asleep:
            return
        if self.device.type != "cpu":
            self.model.to(self.device)
        self._asleep = False

    @property
    def asleep(self) -> bool:
        return self._asleep

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
