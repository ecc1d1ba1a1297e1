"""Forward+backward time and peak memory of the LM head -> per-token log-prob (+ entropy).

Cases, measured side by side in one run:
  torch       PyTorch with materialised logits, log_softmax and gather (kernels/reference.py)
  liger       Liger-Kernel's fused linear cross-entropy, reduction="none" (GPU only: on the CPU
              Liger runs only under the Triton interpreter, which would time numpy)
  ours        gvm_kernels.fused_logprobs with entropy
  ours+norms  the same, also writing per-sequence squared LM-head gradient norms
  floor       the three GEMMs alone: logits forward, then the two gradient GEMMs

Usage:
  python benchmarks/bench_kernels.py                    # GPU shapes on CUDA, scaled-down on CPU
  python benchmarks/bench_kernels.py --memory-only      # CPU: peak RSS, ours vs torch, at
                                                        # N=4096, d=1024, V=151936 (fp32)
Rows go to benchmarks/results/results.csv, the run's JSON to benchmarks/results/bench_kernels.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from gvm_kernels.fused_logprobs import fused_logprobs  # noqa: E402
from gvm_kernels.reference import logprobs_reference  # noqa: E402

GPU_SHAPES = [(8192, 4096, 151936), (16384, 1536, 151936), (4096, 3584, 152064)]
CPU_SHAPES = [(1024, 256, 32003)]
CPU_MEMORY_SHAPE = (4096, 1024, 151936)
CASES = ["torch", "liger", "ours", "ours+norms", "floor"]
MEAN_RESPONSE_TOKENS = 512  # sequence lengths for cu_seqlens: RL responses of a few hundred tokens


def make_inputs(n: int, d: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """Random inputs with realistic logit scale, random upstream gradients and packed lengths."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, d, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(v, d, generator=gen) / d**0.5).to(device, dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    grad_logp = torch.randn(n, generator=gen).to(device)
    grad_entropy = torch.randn(n, generator=gen).to(device)
    lengths = torch.randint(MEAN_RESPONSE_TOKENS // 2, MEAN_RESPONSE_TOKENS * 3 // 2, (n,), generator=gen)
    bounds = torch.cumsum(lengths, 0)
    bounds = bounds[bounds < n]
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), bounds, torch.tensor([n])]).to(device, torch.int32)
    return dict(hidden=hidden, weight=weight, targets=targets, grad_logp=grad_logp,
                grad_entropy=grad_entropy, cu_seqlens=cu_seqlens)


def make_case(case: str, x: dict):
    """(forward, forward+backward) closures for one implementation."""
    h, w, y, g, e, cu = (x[k] for k in ("hidden", "weight", "targets", "grad_logp", "grad_entropy", "cu_seqlens"))
    norms = torch.zeros(cu.numel() - 1, dtype=torch.float32, device=h.device)

    def clear():
        h.grad = None
        w.grad = None

    if case == "torch":
        def fwd():
            return logprobs_reference(h, w, y, return_entropy=True)

        def fwd_bwd():
            clear()
            logp, ent = fwd()
            torch.autograd.backward([logp, ent], [g, e])
    elif case == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        loss_fn = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def fwd():
            return loss_fn(w, h, y)

        def fwd_bwd():
            clear()
            torch.autograd.backward([fwd()], [-g])  # loss = -logp
    elif case in ("ours", "ours+norms"):
        kwargs = dict(cu_seqlens=cu, sq_grad_norms_out=norms) if case == "ours+norms" else {}

        def fwd():
            return fused_logprobs(h, w, y, return_entropy=True, **kwargs)

        def fwd_bwd():
            clear()
            logp, ent = fwd()
            torch.autograd.backward([logp, ent], [g, e])
    elif case == "floor":
        hd, wd = h.detach(), w.detach()

        def fwd():
            return hd @ wd.T

        def fwd_bwd():
            logits = fwd()
            logits @ wd  # d hidden
            logits.T @ hd  # d weight
    else:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    return fwd, fwd_bwd


def run_shape(shape: tuple[int, int, int], dtype: torch.dtype, device: str, cases: list[str], reps: int) -> list[dict]:
    n, d, v = shape
    x = make_inputs(n, d, v, dtype, device)
    rows = []
    for case in cases:
        if case == "liger" and device != "cuda":
            continue
        fwd, fwd_bwd = make_case(case, x)
        try:
            t_fwd = harness.time_fn(lambda: fwd(), warmup=1, reps=reps)["median_s"]
            t_all = harness.time_fn(fwd_bwd, warmup=1, reps=reps)["median_s"]
            mem = harness.peak_memory_bytes(fwd_bwd) if device == "cuda" else None
        except torch.OutOfMemoryError:
            print(f"{case} at {shape}: out of memory", flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append(dict(case=case, shape=f"{n}x{d}x{v}", fwd_s=t_fwd, fwd_bwd_s=t_all, bwd_s=t_all - t_fwd,
                         peak_bytes=mem))
        print(f"  {case:11s} {n}x{d}x{v}: fwd {t_fwd * 1e3:8.2f} ms  fwd+bwd {t_all * 1e3:8.2f} ms"
              + (f"  peak {mem / 2**30:6.2f} GiB" if mem is not None else ""), flush=True)
    return rows


def report(rows: list[dict]) -> None:
    """Table of times and memory with ratios to Liger (b) and the GEMM floor (e)."""
    table = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        by_case = {r["case"]: r for r in rows if r["shape"] == shape}
        liger = by_case.get("liger", {}).get("fwd_bwd_s")
        floor = by_case.get("floor", {}).get("fwd_bwd_s")
        ours_bwd = by_case.get("ours", {}).get("bwd_s")
        for case, r in by_case.items():
            t = r["fwd_bwd_s"]
            table.append([shape, case, f"{r['fwd_s'] * 1e3:.2f}", f"{t * 1e3:.2f}", f"{r['bwd_s'] * 1e3:.2f}",
                          "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}",
                          f"{liger / t:.2f}" if liger else "-", f"{t / floor:.2f}" if floor else "-",
                          f"{(r['bwd_s'] / ours_bwd - 1) * 100:+.1f}%" if case == "ours+norms" and ours_bwd else ""])
    harness.print_table(["shape NxdxV", "case", "fwd ms", "fwd+bwd ms", "bwd ms", "peak GiB", "liger/x",
                         "x/floor", "norms bwd cost"], table)


def _memory_case(case: str, shape: tuple[int, int, int]):
    """Subprocess target: build fp32 CPU inputs, return the forward+backward to measure."""
    torch.set_num_threads(2)
    x = make_inputs(*shape, torch.float32, "cpu")
    return make_case(case, x)[1]


def memory_only(shape: tuple[int, int, int]) -> list[dict]:
    rows = []
    for case in ("ours", "ours+norms", "torch"):
        peak = harness.peak_rss_in_subprocess(_memory_case, case, shape)
        n, d, v = shape
        rows.append(dict(case=case, shape=f"{n}x{d}x{v}", peak_bytes=peak))
        print(f"  {case:11s} {n}x{d}x{v} fp32 CPU: peak RSS growth {peak / 2**30:.2f} GiB "
              f"(an N x V fp32 tensor is {n * v * 4 / 2**30:.2f} GiB)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 (GPU default) or float32 (CPU default)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--shapes", default=None, help="e.g. 8192x4096x151936,4096x3584x152064 (N x d x V)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--memory-only", action="store_true", help="CPU peak-memory comparison only")
    args = parser.parse_args()

    if args.memory_only:
        rows = memory_only(CPU_MEMORY_SHAPE)
        harness.append_results("bench_kernels_memory", [
            dict(case=f"{r['case']}@{r['shape']}", metric="peak_rss_growth", value=r["peak_bytes"], unit="bytes")
            for r in rows])
        return

    on_gpu = args.device == "cuda"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if on_gpu else torch.float32)
    shapes = ([tuple(int(s) for s in spec.split("x")) for spec in args.shapes.split(",")] if args.shapes
              else GPU_SHAPES if on_gpu else CPU_SHAPES)
    reps = args.reps or (20 if on_gpu else 3)
    cases = args.cases.split(",")
    print(f"bench_kernels on {harness.machine_name()}, {dtype}, cases {cases}", flush=True)
    rows = []
    for shape in shapes:
        rows += run_shape(shape, dtype, args.device, cases, reps)
    report(rows)
    csv_rows = []
    for r in rows:
        for metric in ("fwd_s", "fwd_bwd_s", "bwd_s", "peak_bytes"):
            if r[metric] is not None:
                csv_rows.append(dict(case=f"{r['case']}@{r['shape']}:{dtype}", metric=metric, value=r[metric],
                                     unit="bytes" if metric == "peak_bytes" else "s"))
    print("wrote", harness.append_results("bench_kernels", csv_rows))


if __name__ == "__main__":
    main()
