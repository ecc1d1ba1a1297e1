"""vLLM colocated with the trainer: one in-process engine on every rank.

Each rank builds its own `vllm.LLM` with the "external_launcher" executor, so no worker
processes are spawned and weights move in memory (`reload_weights` with an iterator).
With WORLD_SIZE ranks and tensor-parallel size tp, vLLM runs WORLD_SIZE / tp data-parallel
replicas: every rank must call `generate` together, tp ranks of one replica with the same
prompts, different replicas with their own (vLLM steps the replicas in lockstep).

Facts of vllm 0.32 this relies on (read from its source):
- `logprobs_mode="processed_logprobs"` returns log-probs after temperature and top-p, i.e.
  of the distribution that was sampled; greedy requests get the unscaled log-softmax.
- Greedy requests must have n == 1; we sample once and copy.
- A request's n children get seeds seed, seed+1, ...; split requests get disjoint seeds.
- Sleep mode exists on CUDA/ROCm/XPU only; on the CPU `enable_sleep_mode=True` is refused,
  so there sleep/wake are no-ops here (logged once).
- On the CPU, `gpu_memory_utilization` is a fraction of the NUMA node's memory minus this
  process's RSS (fails when a trainer already holds memory): we size the KV cache in bytes.
- Building a worker reseeds the global RNGs and replaces `torch.set_num_threads` by a no-op
  that also drops the thread count to 1: both are restored for the trainer sharing the process.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import socket
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from gvm.engines.base import Completion, Engine, PrivateRNG, SamplingConfig, normalize_counts

# In-process engine: must be set before vllm reads its environment.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

import vllm  # noqa: E402  (after the environment above)
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.logprobs import FlatLogprobs  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402

logger = logging.getLogger(__name__)

# Offsets that keep explicitly seeded requests of different replicas and prompts apart.
_SEED_STRIDE_PROMPT = 1 << 20  # > any n_i
_SEED_STRIDE_REPLICA = 1 << 40  # > prompts * _SEED_STRIDE_PROMPT


@dataclass(frozen=True)
class VLLMEngineConfig:
    tensor_parallel_size: int = 1  # ranks that share one model replica; must divide WORLD_SIZE
    dtype: str = "auto"  # "auto" takes the checkpoint's dtype; "float32" for exact tests
    seed: int = 0  # replica r uses seed + r, so unseeded samples differ across replicas
    max_model_len: int | None = None  # prompt + response cap; None: the model's maximum
    max_num_seqs: int | None = None  # sequences decoded together; None: vLLM's default
    max_n_per_request: int = 16  # a prompt's n_i is split into requests of at most this
    enforce_eager: bool = True  # no CUDA graphs: they pin memory and slow start-up
    enable_prefix_caching: bool = True  # the n_i samples of a prompt share its prefill
    gpu_memory_utilization: float = 0.5  # GPU: card fraction for vLLM (weights + KV cache)
    cpu_kv_cache_bytes: int = 256 << 20  # CPU: KV cache size (1 KiB/token on the tiny model)
    enable_sleep_mode: bool = True  # GPU: release memory while training (ignored on the CPU)
    sleep_level: int = 2  # 2 drops weights too: update_weights must follow every sleep
    # torch threads while vLLM decodes (vLLM's own serving choice): extra OpenMP threads
    # spin-wait between its serial steps; 7.2k vs 1.7k tokens/s at 1 vs 2 threads, tiny
    # model, 64 prompts x 8, CPU 2 cores. The trainer's thread count is restored afterwards.
    serving_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_n_per_request < 1:
            raise ValueError(f"max_n_per_request must be >= 1, got {self.max_n_per_request}")
        if self.sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 (offload weights) or 2 (drop them), got {self.sleep_level}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _ensure_launcher_env() -> tuple[bool, dict[str, str | None]]:
    """Set the torchrun variables the external launcher reads. Returns whether vLLM will create
    the process group itself (a lone process nobody launched), and the variables' previous
    values, which `close()` puts back so later code sees the environment it had."""
    previous = {k: os.environ.get(k) for k in _LAUNCHER_VARS}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size()))
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        return False, previous
    if "RANK" not in os.environ or os.environ.get("WORLD_SIZE", "1") == "1":
        # A lone process: a fresh port each time, so a second engine can follow a closed one.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    return True, previous


@contextlib.contextmanager
def _keep_caller_process_state() -> Iterator[None]:
    """Undo what building a vLLM worker does to process-wide state (RNG seeds, torch threads)."""
    set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_num_threads = set_num_threads
        torch.set_num_threads(num_threads)


def _sampled_logprobs(token_ids: list[int], logprobs) -> list[float]:
    """The sampled tokens' log-probs from vLLM's FlatLogprobs (or per-token dicts)."""
    if isinstance(logprobs, FlatLogprobs):
        values = []
        for t, token in enumerate(token_ids):
            start, end = logprobs.start_indices[t], logprobs.end_indices[t]
            values.append(float(logprobs.logprobs[start + logprobs.token_ids[start:end].index(token)]))
        return values
    return [float(step[token].logprob) for token, step in zip(token_ids, logprobs)]


class VLLMEngine(Engine):
    """In-process vLLM rollout engine for one rank (see the module docstring)."""

    config_class = VLLMEngineConfig

    def __init__(self, model_path: str, config: VLLMEngineConfig | None = None) -> None:
        self.config = config or VLLMEngineConfig()
        tp = self.config.tensor_parallel_size
        self._owns_process_group, self._previous_env = _ensure_launcher_env()
        self.rank, self.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if self.world_size % tp != 0:
            raise ValueError(
                f"tensor_parallel_size ({tp}) must divide the world size ({self.world_size}): "
                f"each group of tp ranks holds one model replica"
            )
        self.data_parallel_size = self.world_size // tp
        self.replica = self.rank // tp
        self.sleep_supported = current_platform.is_sleep_mode_available()
        self._use_sleep = self.config.enable_sleep_mode and self.sleep_supported
        self._logged_no_sleep = False
        self._asleep = False
        self._weights_dropped = False  # after a real level-2 sleep, until new weights come

        kwargs: dict = dict(
            model=str(model_path),
            dtype=self.config.dtype,
            seed=self.config.seed + self.replica,  # same within a tp group: they must sample alike
            tensor_parallel_size=tp,
            distributed_executor_backend="external_launcher",
            logprobs_mode="processed_logprobs",
            enforce_eager=self.config.enforce_eager,
            enable_prefix_caching=self.config.enable_prefix_caching,
            max_model_len=self.config.max_model_len,
            enable_sleep_mode=self._use_sleep,
        )
        if self.data_parallel_size > 1:
            kwargs["data_parallel_size"] = self.data_parallel_size
        if self.config.max_num_seqs is not None:
            kwargs["max_num_seqs"] = self.config.max_num_seqs
        if current_platform.is_cpu():
            kwargs["kv_cache_memory_bytes"] = self.config.cpu_kv_cache_bytes
        else:
            kwargs["gpu_memory_utilization"] = self.config.gpu_memory_utilization

        with _keep_caller_process_state():
            self._llm: LLM | None = LLM(**kwargs)
        # vLLM samples unseeded requests from the global RNG: give it the replica's own stream.
        self._rng = PrivateRNG(self.config.seed + self.replica)
        self._tokenizer = self._llm.get_tokenizer()
        logger.info(
            "vLLM %s engine on rank %d/%d: tp=%d, %d replica(s), sleep mode %s",
            vllm.__version__, self.rank, self.world_size, tp, self.data_parallel_size,
            "on" if self._use_sleep else "off",
        )

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n_per_prompt: Sequence[int] | int,
        sampling: SamplingConfig,
    ) -> list[list[Completion]]:
        llm = self._require_llm()
        if self._asleep or self._weights_dropped:
            raise RuntimeError(
                "the engine is asleep or its weights were dropped by a level-2 sleep: call "
                "update_weights(...) (or wake() after a level-1 sleep) before generate"
            )
        counts = normalize_counts(n_per_prompt, len(prompt_token_ids))
        prompts, params, owners = self._requests(prompt_token_ids, counts, sampling)
        results: list[list[Completion]] = [[] for _ in prompt_token_ids]
        with self._rng.active(), self._serving_threads():
            if prompts:
                outputs = llm.generate(prompts, params, use_tqdm=False)
            else:
                outputs = []
                self._step_with_other_replicas()
        for (prompt_index, copies), output in zip(owners, outputs):
            for sample in output.outputs:
                completion = self._completion(sample)
                results[prompt_index].append(completion)
                for _ in range(copies - 1):  # greedy: identical copies of one decode
                    results[prompt_index].append(
                        Completion(list(completion.token_ids), completion.text,
                                   list(completion.logprobs), completion.finish_reason)
                    )
        flat = [c for r in results for c in r]
        for completion, text in zip(flat, self._tokenizer.batch_decode(
                [c.token_ids for c in flat], skip_special_tokens=True)):
            completion.text = text
        for i, (got, want) in enumerate(zip(results, counts)):
            if len(got) != want:
                raise RuntimeError(f"vLLM returned {len(got)} completions for prompt {i}, expected {want}")
        return results

    def _requests(
        self, prompt_token_ids: list[list[int]], counts: list[int], sampling: SamplingConfig
    ) -> tuple[list[TokensPrompt], list[SamplingParams], list[tuple[int, int]]]:
        """One request per chunk of at most max_n_per_request samples; prompts with n_i = 0
        get none. `owners[k]` = (prompt index, copies of each output) of request k."""
        prompts, params, owners = [], [], []
        chunk = self.config.max_n_per_request
        for i, (ids, n) in enumerate(zip(prompt_token_ids, counts)):
            if n == 0:
                continue
            if sampling.greedy:
                pieces = [(0, 1)]  # vLLM requires n == 1 for greedy; copy the result n times
            else:
                pieces = [(start, min(chunk, n - start)) for start in range(0, n, chunk)]
            for start, size in pieces:
                seed = None
                if sampling.seed is not None:
                    seed = (sampling.seed + self.replica * _SEED_STRIDE_REPLICA
                            + i * _SEED_STRIDE_PROMPT + start)
                prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                params.append(SamplingParams(
                    n=size,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    seed=seed,
                    stop_token_ids=list(sampling.stop_token_ids),
                    logprobs=0,  # the sampled token's log-prob only
                    # Per-token detokenizing (text, and a decoded string per log-prob) took half
                    # of generate's time on the tiny model; texts are decoded once at the end.
                    detokenize=False,
                    flat_logprobs=True,  # a few flat lists per request instead of a dict per token
                ))
                owners.append((i, n if sampling.greedy else 1))
        return prompts, params, owners

    @staticmethod
    def _completion(sample) -> Completion:
        """A Completion with empty text (filled by one batch decode in generate)."""
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request ended with finish reason {sample.finish_reason!r}")
        token_ids = list(sample.token_ids)
        return Completion(token_ids, "", _sampled_logprobs(token_ids, sample.logprobs), sample.finish_reason)

    def _step_with_other_replicas(self) -> None:
        """A replica with no prompts still steps while the others decode (vLLM's
        data-parallel replicas agree every step on whether anyone has work)."""
        engine = self._require_llm().llm_engine
        while engine.has_unfinished_requests():
            engine.step()

    # ------------------------------------------------------------------ weights
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Wake the weights only, load the new ones in place (the iterable is consumed lazily,
        so a ZeRO-3 gatherer holds one bucket at a time), drop cached prefixes computed with
        the old weights, then wake the KV cache."""
        llm = self._require_llm()
        if self._asleep:
            self._wake_tags(["weights"])
        # vLLM's layerwise reload buffers a fused layer (qkv, gate_up) until all its parts
        # arrived, so the parts may come in different buckets. Never weights_path / None:
        # that reloads the checkpoint from disk, i.e. the base model.
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_tensors)})
        llm.reset_prefix_cache()
        if self._asleep:
            self._wake_tags(["kv_cache"])
            self._asleep = False
        self._weights_dropped = False

    # ------------------------------------------------------------------ memory
    def sleep(self) -> None:
        if self._asleep:
            return
        if self._use_sleep:
            self._require_llm().sleep(level=self.config.sleep_level)
            self._weights_dropped = self.config.sleep_level == 2
        else:
            self._log_no_sleep()
        self._asleep = True

    def wake(self) -> None:
        """Wake everything. After a level-2 sleep the weights are garbage until
        `update_weights` (which also wakes the engine, and is what a training loop calls)."""
        if not self._asleep:
            return
        self._wake_tags(None)
        self._asleep = False

    @property
    def asleep(self) -> bool:
        return self._asleep

    @property
    def needs_weights(self) -> bool:
        return self._weights_dropped

    def _wake_tags(self, tags: list[str] | None) -> None:
        if self._use_sleep:
            self._require_llm().wake_up(tags=tags)
        else:
            self._log_no_sleep()

    def _log_no_sleep(self) -> None:
        if not self._logged_no_sleep:
            reason = "disabled in the config" if self.sleep_supported else f"unsupported on {current_platform.device_name}"
            logger.info("vLLM sleep mode is %s: sleep/wake keep everything resident", reason)
            self._logged_no_sleep = True

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _serving_threads(self) -> Iterator[None]:
        threads = torch.get_num_threads()
        if self.config.serving_threads is not None:
            torch.set_num_threads(self.config.serving_threads)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _require_llm(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("the vLLM engine was closed")
        return self._llm

    def close(self) -> None:
        """Free the engine and vLLM's process groups. vLLM's shutdown destroys the default
        process group too; when the trainer created that group (DeepSpeed before us), it is
        spared. Call close() rather than dropping the engine: garbage collection runs vLLM's
        shutdown unguarded."""
        if self._llm is None:
            return
        import vllm.v1.engine.core as engine_core

        original_cleanup = engine_core.cleanup_dist_env_and_memory
        if not self._owns_process_group:
            engine_core.cleanup_dist_env_and_memory = _destroy_vllm_groups_only
        try:
            self._llm.llm_engine.engine_core.shutdown()  # idempotent: disarms vLLM's finalizer
        finally:
            engine_core.cleanup_dist_env_and_memory = original_cleanup
        self._llm = None
        for key, value in self._previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _destroy_vllm_groups_only() -> None:
    """vLLM's distributed cleanup minus destroying the default (trainer's) process group."""
    from vllm.distributed import parallel_state

    parallel_state.destroy_model_parallel()
    if parallel_state._WORLD is not None:
        parallel_state._WORLD.destroy()
        parallel_state._WORLD = None
    parallel_state._NODE_COUNT = None
    gc.collect()
