"""Per-sequence embedding-gradient norms against autograd through nn.Embedding in float64.

The oracle is deliberately dumb: per sequence b, loss_b = sum_t <g_t, E[x_t]>, backward, and
||E.grad||^2 -- so "repeated ids summed before squaring" is whatever autograd does, not our
reading of the formula.

The Triton path runs on CPU only under TRITON_INTERPRET=1 set *before triton is imported*, which
a shared pytest process cannot promise. So the tests whose names contain "triton" skip here and
`test_kernel_tests_pass_in_interpreter_subprocess` reruns them in a fresh interpreter-mode
process; each asserts that the interpreter really ran the kernel.
"""

import pytest
import torch

from _interpreter_subprocess import run_interpreted

from gvm_kernels import embedding_norms
from gvm_kernels.embedding_norms import (
    embedding_sq_grad_norms,
    embedding_sq_grad_norms_torch,
    embedding_sq_grad_norms_triton,
    triton_interpreting,
)

INTERPRETER = triton_interpreting()      # true only in the subprocess below (or a manual run)
needs_interpreter = pytest.mark.skipif(
    not INTERPRETER, reason="Triton on CPU needs TRITON_INTERPRET=1 before import; "
                            "run by test_kernel_tests_pass_in_interpreter_subprocess")
BACKENDS = ["torch", pytest.param("triton", marks=needs_interpreter)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def autograd_oracle(input_ids: torch.Tensor, grad_embeds: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """||dE_b||^2 per sequence by backprop through an fp64 nn.Embedding (fp64 copy of grad_embeds)."""
    vocab = int(input_ids.max()) + 1 if input_ids.numel() else 1
    dim = grad_embeds.shape[1]
    norms = []
    for b in range(cu_seqlens.numel() - 1):
        start, end = int(cu_seqlens[b]), int(cu_seqlens[b + 1])
        table = torch.nn.Embedding(vocab, dim, dtype=torch.float64)
        loss = (table(input_ids[start:end].long()) * grad_embeds[start:end].double()).sum()
        loss.backward()
        norms.append(table.weight.grad.square().sum())
    return torch.stack(norms)


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    """Fresh inputs every session, from the test's seed (printed; GVM_TEST_SEED replays it)."""
    return torch.Generator().manual_seed(seed)


def run_backend(backend: str, input_ids, grad_embeds, cu_seqlens, **kwargs) -> torch.Tensor:
    if backend == "triton":
        out = embedding_sq_grad_norms_triton(input_ids, grad_embeds, cu_seqlens, **kwargs)
        from triton.runtime.interpreter import InterpretedFunction
        assert isinstance(embedding_norms._kernel(), InterpretedFunction), "Triton did not interpret"
        return out
    return embedding_sq_grad_norms_torch(input_ids, grad_embeds, cu_seqlens)


def random_packed_batch(gen: torch.Generator, lengths: list[int], vocab: int, dim: int):
    """Small vocab so ids repeat inside a sequence and across sequences."""
    n_tokens = sum(lengths)
    input_ids = torch.randint(0, vocab, (n_tokens,), generator=gen)
    grad_embeds = torch.randn(n_tokens, dim, generator=gen)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    return input_ids, grad_embeds, cu_seqlens


CASES = {
    "mixed": ([1, 9, 3, 17, 1, 6], 5, 40),        # length-1 sequences, repeats, d not a power of 2
    "single_seq": ([23], 4, 33),                   # B = 1
    "single_token": ([1], 100, 8),                 # N = 1
    "empty_seq": ([4, 0, 5], 3, 16),               # an empty sequence has norm 0
    "wide_vocab": ([7, 12], 1000, 24),             # mostly distinct ids
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_matches_autograd_oracle(backend, case, gen):
    lengths, vocab, dim = CASES[case]
    input_ids, grad_embeds, cu_seqlens = random_packed_batch(gen, lengths, vocab, dim)
    got = run_backend(backend, input_ids, grad_embeds, cu_seqlens)
    want = autograd_oracle(input_ids, grad_embeds, cu_seqlens)
    assert got.dtype == torch.float32 and got.shape == (len(lengths),)
    # fp32 accumulation of O(10) rows of O(1) values: relative error ~1e-6
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(backend, dtype, gen):
    """Low-precision input, fp32 accumulation: matches the fp64 oracle on the *rounded* input to
    fp32 accuracy (the only loss is input rounding, which this comparison factors out)."""
    input_ids, grad_embeds, cu_seqlens = random_packed_batch(gen, [5, 1, 30, 12], 6, 48)
    low = grad_embeds.to(dtype)
    got = run_backend(backend, input_ids, low, cu_seqlens)
    want_rounded = autograd_oracle(input_ids, low.double(), cu_seqlens)
    torch.testing.assert_close(got.double(), want_rounded, rtol=1e-5, atol=1e-6)
    # and it differs from the unrounded oracle only by input rounding (~2^-8 relative for bf16)
    want_exact = autograd_oracle(input_ids, grad_embeds, cu_seqlens)
    torch.testing.assert_close(got.double(), want_exact, rtol=3e-2, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeats_summed_before_squaring_only_within_a_sequence(backend):
    """ids [3, 3 | 3]: sequence 0 hits row 3 twice -> ||2v||^2 = 4||v||^2; sequence 1 -> ||v||^2."""
    v = torch.randn(10)
    input_ids = torch.tensor([3, 3, 3])
    grad_embeds = v.repeat(3, 1)
    cu_seqlens = torch.tensor([0, 2, 3])
    got = run_backend(backend, input_ids, grad_embeds, cu_seqlens)
    sq = v.double().square().sum()
    torch.testing.assert_close(got.double(), torch.stack([4 * sq, sq]), rtol=1e-5, atol=1e-6)


@needs_interpreter
@pytest.mark.parametrize("block_d", [4, 16])
def test_triton_tiles_over_d_and_reads_strided_rows(block_d, gen):
    """Several d tiles with a ragged last tile, and rows that are a view into a wider buffer."""
    input_ids, wide, cu_seqlens = random_packed_batch(gen, [3, 8, 1], 4, 50)
    grad_view = wide[:, 5:43]                               # row stride 50, unit column stride
    got = run_backend("triton", input_ids, grad_view, cu_seqlens, block_d=block_d)
    torch.testing.assert_close(got.double(), autograd_oracle(input_ids, grad_view, cu_seqlens),
                               rtol=1e-5, atol=1e-6)
    transposed = grad_view.t().contiguous().t()             # column-major: non-unit column stride
    got_t = run_backend("triton", input_ids, transposed, cu_seqlens, block_d=block_d)
    torch.testing.assert_close(got_t, got, rtol=1e-6, atol=1e-6)


@needs_interpreter
def test_auto_dispatch_picks_triton_only_when_interpreting(gen, monkeypatch):
    input_ids, grad_embeds, cu_seqlens = random_packed_batch(gen, [4, 6], 5, 12)
    calls = []
    real = embedding_norms.embedding_sq_grad_norms_triton
    monkeypatch.setattr(embedding_norms, "embedding_sq_grad_norms_triton",
                        lambda *a, **k: calls.append("triton") or real(*a, **k))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = embedding_sq_grad_norms(input_ids, grad_embeds, cu_seqlens)
    assert calls == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    interp = embedding_sq_grad_norms(input_ids, grad_embeds, cu_seqlens)
    assert calls == ["triton"]
    torch.testing.assert_close(interp, cpu, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_triton_on_cuda_matches_oracle(dtype, gen, monkeypatch):
    """The compiled kernel (auto-dispatched for CUDA tensors) at a model-like width: d = 1536 is
    one full and one ragged 1024-wide tile; long sequences with many repeats."""
    input_ids, grad_embeds, cu_seqlens = random_packed_batch(gen, [1, 37, 5, 300, 64, 1], 50, 1536)
    low = grad_embeds.to(dtype)
    calls = []
    real = embedding_norms.embedding_sq_grad_norms_triton
    monkeypatch.setattr(embedding_norms, "embedding_sq_grad_norms_triton",
                        lambda *a, **k: calls.append("triton") or real(*a, **k))
    got = embedding_sq_grad_norms(input_ids.cuda(), low.cuda(), cu_seqlens.cuda())
    assert calls == ["triton"] and got.is_cuda
    want = autograd_oracle(input_ids, low.double(), cu_seqlens)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)
    torch_path = embedding_sq_grad_norms(input_ids.cuda(), low.cuda(), cu_seqlens.cuda(), backend="torch")
    torch.testing.assert_close(torch_path.cpu().double(), want, rtol=1e-5, atol=1e-5)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        embedding_sq_grad_norms(torch.tensor([1]), torch.ones(1, 2), torch.tensor([0, 1]), backend="triton")


@pytest.mark.skipif(INTERPRETER, reason="triton was imported in interpreter mode here")
def test_interpret_flag_set_after_triton_import_is_refused_not_crashed(gen, monkeypatch):
    """Triton's library was compiled-mode decorated at import: explicit triton must say so, and
    auto must fall back to the (identical) PyTorch path instead of an obscure interpreter error."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    input_ids, grad_embeds, cu_seqlens = random_packed_batch(gen, [3, 2], 4, 8)
    with pytest.raises(ValueError, match="before triton is first imported"):
        embedding_sq_grad_norms(input_ids, grad_embeds, cu_seqlens, backend="triton")
    torch.testing.assert_close(embedding_sq_grad_norms(input_ids, grad_embeds, cu_seqlens),
                               autograd_oracle(input_ids, grad_embeds, cu_seqlens).float(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(INTERPRETER, reason="this is the interpreter-mode process")
def test_kernel_tests_pass_in_interpreter_subprocess():
    """Rerun this file's Triton tests in a process that imports triton in interpreter mode."""
    passed, summary = run_interpreted(
        __file__, "triton and not interpret_flag_set_after and not compiled_triton_on_cuda", timeout=600)
    assert passed >= 12 and "skipped" not in summary, summary      # 12 when written


@pytest.mark.parametrize("args, match", [
    ((torch.tensor([[1]]), torch.ones(1, 2), torch.tensor([0, 1])), "input_ids"),
    ((torch.tensor([1.0]), torch.ones(1, 2), torch.tensor([0, 1])), "integer"),
    ((torch.tensor([1]), torch.ones(2), torch.tensor([0, 1])), "grad_embeds"),
    ((torch.tensor([1]), torch.ones(1, 2, dtype=torch.int64), torch.tensor([0, 1])), "floating"),
    ((torch.tensor([1, 2]), torch.ones(1, 2), torch.tensor([0, 1])), "same packed positions"),
    ((torch.tensor([1]), torch.ones(1, 2), torch.tensor([0])), "cu_seqlens"),
    ((torch.tensor([1]), torch.ones(1, 2), torch.tensor([1, 1])), "start at 0"),
    ((torch.tensor([1, 1]), torch.ones(2, 2), torch.tensor([0, 1])), "end at N=2"),
    ((torch.tensor([1, 1, 1]), torch.ones(3, 2), torch.tensor([0, 2, 1, 3])), "non-decreasing"),
    ((torch.tensor([-1]), torch.ones(1, 2), torch.tensor([0, 1])), "non-negative"),
])
def test_bad_arguments_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        embedding_sq_grad_norms(*args)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend"):
        embedding_sq_grad_norms(torch.tensor([1]), torch.ones(1, 2), torch.tensor([0, 1]), backend="cuda")
