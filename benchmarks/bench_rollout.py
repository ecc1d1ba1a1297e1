"""Rollout throughput (vLLM vs transformers) and weight-sync speed.

- tokens/s: generated tokens per second of VLLMEngine and HFEngine on the same prompts, n and
  sampling (default: tiny model from gvm.toy, 64 prompts x n=8, max_tokens 64, temperature 1).
- sync s/GB: seconds of `update_weights` with the full state dict, divided by its size in GB,
  on a wider model (default ~100 MB fp32) so the figure is not all per-call overhead.

    python benchmarks/bench_rollout.py [--prompts 64 --n 8 --max-tokens 64 --reps 3]

Both engines run in this process, one after the other; on the CPU only the ratio means much.

Measured (CPU, 2 cores, other jobs running; 2026-11-26): at max_tokens 64 vLLM 11.8-12.1k tok/s
vs HF 9.2-11.5k at its best thread count (ratio 1.06-1.28; HF at its worse thread count: 0.5-1.1k);
at max_tokens 256 vLLM 10.7k vs HF 3.9k (2.75x; HF's per-step cost grows with the sequence).
On this 2-layer model both are bound by per-step overhead, not by the model. Sync: vLLM
0.93-0.96 s/GB (layerwise reload machinery), HF 0.34-0.42 s/GB (plain copies).
"""
from __future__ import annotations

import argparse
import random
import string
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import append_results, machine_name, print_table, time_fn  # noqa: E402

from gvm.engines.base import SamplingConfig  # noqa: E402
from gvm.engines.hf_engine import HFEngine, HFEngineConfig  # noqa: E402
from gvm.engines.factory import make_engine  # noqa: E402
from gvm.engines.vllm_engine import VLLMEngineConfig  # noqa: E402
from gvm.toy import build_tiny  # noqa: E402


def random_prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " +-=()"
    return [tokenizer.encode("".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))))
            for _ in range(count)]


def throughput(engine, prompts, n: int, sampling: SamplingConfig, reps: int) -> tuple[float, float]:
    """(median seconds per generate call, generated tokens per second)."""
    tokens = []

    def run() -> None:
        result = engine.generate(prompts, n, sampling)
        tokens.append(sum(len(c.token_ids) for r in result for c in r))

    timing = time_fn(run, warmup=1, reps=reps)
    mean_tokens = sum(tokens[1:]) / max(len(tokens) - 1, 1)  # the warm-up call excluded
    return timing["median_s"], mean_tokens / timing["median_s"]


def sync_seconds_per_gb(engine, state: list[tuple[str, torch.Tensor]], reps: int) -> float:
    nbytes = sum(t.numel() * t.element_size() for _, t in state)
    timing = time_fn(lambda: engine.update_weights(iter(state)), warmup=1, reps=reps)
    return timing["median_s"] / (nbytes / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--hf-batch", type=int, default=128, help="HFEngine max_batch_size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the weight sync (vLLM decodes at its serving_threads)")
    parser.add_argument("--hf-threads", default="1,2", help="torch thread counts to run HF generation at")
    parser.add_argument("--sync-hidden", type=int, default=512, help="hidden size of the sync model")
    parser.add_argument("--sync-layers", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    tiny = build_tiny(workdir / "tiny")
    sync_model = build_tiny(workdir / "sync", hidden_size=args.sync_hidden, num_heads=args.sync_hidden // 64,
                            num_kv_heads=2, head_dim=64, intermediate_size=args.sync_hidden * 11 // 4,
                            num_layers=args.sync_layers)
    hf = HFEngine(tiny, HFEngineConfig(max_batch_size=args.hf_batch, dtype="float32"))
    prompts = random_prompts(hf.tokenizer, args.prompts, seed=0)
    sampling = SamplingConfig(temperature=args.temperature, max_tokens=args.max_tokens)
    case = f"tiny {args.prompts}x{args.n} max{args.max_tokens} T{args.temperature:g}"
    rows = []

    # On a shared 2-core machine extra OpenMP threads can slow torch down many times over, so
    # HF runs at each thread count and the ratio is taken against its best.
    seconds = {}
    best_hf_tps = 0.0
    for threads in (int(t) for t in args.hf_threads.split(",")):
        torch.set_num_threads(threads)
        seconds[f"hf@{threads}"], hf_tps = throughput(hf, prompts, args.n, sampling, args.reps)
        best_hf_tps = max(best_hf_tps, hf_tps)
        rows.append({"case": case, "metric": f"hf_tokens_per_s_{threads}threads", "value": hf_tps, "unit": "tok/s"})
    torch.set_num_threads(args.threads)
    vllm = make_engine("vllm", tiny, vllm_config=VLLMEngineConfig(dtype="float32"))
    seconds["vllm"], vllm_tps = throughput(vllm, prompts, args.n, sampling, args.reps)
    vllm.close()
    rows += [
        {"case": case, "metric": "vllm_tokens_per_s", "value": vllm_tps, "unit": "tok/s"},
        {"case": case, "metric": "vllm_over_best_hf", "value": vllm_tps / best_hf_tps, "unit": "x"},
    ]

    # Weight sync: the whole state dict of the wider model into each engine.
    hf_sync = HFEngine(sync_model, HFEngineConfig(dtype="float32"))
    state = [(n, p.detach().clone()) for n, p in hf_sync.model.named_parameters()]
    model_mb = sum(t.numel() * t.element_size() for _, t in state) / 1e6
    sync_case = f"{model_mb:.0f} MB fp32 ({args.sync_layers}x{args.sync_hidden}), {args.threads} threads"
    hf_spg = sync_seconds_per_gb(hf_sync, state, args.reps)
    hf_sync.close()
    vllm_sync = make_engine("vllm", sync_model, vllm_config=VLLMEngineConfig(dtype="float32", max_model_len=256))
    vllm_spg = sync_seconds_per_gb(vllm_sync, state, args.reps)
    vllm_sync.close()
    rows += [
        {"case": sync_case, "metric": "hf_sync_s_per_gb", "value": hf_spg, "unit": "s/GB"},
        {"case": sync_case, "metric": "vllm_sync_s_per_gb", "value": vllm_spg, "unit": "s/GB"},
    ]

    print(f"machine: {machine_name()}")
    print_table(["case", "metric", "value", "unit"],
                [[r["case"], r["metric"], f"{r['value']:.3g}", r["unit"]] for r in rows])
    print("generate seconds per call:", ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print("results:", append_results("rollout", rows))


if __name__ == "__main__":
    main()
