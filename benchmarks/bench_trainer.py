"""Training-step throughput and memory, and what GVM's per-sample gradient norms cost.

Cases, timed side by side on the same samples (rounds interleaved, median over rounds):
  (a)  hf-loss        DeepSpeed engine over the plain HF model, transformers' default loss on
                      materialised logits (labels = response tokens), the same packed micro-batches
  (b)  ours           PolicyTrainer.train_step (fused LM head), grad_norm_params="none"
  (c)  ours+embed     the same with per-sample embedding norms (the default "embed")
  (c') ours+both      embedding and head norms ("both")
  (d)  authors-embed  the same statistics the authors' way: a plain HF model, batch size 1, one
                      forward+backward per sample with only embed_tokens requiring grad,
                      loss = -sum(response log-probs) on materialised logits
  (d') authors-both   embed_tokens and lm_head requiring grad
Reported: tokens/s, peak memory of the step, the statistics overhead (c - b) / b (goal <= 5 %)
and (d) / (c - b) (goal >= 20 on the CPU). Because (c - b) is a small difference of two noisy
times on a shared machine, it is also given from its parts, each timed on its own: the
trainer's statistics work outside the backward (`norm_stats_s` of train_step) and, for "both",
the fused head kernel with minus without norms on the step's micro-batch shapes.

Usage:
  python benchmarks/bench_trainer.py                       # CPU preset: hidden 256, 4 layers, V 32k
  python benchmarks/bench_trainer.py --preset gpu-0.5b     # Qwen2.5-0.5B shape, bf16, random init
  python benchmarks/bench_trainer.py --attention           # also: packed mask vs length groups
  python benchmarks/bench_trainer.py --hidden 512 --layers 8 --vocab 32000 ...   # any size
Runs on one process without a launcher. Peak memory of a step above what was resident before it:
CUDA allocator statistics on a GPU; on the CPU the resident set sampled every 2 ms.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from gvm.packing import Sample, pack, plan_micro_batches  # noqa: E402
from gvm.trainer import PolicyTrainer, TrainerConfig  # noqa: E402

PRESETS = {
    # Big enough vocabulary that the head matters; a step takes seconds on two cores.
    "cpu": dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=688, vocab=32000, tied=False,
                samples=8, prompt=(16, 48), response=(32, 128), micro_batch_tokens=2048, rounds=3),
    # Qwen2.5-0.5B's shape (tied embeddings), random init, bf16.
    "gpu-0.5b": dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936, tied=True,
                     samples=32, prompt=(64, 256), response=(128, 768), micro_batch_tokens=8192, rounds=3),
}


def build_model(folder: Path, spec: dict, dtype: torch.dtype) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
                         num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"],
                         num_key_value_heads=spec["kv_heads"], head_dim=spec["hidden"] // spec["heads"],
                         tie_word_embeddings=spec["tied"], max_position_embeddings=4096,
                         max_window_layers=spec["layers"])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    return folder


def make_samples(spec: dict, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    return [Sample(i, [rng.randrange(spec["vocab"]) for _ in range(rng.randint(*spec["prompt"]))],
                   [rng.randrange(spec["vocab"]) for _ in range(rng.randint(*spec["response"]))], 1.0)
            for i in range(spec["samples"])]


class RssPeak:
    """Peak resident memory above the starting level while the block runs, sampled every 2 ms
    from /proc/self/statm by a thread (torch ops release the GIL; large CPU buffers are mmap'd
    and go back to the OS when freed, so the resident size follows the working set)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> "RssPeak":
        self.start = self.peak_abs = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_abs = max(self.peak_abs, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak_abs, self._rss()) - self.start


class HFLossCase:
    """(a): the same DeepSpeed set-up and packing, HF's own causal-LM loss on full logits."""

    def __init__(self, model_dir: Path, cfg: TrainerConfig, samples: list[Sample]):
        import deepspeed
        from transformers import AutoModelForCausalLM

        from gvm.ds_config import build_ds_config, resolve_dtype
        from gvm.policy_model import attn_implementation

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(cfg.dtype),
                                                     attn_implementation=attn_implementation())
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                               config=build_ds_config(cfg))
        lengths = [s.num_tokens for s in samples]
        self.batches = []
        for idx in plan_micro_batches(lengths, 1, cfg.micro_batch_tokens)[0]:
            batch = pack([samples[i] for i in idx])
            # HF shifts labels by one: label[t] = token t where t is a response token.
            labels = torch.full_like(batch.input_ids, -100)
            labels[1:] = torch.where(batch.response_mask[:-1], batch.input_ids[1:], labels[1:])
            self.batches.append((batch.to(self.engine.device), labels.to(self.engine.device)))

    def step(self) -> None:
        for m, (batch, labels) in enumerate(self.batches):
            self.engine.set_gradient_accumulation_boundary(m == len(self.batches) - 1)
            out = self.engine(input_ids=batch.input_ids[None], position_ids=batch.position_ids[None],
                              labels=labels[None], use_cache=False)
            self.engine.backward(out.loss / len(self.batches), scale_wrt_gas=False)
        self.engine.step()


class AuthorsCase:
    """(d): per-sample forward+backward on a plain HF model, only embed/head trainable."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, samples: list[Sample], params: tuple[str, ...]):
        from transformers import AutoModelForCausalLM

        from gvm.policy_model import attn_implementation

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                          attn_implementation=attn_implementation()).to(device)
        for name, param in self.model.named_parameters():
            param.requires_grad_(any(p in name for p in params))
        self.inputs = [(torch.tensor([list(s.prompt_ids) + list(s.response_ids)], device=device), len(s.prompt_ids))
                       for s in samples]

    def step(self) -> list[float]:
        norms = []
        for ids, p in self.inputs:
            logits = self.model(input_ids=ids, use_cache=False).logits[0, p - 1:-1].float()
            loss = -torch.log_softmax(logits, -1).gather(1, ids[0, p:, None]).sum()
            loss.backward()
            sq = sum(float(w.grad.float().pow(2).sum()) for w in self.model.parameters() if w.grad is not None)
            norms.append(sq ** 0.5)
            self.model.zero_grad(set_to_none=True)
        return norms


def measure(fn, rounds_out: list[float]) -> None:
    harness.synchronize()
    t0 = time.perf_counter()
    fn()
    harness.synchronize()
    rounds_out.append(time.perf_counter() - t0)


CASES = {  # name: (what, grad_norm_params for ours / parameters requiring grad for the authors' way)
    "hf-loss": "(a) transformers' loss on materialised logits",
    "ours": "(b) PolicyTrainer, no norms",
    "ours+embed": "(c) PolicyTrainer, embedding norms (the default)",
    "ours+both": "(c') PolicyTrainer, embedding + head norms",
    "authors-embed": "(d) per-sample HF backward, embed_tokens only",
    "authors-both": "(d') per-sample HF backward, embed_tokens + lm_head",
}


def run_cases(spec: dict, model_dir: Path, dtype_name: str, cases: list[str], rounds: int, seed: int,
              attention: str = "auto") -> dict:
    samples = make_samples(spec, seed)
    tokens = sum(s.num_tokens for s in samples)
    # torch's AdamW for every case: no JIT build of FusedAdam inside the timed run.
    cfg = TrainerConfig(model_path=str(model_dir), dtype=dtype_name, lr=1e-6, zero_stage=3, torch_adam=True,
                        micro_batch_tokens=spec["micro_batch_tokens"], grad_norm_params="none", attention=attention)
    runners: dict = {}
    norm_stats: dict[str, list[float]] = {"embed": [], "both": []}

    def ours(which: str):
        def step():
            trainer.config = dataclasses.replace(trainer.config, grad_norm_params=which)
            metrics = trainer.train_step(samples, "raft")
            if which in norm_stats:
                norm_stats[which].append(metrics["norm_stats_s"])
        return step

    trainer = PolicyTrainer(cfg) if any(c.startswith("ours") for c in cases) else None
    dtype = trainer.dtype if trainer else torch.float32
    for case in cases:
        if case == "hf-loss":
            runners[case] = HFLossCase(model_dir, cfg, samples).step
        elif case.startswith("ours"):
            runners[case] = ours({"ours": "none", "ours+embed": "embed", "ours+both": "both"}[case])
        elif case == "authors-embed":
            runners[case] = AuthorsCase(model_dir, dtype, samples, ("embed_tokens",)).step
        elif case == "authors-both":
            runners[case] = AuthorsCase(model_dir, dtype, samples, ("embed_tokens", "lm_head")).step
    for fn in runners.values():  # warm-up
        fn()
    times: dict = {case: [] for case in runners}
    memory: dict = {case: 0 for case in runners}
    for _ in range(rounds):  # interleaved, so load changes on a shared machine hit every case alike
        for case, fn in runners.items():
            if torch.cuda.is_available():
                harness.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                measure(fn, times[case])
                memory[case] = max(memory[case], torch.cuda.max_memory_allocated() - base)
            else:
                with RssPeak() as rss:
                    measure(fn, times[case])
                memory[case] = max(memory[case], rss.peak)
    medians = {case: sorted(t)[len(t) // 2] for case, t in times.items()}
    result = {"tokens": tokens, "samples": len(samples), "median_s": medians, "times": times, "memory": memory}
    for which, values in norm_stats.items():
        if values:
            result[f"norm_stats_{which}_s"] = sorted(values)[len(values) // 2]
    if "ours+both" in runners:
        result["head_norm_s"] = head_norm_cost(spec, samples, dtype)
    return result


def compare_attention(spec: dict, model_dir: Path, dtype_name: str, rounds: int, seed: int) -> list[dict]:
    """train_step (no norms) with attention="packed" vs "grouped", interleaved, on the same samples."""
    samples = make_samples(spec, seed)
    tokens = sum(s.num_tokens for s in samples)
    trainers = {mode: PolicyTrainer(TrainerConfig(model_path=str(model_dir), dtype=dtype_name, lr=1e-6, torch_adam=True,
                                                  micro_batch_tokens=spec["micro_batch_tokens"],
                                                  grad_norm_params="none", attention=mode))
                for mode in ("packed", "grouped")}
    times: dict = {mode: [] for mode in trainers}
    for trainer in trainers.values():
        trainer.train_step(samples, "raft")
    for _ in range(rounds):
        for mode, trainer in trainers.items():
            measure(lambda: trainer.train_step(samples, "raft"), times[mode])
    name = f"h{spec['hidden']}-l{spec['layers']}-v{spec['vocab']}"
    print(f"\nattention, {name}: {len(samples)} samples, {tokens} tokens, median of {rounds} interleaved rounds")
    table, rows = [], []
    for mode, values in times.items():
        median = sorted(values)[len(values) // 2]
        table.append([mode, f"{median * 1e3:.0f}", f"{tokens / median:.0f}"])
        rows.append({"case": f"attention/{name}/{mode}", "metric": "step_s", "value": median, "unit": "s"})
    harness.print_table(["attention", "step ms", "tokens/s"], table)
    return rows


def head_norm_cost(spec: dict, samples: list[Sample], dtype: torch.dtype) -> float:
    """Seconds the fused head's backward spends on per-sequence norms over one step: forward +
    backward of fused_logprobs on the step's micro-batch shapes, with minus without norms."""
    from gvm_kernels.fused_logprobs import fused_logprobs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    weight = (torch.randn(spec["vocab"], spec["hidden"], device=device) / spec["hidden"] ** 0.5).to(dtype)
    weight.requires_grad_(True)
    total = 0.0
    for idx in plan_micro_batches([s.num_tokens for s in samples], 1, spec["micro_batch_tokens"])[0]:
        batch = pack([samples[i] for i in idx]).to(device)
        hidden = torch.randn(batch.num_tokens, spec["hidden"], device=device, dtype=dtype, requires_grad=True)
        norms = torch.zeros(batch.num_seqs, device=device)

        def run(with_norms: bool):
            logp = fused_logprobs(hidden, weight, batch.targets, cu_seqlens=batch.cu_seqlens,
                                  sq_grad_norms_out=norms if with_norms else None)
            logp.sum().backward()
            hidden.grad = weight.grad = None

        # alternate the two, so load changes hit both alike
        pairs = [(harness.time_fn(lambda: run(True), warmup=1, reps=3)["median_s"],
                  harness.time_fn(lambda: run(False), warmup=1, reps=3)["median_s"]) for _ in range(3)]
        total += sorted(a - b for a, b in pairs)[1]
    return total


def report(spec_name: str, result: dict) -> list[dict]:
    med, tokens = result["median_s"], result["tokens"]
    rows, table = [], []
    for case, seconds in med.items():
        for metric, value, unit in (("step_s", seconds, "s"), ("tokens_per_s", tokens / seconds, "tok/s"),
                                    ("peak_memory", result["memory"][case], "B")):
            rows.append({"case": f"{spec_name}/{case}", "metric": metric, "value": value, "unit": unit})
        table.append([case, CASES[case], f"{seconds * 1e3:.0f}", f"{tokens / seconds:.0f}",
                      f"{result['memory'][case] / 2**20:.0f}"])
    print(f"\n{spec_name}: {result['samples']} samples, {tokens} tokens per step, median of "
          f"{len(next(iter(result['times'].values())))} interleaved rounds")
    harness.print_table(["case", "what", "step ms", "tokens/s", "step peak MiB"], table)
    if "ours" not in med:
        return rows
    base = med["ours"]
    for which in ("embed", "both"):
        case, authors = f"ours+{which}", f"authors-{which}"
        if case not in med:
            continue
        extra = med[case] - base
        rows.append({"case": f"{spec_name}/{which}", "metric": "norms_overhead", "value": extra / base,
                     "unit": "ratio"})
        # The same cost from its parts, each timed on its own: robust to a loaded machine.
        parts = result.get(f"norm_stats_{which}_s", 0.0) + (result.get("head_norm_s", 0.0) if which == "both" else 0.0)
        rows.append({"case": f"{spec_name}/{which}", "metric": "norms_overhead_parts", "value": parts / base,
                     "unit": "ratio"})
        line = (f"[{which}] overhead (c - b) / b: end to end {extra / base * 100:+.1f} %, from its parts "
                f"{parts / base * 100:.1f} % (statistics outside the backward "
                f"{result.get(f'norm_stats_{which}_s', 0.0) * 1e3:.0f} ms")
        line += f", head norms in the kernel {result['head_norm_s'] * 1e3:.0f} ms)" if which == "both" else ")"
        print(line + "  goal <= 5 %")
        if authors in med:
            ratio_e2e = med[authors] / extra if extra > 0 else float("inf")
            ratio_parts = med[authors] / parts if parts > 0 else float("inf")
            rows.append({"case": f"{spec_name}/{which}", "metric": "authors_over_overhead", "value": ratio_e2e,
                         "unit": "ratio"})
            rows.append({"case": f"{spec_name}/{which}", "metric": "authors_over_overhead_parts",
                         "value": ratio_parts, "unit": "ratio"})
            print(f"[{which}] authors' pass / our overhead (d) / (c - b): end to end {ratio_e2e:.1f}, "
                  f"from its parts {ratio_parts:.1f}  goal >= 20")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: gpu-0.5b on CUDA, cpu otherwise")
    for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "samples", "micro_batch_tokens",
                "rounds"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--only", nargs="*", default=None, choices=list(CASES),
                        help="cases to time (none: only the --attention comparison)")
    parser.add_argument("--attention", action="store_true", help="also time packed mask vs length groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)  # deepspeed launcher
    args = parser.parse_args()
    preset = args.preset or ("gpu-0.5b" if torch.cuda.is_available() else "cpu")
    spec = dict(PRESETS[preset])
    for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "samples", "micro_batch_tokens",
                "rounds", "tied"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    from gvm.ds_config import resolve_dtype

    dtype = resolve_dtype(args.dtype)
    name = f"{preset}-h{spec['hidden']}-l{spec['layers']}-v{spec['vocab']}"
    cases = list(CASES) if args.only is None else args.only
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "model", spec, dtype)
        if cases:
            result = run_cases(spec, model_dir, args.dtype, cases, spec["rounds"], args.seed)
            rows += report(name, result)
        if args.attention:
            rows += compare_attention(spec, model_dir, args.dtype, spec["rounds"], args.seed)
    out = harness.append_results("bench_trainer", rows)
    print(f"\nrows appended to {harness.RESULTS_CSV}, JSON in {out}")


if __name__ == "__main__":
    main()
