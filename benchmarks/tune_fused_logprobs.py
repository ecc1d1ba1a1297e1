"""Sweep the dW + per-sequence-norm kernel's tiles on a GPU: backward time of fused_logprobs
with norms, per config, against the same backward without norms (cuBLAS dW).

  python benchmarks/tune_fused_logprobs.py [--shape 8192x4096x151936]

Each config is (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, flat loop over sequences). Prints a table; rows go to
benchmarks/results/results.csv. Only meaningful on a GPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_kernels import make_inputs  # noqa: E402

from gvm_kernels.fused_logprobs import FusedLogprobsConfig, fused_logprobs_impl  # noqa: E402

CONFIGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, flat loop[, transposed load])
    (128, 128, 64, 8, 3, False), (128, 128, 64, 8, 3, True), (128, 128, 64, 8, 4, True),
    (128, 128, 32, 8, 4, True), (128, 256, 64, 8, 3, True), (256, 128, 64, 8, 3, True),
    (128, 128, 64, 4, 4, True), (64, 128, 64, 4, 4, True), (128, 64, 64, 4, 4, True),
    (128, 256, 32, 8, 4, True),
]


def backward_time(x: dict, config: FusedLogprobsConfig | None, with_norms: bool,
                  reps: int) -> tuple[float, torch.Tensor]:
    """Median backward seconds, and the per-sequence norms it wrote (to check configs agree)."""
    h, w, y, g, e, cu = (x[k] for k in ("hidden", "weight", "targets", "grad_logp", "grad_entropy", "cu_seqlens"))
    norms = torch.zeros(cu.numel() - 1, dtype=torch.float32, device=h.device)
    kwargs = dict(cu_seqlens=cu, sq_grad_norms_out=norms) if with_norms else {}
    logp, ent = fused_logprobs_impl(h, w, y, return_entropy=True, config=config, **kwargs)

    def bwd():
        h.grad = None
        w.grad = None
        torch.autograd.backward([logp, ent], [g, e], retain_graph=True)

    return harness.time_fn(bwd, warmup=1, reps=reps)["median_s"], norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8192x4096x151936")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--single-sequence", action="store_true",
                        help="one sequence over all tokens: the dW kernel's plain GEMM speed")
    args = parser.parse_args()
    n, d, v = (int(s) for s in args.shape.split("x"))
    x = make_inputs(n, d, v, torch.bfloat16, "cuda")
    if args.single_sequence:
        x["cu_seqlens"] = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    base, _ = backward_time(x, None, False, args.reps)
    _, reference_norms = backward_time(x, FusedLogprobsConfig(), True, 1)
    print(f"backward without norms: {base * 1e3:.2f} ms", flush=True)
    rows, table = [dict(case=f"no-norms@{args.shape}", metric="bwd_s", value=base, unit="s")], []
    for bm, bn, bk, warps, stages, flat, *trans in CONFIGS:
        trans = bool(trans and trans[0])
        cfg = FusedLogprobsConfig(dw_block_m=bm, dw_block_n=bn, dw_block_k=bk, dw_num_warps=warps,
                                  dw_num_stages=stages, dw_flat_loop=flat, dw_trans_load=trans)
        name = f"{bm}x{bn}x{bk} w{warps} s{stages}{' flat' if flat else ''}{' trans' if trans else ''}"
        try:
            t, norms = backward_time(x, cfg, True, args.reps)
        except Exception as exc:  # a config that does not compile (shared memory, registers)
            print(f"  {name}: failed: {str(exc)[:160]}", flush=True)
            continue
        disagreement = ((norms - reference_norms).abs().max() / reference_norms.abs().max()).item()
        print(f"  {name}: {t * 1e3:.2f} ms ({(t / base - 1) * 100:+.1f}%), norms vs default config "
              f"{disagreement:.1e}", flush=True)
        table.append([name, f"{t * 1e3:.2f}", f"{(t / base - 1) * 100:+.1f}%"])
        rows.append(dict(case=f"norms {name}@{args.shape}", metric="bwd_s", value=t, unit="s"))
    harness.print_table(["dW kernel config", "bwd ms", "vs no norms"], table)
    harness.append_results("tune_fused_logprobs", rows)


if __name__ == "__main__":
    main()
