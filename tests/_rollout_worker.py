"""One rank of the two-rank rollout test (tests/test_rollout_zero3.py), run under torchrun.

Every rank: ZeRO-3 DeepSpeed training of the tiny model on gloo, and an in-process
VLLMEngine per phase (tp=1: one replica per rank, each with its own prompts; tp=2: one replica
over both ranks, same prompts), closed before the next phase. Per phase: greedy outputs, one
optimizer step, a bucketed sync from the ZeRO-3 model, greedy outputs again; the reference is a
plain HF model loaded with the gathered weights. Measurements go to <out>/rank<r>_tp<tp>.json;
the test asserts on them.
"""
from __future__ import annotations

import argparse
import json
import random
import string
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

from gvm.distributed import init_distributed, shutdown
from gvm.engines.base import SamplingConfig
from gvm.engines.factory import make_engine
from gvm.engines.vllm_engine import VLLMEngineConfig
from gvm.engines.weight_sync import hf_name, param_nbytes, sync_weights

MAX_TOKENS = 12
BUCKET_BYTES = 100_000  # splits every layer's q/k/v and gate/up over buckets on the tiny model


def random_prompts(tokenizer, seed: int, count: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [tokenizer.encode("".join(rng.choice(string.ascii_letters + " +=") for _ in range(rng.randint(3, 12))))
            for _ in range(count)]


@torch.no_grad()
def compare_with_reference(reference, prompt, completion) -> tuple[float, int]:
    """(max |engine - reference| log-prob, count of positions where the engine's greedy token
    is not the reference's argmax beyond a 1e-4 logit near-tie)."""
    ids = torch.tensor([prompt + completion.token_ids])
    logits = reference(ids).logits[0, len(prompt) - 1:-1].float()
    tokens = torch.tensor(completion.token_ids)
    logprobs = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    diff = float((logprobs - torch.tensor(completion.logprobs)).abs().max())
    gap = logits.max(-1).values - logits.gather(1, tokens[:, None]).squeeze(1)
    return diff, int((gap > 1e-4).sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tp", default="1", help="tensor-parallel sizes to run in turn, e.g. 1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", type=int, default=0)  # the deepspeed launcher passes it
    parser.add_argument("--trainer", action="store_true", help="sync from gvm's PolicyTrainer instead")
    args = parser.parse_args()

    init_distributed()  # gloo on the CPU
    if args.trainer:
        result = run_trainer_phase(args)
        Path(args.out, f"rank{dist.get_rank()}_trainer.json").write_text(json.dumps(result))
        dist.barrier()
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)  # same on every rank, as a trainer would do
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        # torch's AdamW, as the trainer uses on the CPU: DeepSpeed's FusedAdam is a JIT-built op
        "optimizer": {"type": "AdamW", "params": {"lr": 5e-3, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    engine, *_ = deepspeed.initialize(model=model, config=ds_config, model_parameters=model.parameters())
    assert all(p.numel() == 0 for p in engine.module.parameters()), "parameters are not ZeRO-3 partitioned"

    for tp in (int(t) for t in args.tp.split(",")):
        result = run_phase(args, engine, tp)
        Path(args.out, f"rank{rank}_tp{tp}.json").write_text(json.dumps(result))
    dist.barrier()  # the trainer's process group survived every engine's close()


def run_phase(args, engine, tp: int) -> dict:
    """Build a VLLMEngine with tensor-parallel size tp, take one training step, sync, compare."""
    rank, world = dist.get_rank(), dist.get_world_size()
    started = time.perf_counter()
    rollout = make_engine("vllm", args.model, vllm_config=VLLMEngineConfig(dtype="float32", tensor_parallel_size=tp,
                                                                               max_model_len=256))
    start_seconds = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    replica_seed = args.seed + (rank // tp) * 1000  # tp ranks of one replica: same prompts
    prompts = random_prompts(tokenizer, replica_seed, count=3 + rank // tp)  # replicas differ in load
    greedy = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    # The engine starts from the checkpoint on disk: bring it to the trainer's weights first
    # (a no-op in the first phase, the first phase's step in the second).
    sync_weights(engine, rollout, bucket_bytes=BUCKET_BYTES)
    before = rollout.generate(prompts, 1, greedy)

    # Unseeded sampling of one shared prompt: replicas must not draw the same samples.
    shared = random_prompts(tokenizer, args.seed, count=1)
    samples = [c.token_ids for c in rollout.generate(shared, 4, SamplingConfig(temperature=1.0, max_tokens=8))[0]]
    all_samples = [None] * world
    dist.all_gather_object(all_samples, samples)

    # Replicas with nothing to do still take part while another decodes: an empty prompt list,
    # and prompts whose counts are all zero.
    idle_counts = None
    if rollout.data_parallel_size > 1:
        mine = {0: (prompts, [2] * len(prompts)), 1: ([], 0)}.get(rank, (prompts, [0] * len(prompts)))
        idle_counts = [len(r) for r in rollout.generate(mine[0], mine[1], SamplingConfig(max_tokens=6))]
        idle_counts += [len(r) for r in rollout.generate(prompts, [0] * len(prompts) if rank == 0 else 1,
                                                         SamplingConfig(max_tokens=6))]

    # One optimizer step on this rank's own random batch.
    batch = torch.randint(0, len(tokenizer) - 4, (2, 24),
                          generator=torch.Generator().manual_seed(args.seed + rank + 10 * tp))
    loss = engine(input_ids=batch, labels=batch).loss
    engine.backward(loss)
    engine.step()

    rollout.sleep()
    record = sync_weights(engine, rollout, bucket_bytes=BUCKET_BYTES)
    after = rollout.generate(prompts, 1, greedy)

    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        state = {hf_name(n): p.detach().clone() for n, p in engine.module.named_parameters()}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)

    diffs, argmax_misses, moved = [], 0, []
    for prompt, [b], [a] in zip(prompts, before, after):
        diff, misses = compare_with_reference(reference, prompt, a)
        diffs.append(diff)
        argmax_misses += misses
        moved.append(a.token_ids != b.token_ids or abs(a.logprobs[0] - b.logprobs[0]) > 1e-3)
    rollout.close()
    return {
        "rank": rank,
        "world": world,
        "tp": tp,
        "replicas": rollout.data_parallel_size,
        "engine_start_seconds": start_seconds,
        "sync_seconds": record.seconds,
        "bucket_bytes": record.bucket_bytes,
        "buckets": record.buckets,
        "largest_param_bytes": record.largest_param_bytes,
        "max_gathered_at_once": record.max_gathered_at_once,
        "model_bytes": sum(param_nbytes(p) for p in params),
        "max_logprob_diff_after": max(diffs),
        "greedy_argmax_misses": argmax_misses,
        "outputs_moved": moved,
        "num_prompts": len(prompts),
        "samples_by_rank": all_samples,
        "idle_counts": idle_counts,
        "still_partitioned": all(p.numel() == 0 for p in params),
        "process_group_alive": dist.is_initialized(),
    }


def run_trainer_phase(args) -> dict:
    """PolicyTrainer (ZeRO-3) -> VLLMEngine (one replica per rank): sampled completions at
    temperature 0.7, a RAFT step on them, a sync, new completions; the engine's log-probs of the
    new completions against trainer.logprobs (same temperature) on the same sequences."""
    from gvm.trainer import PolicyTrainer, Sample, TrainerConfig

    rank = dist.get_rank()
    temperature = 0.7
    trainer = PolicyTrainer(TrainerConfig(model_path=args.model, zero_stage=3, dtype="float32", lr=5e-3,
                                          algorithm="raft", temperature=temperature, seed=args.seed,
                                          use_liger=False))
    rollout = make_engine("vllm", args.model, vllm_config=VLLMEngineConfig(dtype="float32", max_model_len=256))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = random_prompts(tokenizer, args.seed + 1000 * rank, count=3)
    sampling = SamplingConfig(temperature=temperature, max_tokens=MAX_TOKENS)

    def all_samples(completions) -> tuple[list, list[list[float]]]:
        """Every rank's samples (trainer calls take the full list on every rank), and this
        rank's engine log-probs with their positions in that list."""
        mine = [(prompt, c.token_ids, c.logprobs) for prompt, cs in zip(prompts, completions) for c in cs]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        samples, offset = [], 0
        for r, part in enumerate(everyone):
            if r == rank:
                offset = len(samples)
            samples += [Sample(sample_id=(r, i), prompt_ids=p, response_ids=t) for i, (p, t, _) in enumerate(part)]
        return samples, offset, [lp for _, _, lp in mine]

    before_samples, before_offset, before_engine = all_samples(rollout.generate(prompts, 2, sampling))
    trainer.train_step(before_samples, "raft")
    # The step moved the policy: the trainer now disagrees with the not yet synced engine.
    stale = trainer.logprobs(before_samples)[before_offset:before_offset + len(before_engine)]
    stale_diff = max(float((t - torch.tensor(e)).abs().max()) for t, e in zip(stale, before_engine))
    rollout.sleep()
    record = sync_weights(trainer.engine, rollout, bucket_bytes=BUCKET_BYTES)
    samples, offset, engine_logprobs = all_samples(rollout.generate(prompts, 2, sampling))
    trainer_logprobs = trainer.logprobs(samples)[offset:offset + len(engine_logprobs)]
    diffs = [float((t - torch.tensor(e)).abs().max()) for t, e in zip(trainer_logprobs, engine_logprobs)]
    rollout.close()
    return {
        "rank": rank,
        "num_samples": len(engine_logprobs),
        "max_logprob_diff": max(diffs),
        "max_logprob_diff_before_sync": stale_diff,
        "max_gathered_at_once": record.max_gathered_at_once,
        "bucket_bytes": record.bucket_bytes,
        "largest_param_bytes": record.largest_param_bytes,
        "buckets": len(record.buckets),
        "process_group_alive": dist.is_initialized(),
    }


if __name__ == "__main__":
    # Not exit_after_success(): vLLM's CPU communicator removes its /dev/shm segments in teardown,
    # and a segment left behind makes the next launch fail (EEXIST).
    try:
        main()
    finally:
        shutdown()
