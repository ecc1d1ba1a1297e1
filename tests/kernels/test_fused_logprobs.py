"""fused_logprobs against the float64 materialised-logits reference, on both implementations.

The torch path runs as is; the Triton path runs under the Triton interpreter on the CPU (its
module is imported with TRITON_INTERPRET=1, which Triton reads when `@triton.jit` decorates a
kernel), on tiny shapes because the interpreter executes every tile op in numpy.
Inputs are fresh random draws each run; the seed is in every failure message.
"""
from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from _interpreter_subprocess import run_interpreted

from gvm_kernels.fused_logprobs import FusedLogprobsConfig, fused_logprobs, fused_logprobs_impl, resolve_backend
from gvm_kernels.reference import logprobs_reference, per_sequence_sq_grad_norms_reference

IGNORE = -100


# ---------------------------------------------------------------- inputs and the two computations
@dataclass
class Case:
    hidden: torch.Tensor       # [N, d] float64 master copy, cast to the dtype under test
    weight: torch.Tensor       # [V, d]
    targets: torch.Tensor      # [N] int64, some IGNORE
    cu_seqlens: torch.Tensor   # [B + 1]
    grad_logp: torch.Tensor    # [N] upstream gradients (random, not ones)
    grad_entropy: torch.Tensor  # [N]
    seed: int


def make_case(seq_lens: list[int], dim: int, vocab: int, *, dtype: torch.dtype = torch.float32,
              ignore_frac: float = 0.2) -> Case:
    """Random inputs whose logits have a spread of a few units, targets with repeats and ignores."""
    seed = random.randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    n_tokens = sum(seq_lens)
    hidden = torch.randn(n_tokens, dim, generator=gen).to(dtype).double()  # values exact in `dtype`
    weight = (torch.randn(vocab, dim, generator=gen) * 2.0 / dim**0.5).to(dtype).double()
    targets = torch.randint(0, vocab, (n_tokens,), generator=gen)
    if n_tokens >= 4:
        targets[: n_tokens // 3] = targets[0]  # repeated targets
        targets[1], targets[2] = 0, vocab - 1  # both ends of the vocabulary
        targets[torch.rand(n_tokens, generator=gen) < ignore_frac] = IGNORE
    targets = targets[torch.randperm(n_tokens, generator=gen)]
    cu_seqlens = torch.tensor([0] + seq_lens, dtype=torch.int32).cumsum(0).to(torch.int32)
    return Case(hidden, weight, targets, cu_seqlens,
                torch.randn(n_tokens, generator=gen, dtype=torch.float64),
                torch.randn(n_tokens, generator=gen, dtype=torch.float64), seed)


@dataclass
class Result:
    logp: torch.Tensor
    entropy: torch.Tensor | None
    grad_hidden: torch.Tensor | None
    grad_weight: torch.Tensor | None
    sq_norms: torch.Tensor | None


def run_fused(case: Case, *, dtype: torch.dtype, temperature: float, backend: str,
              config: FusedLogprobsConfig | None = None, with_entropy: bool = True,
              with_norms: bool = True, pass_cu_seqlens: bool = True) -> Result:
    hidden = case.hidden.detach().to(dtype).requires_grad_(True)
    weight = case.weight.detach().to(dtype).requires_grad_(True)
    num_seqs = case.cu_seqlens.numel() - 1 if pass_cu_seqlens else 1
    sq_norms = (torch.full((num_seqs,), float("nan"), device=hidden.device)  # must be overwritten
                if with_norms else None)
    out = fused_logprobs_impl(
        hidden, weight, case.targets, cu_seqlens=case.cu_seqlens if pass_cu_seqlens else None,
        temperature=temperature, ignore_index=IGNORE, return_entropy=with_entropy,
        sq_grad_norms_out=sq_norms, backend=backend, config=config)
    logp, entropy = out if with_entropy else (out, None)
    assert logp.dtype == torch.float32 and logp.shape == case.targets.shape
    loss = (logp * case.grad_logp.float()).sum()
    if with_entropy:
        loss = loss + (entropy * case.grad_entropy.float()).sum()
    loss.backward()
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    return Result(logp, entropy, hidden.grad, weight.grad, sq_norms)


def run_reference(case: Case, *, dtype: torch.dtype, temperature: float, with_entropy: bool = True,
                  cu_seqlens: torch.Tensor | None = None) -> Result:
    """The materialised-logits reference, float64 for the oracle or bf16 for the naive baseline."""
    hidden = case.hidden.detach().to(dtype).requires_grad_(True)
    weight = case.weight.detach().to(dtype).requires_grad_(True)
    logp, entropy = logprobs_reference(hidden, weight, case.targets, temperature=temperature,
                                       ignore_index=IGNORE, return_entropy=True)
    grad_entropy = case.grad_entropy if with_entropy else torch.zeros_like(case.grad_entropy)
    loss = (logp * case.grad_logp.to(logp.dtype)).sum() + (entropy * grad_entropy.to(logp.dtype)).sum()
    loss.backward()
    cu_seqlens = case.cu_seqlens if cu_seqlens is None else cu_seqlens
    sq_norms = per_sequence_sq_grad_norms_reference(
        case.hidden.to(dtype), case.weight.to(dtype), case.targets, cu_seqlens, case.grad_logp.to(dtype),
        grad_entropy.to(dtype), temperature=temperature, ignore_index=IGNORE)
    return Result(logp, entropy, hidden.grad, weight.grad, sq_norms)


def rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| in float64 (absolute when ref is zero)."""
    diff = (ours.double() - ref.double()).norm().item()
    scale = ref.double().norm().item()
    return diff / scale if scale > 0 else diff


def assert_matches(ours: torch.Tensor, ref: torch.Tensor, name: str, seed: int, *, rel_tol: float = 1e-4) -> None:
    err = rel_error(ours, ref)
    assert err < rel_tol, f"{name}: relative error {err:.2e} >= {rel_tol:.0e} (seed {seed})"
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    torch.testing.assert_close(ours.double(), ref.double(), rtol=10 * rel_tol, atol=10 * rel_tol * scale,
                               msg=lambda m: f"{name} (seed {seed}): {m}")


def assert_all_match(ours: Result, ref: Result, seed: int, *, rel_tol: float = 1e-4) -> None:
    assert_matches(ours.logp, ref.logp, "logp", seed, rel_tol=rel_tol)
    if ours.entropy is not None:
        assert_matches(ours.entropy, ref.entropy, "entropy", seed, rel_tol=rel_tol)
    assert_matches(ours.grad_hidden, ref.grad_hidden, "grad_hidden", seed, rel_tol=rel_tol)
    assert_matches(ours.grad_weight, ref.grad_weight, "grad_weight", seed, rel_tol=rel_tol)
    if ours.sq_norms is not None:
        assert_matches(ours.sq_norms, ref.sq_norms, "sq_grad_norms", seed, rel_tol=rel_tol)


# (sequence lengths, hidden dim, vocabulary, temperature, chunk size); None = the default budget
FP32_CASES = {
    "single_token": ([1], 16, 1009, 1.0, 256),
    "many_short_with_empty": ([1, 1, 2, 1, 3, 0, 5, 1, 1, 4], 24, 1009, 0.7, 300),
    "few_long_prime_vocab": ([40, 57], 32, 4099, 1.3, 512),
    "mixed_default_chunk": ([7, 1, 30, 2], 8, 4099, 1.3, None),
}


# ---------------------------------------------------------------- torch path
@pytest.mark.parametrize("name", list(FP32_CASES))
def test_torch_path_fp32_matches_float64_reference(name):
    seq_lens, dim, vocab, temperature, chunk = FP32_CASES[name]
    case = make_case(seq_lens, dim, vocab)
    ours = run_fused(case, dtype=torch.float32, temperature=temperature, backend="torch",
                     config=FusedLogprobsConfig(chunk_size=chunk))
    ref = run_reference(case, dtype=torch.float64, temperature=temperature)
    assert_all_match(ours, ref, case.seed)
    ignored = case.targets == IGNORE
    assert torch.all(ours.logp[ignored] == 0) and torch.all(ours.entropy[ignored] == 0)


def test_torch_path_logp_only_and_one_sequence_without_cu_seqlens():
    """No entropy output: only the g term of dz; no cu_seqlens: the batch is one sequence."""
    case = make_case([13, 20], 16, 1009)
    ours = run_fused(case, dtype=torch.float32, temperature=0.7, backend="torch", with_entropy=False,
                     pass_cu_seqlens=False, config=FusedLogprobsConfig(chunk_size=128))
    ref = run_reference(case, dtype=torch.float64, temperature=0.7, with_entropy=False,
                        cu_seqlens=torch.tensor([0, 33]))
    assert_all_match(ours, ref, case.seed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_path_half_precision_no_worse_than_naive(dtype):
    """Against the float64 oracle, ours must be at least as accurate as the naive reference run
    in the same half precision (which rounds the logits); a small slack covers output rounding."""
    case = make_case([9, 1, 30, 24], 32, 1009, dtype=dtype)
    ours = run_fused(case, dtype=dtype, temperature=0.7, backend="torch",
                     config=FusedLogprobsConfig(chunk_size=256))
    naive = run_reference(case, dtype=dtype, temperature=0.7)
    oracle = run_reference(case, dtype=torch.float64, temperature=0.7)
    assert_no_worse_than_naive(ours, naive, oracle, case.seed)


def assert_no_worse_than_naive(ours: Result, naive: Result, oracle: Result, seed: int, slack: float = 2e-4) -> None:
    """Each output at least as accurate as the naive one, plus `slack`. The squared norms get one
    unit roundoff of the input dtype per factor instead: the Triton path stores dz in the input
    dtype for the dW product (the GEMM's operand type), so a squared norm carries two roundings
    the oracle lacks, while the naive's error over a few norms is luck of its output rounding
    (CI seed 1284076964: bf16 ours 1.1e-3, naive 7.1e-4). A wrong kernel errs by far more."""
    dtype = naive.grad_weight.dtype  # the inputs' dtype (logp is float32)
    unit_roundoff = torch.finfo(dtype).eps / 2 if dtype in (torch.bfloat16, torch.float16) else 0.0
    for field in ("logp", "entropy", "grad_hidden", "grad_weight", "sq_norms"):
        err_ours = rel_error(getattr(ours, field), getattr(oracle, field))
        err_naive = rel_error(getattr(naive, field), getattr(oracle, field))
        allowed = err_naive + max(slack, 2 * unit_roundoff if field == "sq_norms" else 0.0)
        assert err_ours <= allowed, (
            f"{field}: ours {err_ours:.2e} vs naive {err_naive:.2e} relative error (seed {seed})")


@pytest.mark.parametrize("needs", ["hidden", "weight", "neither"])
def test_torch_path_partial_requires_grad(needs):
    case = make_case([5, 11], 16, 1009)
    hidden = case.hidden.float().requires_grad_(needs == "hidden")
    weight = case.weight.float().requires_grad_(needs == "weight")
    sq_norms = torch.full((2,), float("nan"))
    logp, entropy = fused_logprobs_impl(hidden, weight, case.targets, cu_seqlens=case.cu_seqlens,
                                        return_entropy=True, sq_grad_norms_out=sq_norms, backend="torch",
                                        config=FusedLogprobsConfig(chunk_size=200))
    ref = run_reference(case, dtype=torch.float64, temperature=1.0)
    assert_matches(logp, ref.logp, "logp", case.seed)
    if needs == "neither":
        assert not logp.requires_grad
        return
    ((logp * case.grad_logp.float()).sum() + (entropy * case.grad_entropy.float()).sum()).backward()
    leaf, other = (hidden, weight) if needs == "hidden" else (weight, hidden)
    assert other.grad is None
    assert_matches(leaf.grad, getattr(ref, f"grad_{needs}"), f"grad_{needs}", case.seed)
    assert_matches(sq_norms, ref.sq_norms, "sq_grad_norms", case.seed)  # norms even when W is frozen


def test_public_wrapper_on_cpu_uses_the_torch_path_and_overwrites_norms():
    case = make_case([3, 4, 6], 16, 1009)
    hidden = case.hidden.float().requires_grad_(True)
    weight = case.weight.float().requires_grad_(True)
    sq_norms = torch.full((3,), 123.0)
    ref = run_reference(case, dtype=torch.float64, temperature=1.3, with_entropy=False)
    for _ in range(2):  # a second backward must overwrite, not accumulate
        logp = fused_logprobs(hidden, weight, case.targets, cu_seqlens=case.cu_seqlens, temperature=1.3,
                              ignore_index=IGNORE, sq_grad_norms_out=sq_norms)
        (logp * case.grad_logp.float()).sum().backward()
        assert_matches(sq_norms, ref.sq_norms, "sq_grad_norms", case.seed)
    assert_matches(logp, ref.logp, "logp", case.seed)


class LargestAllocation(TorchDispatchMode):
    """Records the byte size of the largest fresh tensor any aten op produces (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest_bytes = max(self.largest_bytes, t.untyped_storage().nbytes())
        return out


def test_torch_path_never_allocates_full_logits():
    n_tokens, dim, vocab, chunk = 512, 64, 20011, 4096
    hidden = torch.randn(n_tokens, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) * 0.25).requires_grad_(True)
    targets = torch.randint(0, vocab, (n_tokens,))
    with LargestAllocation() as tracker:
        logp, entropy = fused_logprobs_impl(
            hidden, weight, targets, cu_seqlens=torch.tensor([0, 100, 512]), return_entropy=True,
            sq_grad_norms_out=torch.empty(2), backend="torch", config=FusedLogprobsConfig(chunk_size=chunk))
        (logp.sum() + entropy.sum()).backward()
    assert tracker.largest_bytes >= n_tokens * chunk * 4  # the tracker does see the chunk blocks
    assert tracker.largest_bytes <= n_tokens * chunk * 8 < n_tokens * vocab * 4


# ---------------------------------------------------------------- argument validation
def _valid_args() -> dict:
    return dict(hidden=torch.randn(6, 8), weight=torch.randn(50, 8), targets=torch.randint(0, 50, (6,)),
                cu_seqlens=torch.tensor([0, 2, 6]), sq_grad_norms_out=torch.zeros(2))


BAD_ARGS = {
    "hidden_1d": (dict(hidden=torch.randn(6)), "hidden"),
    "hidden_float64": (dict(hidden=torch.randn(6, 8, dtype=torch.float64)), "hidden dtype"),
    "weight_wrong_dim": (dict(weight=torch.randn(50, 7)), "weight"),
    "weight_dtype_mismatch": (dict(weight=torch.randn(50, 8, dtype=torch.bfloat16)), "weight dtype"),
    "targets_float": (dict(targets=torch.zeros(6)), "targets"),
    "targets_wrong_length": (dict(targets=torch.zeros(5, dtype=torch.long)), "targets"),
    "target_too_large": (dict(targets=torch.tensor([0, 1, 50, 2, 3, 4])), "targets"),
    "target_negative": (dict(targets=torch.tensor([0, 1, -1, 2, 3, 4])), "targets"),
    "cu_not_starting_at_zero": (dict(cu_seqlens=torch.tensor([1, 2, 6])), "cu_seqlens"),
    "cu_not_ending_at_n": (dict(cu_seqlens=torch.tensor([0, 2, 5])), "cu_seqlens"),
    "cu_decreasing": (dict(cu_seqlens=torch.tensor([0, 4, 2, 6]), sq_grad_norms_out=torch.zeros(3)), "cu_seqlens"),
    "cu_float": (dict(cu_seqlens=torch.tensor([0.0, 2.0, 6.0])), "cu_seqlens"),
    "cu_too_short": (dict(cu_seqlens=torch.tensor([0])), "cu_seqlens"),
    "norms_wrong_size": (dict(sq_grad_norms_out=torch.zeros(3)), "sq_grad_norms_out"),
    "norms_wrong_dtype": (dict(sq_grad_norms_out=torch.zeros(2, dtype=torch.float64)), "sq_grad_norms_out"),
    "norms_without_cu_wrong_size": (dict(cu_seqlens=None), "sq_grad_norms_out"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_invalid_arguments_raise_value_error_naming_the_argument(name):
    changes, argument = BAD_ARGS[name]
    args = {**_valid_args(), **changes}
    with pytest.raises(ValueError, match=argument):
        fused_logprobs(args.pop("hidden"), args.pop("weight"), args.pop("targets"), **args)


def test_ignored_targets_outside_vocabulary_are_accepted_and_bad_temperature_rejected():
    args = _valid_args()
    args["targets"][3] = IGNORE
    logp = fused_logprobs(args["hidden"], args["weight"], args["targets"], cu_seqlens=args["cu_seqlens"])
    assert logp[3] == 0 and torch.all(logp[torch.arange(6) != 3] < 0)
    with pytest.raises(ValueError, match="temperature"):
        fused_logprobs(args["hidden"], args["weight"], args["targets"], temperature=0.0)


def test_backend_dispatch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend(None, torch.device("cpu")) == "torch"
    assert resolve_backend(None, torch.device("cuda")) == "triton"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(None, torch.device("cpu")) == "triton"
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", torch.device("cpu"))


# ---------------------------------------------------------------- Triton path
# Triton's interpreter needs TRITON_INTERPRET=1 before triton is first imported (importing
# gvm_kernels imports it), which a shared pytest process cannot promise. So the `triton_path`
# tests skip here and `test_kernels_pass_in_interpreter_subprocess` reruns them in a
# fresh process started with the variable set.
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="run by test_kernels_pass_in_interpreter_subprocess")


@pytest.fixture
def interpreted_triton():
    from gvm_kernels import fused_logprobs_triton
    assert fused_logprobs_triton.kernels_are_interpreted()
    return fused_logprobs_triton


@pytest.mark.skipif(INTERPRETER, reason="this is the interpreter-mode process")
def test_kernels_pass_in_interpreter_subprocess():
    """Rerun this file's `triton_path` tests in a process that imports triton in interpreter mode."""
    passed, summary = run_interpreted(__file__, "triton_path_", timeout=900)
    assert passed >= 8 and "skipped" not in summary, summary  # 8 when written


# Tiny blocks so that every kernel sees several tiles, partial tiles and masked tails.
INTERPRETER_CONFIG = dict(block_v=128, dw_block_m=64, dw_block_n=16, dw_block_k=16)
TRITON_FP32_CASES = {
    "single_token": ([1], 16, 263, 1.0, 128),
    "many_short_with_empty": ([1, 1, 2, 1, 3, 0, 5, 1, 1, 4], 24, 1009, 0.7, 256),
    "few_long": ([20, 37], 32, 1009, 1.3, 512),
}


@needs_interpreter
@pytest.mark.parametrize("name", list(TRITON_FP32_CASES))
def test_triton_path_fp32_matches_float64_reference(name, interpreted_triton):
    seq_lens, dim, vocab, temperature, chunk = TRITON_FP32_CASES[name]
    case = make_case(seq_lens, dim, vocab)
    ours = run_fused(case, dtype=torch.float32, temperature=temperature, backend="triton",
                     config=FusedLogprobsConfig(chunk_size=chunk, **INTERPRETER_CONFIG))
    ref = run_reference(case, dtype=torch.float64, temperature=temperature)
    assert_all_match(ours, ref, case.seed)
    ignored = case.targets == IGNORE
    assert torch.all(ours.logp[ignored] == 0) and torch.all(ours.entropy[ignored] == 0)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_path_half_precision_no_worse_than_naive(dtype, interpreted_triton):
    case = make_case([9, 1, 30, 24], 32, 1009, dtype=dtype)
    ours = run_fused(case, dtype=dtype, temperature=1.3, backend="triton",
                     config=FusedLogprobsConfig(chunk_size=384, **INTERPRETER_CONFIG))
    naive = run_reference(case, dtype=dtype, temperature=1.3)
    oracle = run_reference(case, dtype=torch.float64, temperature=1.3)
    assert_no_worse_than_naive(ours, naive, oracle, case.seed)


@needs_interpreter
def test_triton_path_logp_only_without_cu_seqlens(interpreted_triton):
    case = make_case([13, 20], 16, 1009)
    ours = run_fused(case, dtype=torch.float32, temperature=0.7, backend="triton", with_entropy=False,
                     pass_cu_seqlens=False, config=FusedLogprobsConfig(chunk_size=512, **INTERPRETER_CONFIG))
    ref = run_reference(case, dtype=torch.float64, temperature=0.7, with_entropy=False,
                        cu_seqlens=torch.tensor([0, 33]))
    assert_all_match(ours, ref, case.seed)


@needs_interpreter
@pytest.mark.parametrize("needs", ["hidden", "weight"])
def test_triton_path_partial_requires_grad(needs, interpreted_triton):
    """Frozen weight: norms without storing dW; frozen hidden: no grad_hidden GEMM."""
    case = make_case([6, 10], 16, 500)
    hidden = case.hidden.float().requires_grad_(needs == "hidden")
    weight = case.weight.float().requires_grad_(needs == "weight")
    sq_norms = torch.full((2,), float("nan"))
    logp = fused_logprobs_impl(hidden, weight, case.targets, cu_seqlens=case.cu_seqlens, sq_grad_norms_out=sq_norms,
                               backend="triton", config=FusedLogprobsConfig(chunk_size=256, **INTERPRETER_CONFIG))
    (logp * case.grad_logp.float()).sum().backward()
    ref = run_reference(case, dtype=torch.float64, temperature=1.0, with_entropy=False)
    leaf, other = (hidden, weight) if needs == "hidden" else (weight, hidden)
    assert other.grad is None
    assert_matches(leaf.grad, getattr(ref, f"grad_{needs}"), f"grad_{needs}", case.seed)
    assert_matches(sq_norms, ref.sq_norms, "sq_grad_norms", case.seed)


# ---------------------------------------------------------------- compiled kernels (GPU only)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETER,
                                reason="compiled Triton kernels need a GPU (and no interpreter)")


def to_device(case: Case, device: str) -> Case:
    return Case(*(t.to(device) if isinstance(t, torch.Tensor) else t for t in
                  (case.hidden, case.weight, case.targets, case.cu_seqlens, case.grad_logp,
                   case.grad_entropy, case.seed)))


def check_ragged_batch_on_device(dtype: torch.dtype, device: str, backend: str) -> None:
    """Several chunks, ragged sequences (lengths 0, 1, and > one token block), default blocks."""
    case = to_device(make_case([1, 300, 2, 129, 0, 77, 511], 256, 5003, dtype=dtype), device)
    ours = run_fused(case, dtype=dtype, temperature=0.7, backend=backend, config=FusedLogprobsConfig(chunk_size=1024))
    oracle = run_reference(case, dtype=torch.float64, temperature=0.7)
    if dtype == torch.float32:
        assert_all_match(ours, oracle, case.seed)
    else:
        naive = run_reference(case, dtype=dtype, temperature=0.7)
        assert_no_worse_than_naive(ours, naive, oracle, case.seed)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_compiled_triton_matches_reference(dtype):
    check_ragged_batch_on_device(dtype, "cuda", "triton")


@needs_cuda
def test_cuda_fp32_output_gemms_need_no_fallback():
    """bf16 GEMMs with fp32 output (torch.mm / addmm out_dtype); the fallback upcasts and is slow."""
    from gvm_kernels import fused_logprobs_triton as kernels
    a = torch.randn(64, 32, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(32, 48, device="cuda", dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        product = kernels._mm_f32(a, b)
        accumulated = kernels._addmm_f32(torch.ones(64, 48, device="cuda"), a, b)
    expected = a.double() @ b.double()
    assert product.dtype == accumulated.dtype == torch.float32
    torch.testing.assert_close(product.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(accumulated.double(), expected + 1, rtol=1e-5, atol=1e-5)
