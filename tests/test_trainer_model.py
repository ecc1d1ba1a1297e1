"""The packed policy module without DeepSpeed: the fused head keeps HF's parameter, attention never
crosses sequences (packed mask and length groups), and log-probs equal a per-sample HF forward."""
import random

import pytest
import torch
from _trainer_reference import plain_model, random_samples, response_logps
from transformers import AutoModelForCausalLM

from gvm.packing import pack
from gvm.policy_model import Capture, FusedLMHead, PackedPolicy, is_tied, use_fused_head
from gvm.toy import build_tiny

TINY = dict(hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def model_dir(request, tmp_path_factory, module_seed):
    return build_tiny(tmp_path_factory.mktemp("m"), seed=module_seed, tie_word_embeddings=request.param,
                      **TINY)


def fused_model(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    weight = model.lm_head.weight
    head = use_fused_head(model)
    assert isinstance(model.lm_head, FusedLMHead) and head.weight is weight  # same Parameter, same name
    assert "lm_head.weight" in dict(model.named_parameters(remove_duplicate=False))
    assert is_tied(model) == model.config.tie_word_embeddings
    return model


@pytest.mark.parametrize("attention", ["packed", "grouped"])
def test_packed_log_probs_equal_per_sample_forward(seed, model_dir, attention):
    rng = random.Random(seed)
    samples = random_samples(rng, 6, vocab_high=90)
    samples.append(random_samples(rng, 1, vocab_high=90)[0])
    samples[-1].sample_id = 99
    samples[-1].prompt_ids, samples[-1].response_ids = samples[0].prompt_ids, samples[0].response_ids  # equal lengths
    policy = PackedPolicy(fused_model(model_dir), attention).eval()
    batch = pack(samples)
    with torch.no_grad():
        out = policy(batch.input_ids, batch.position_ids, batch.targets, batch.cu_seqlens, batch.seq_bounds)
    reference = plain_model(model_dir).eval()
    with torch.no_grad():
        for s, got in zip(samples, batch.split_responses(out.logp)):
            torch.testing.assert_close(got, response_logps(reference, s), rtol=1e-5, atol=1e-5)
    assert bool((out.logp[~batch.response_mask] == 0).all())


def test_capture_sees_the_gradient_at_the_embedding_output(seed, model_dir):
    samples = random_samples(random.Random(seed), 3)
    policy = PackedPolicy(fused_model(model_dir), "packed")
    batch = pack(samples)
    capture = Capture(want_embed_grad=True)
    out = policy(batch.input_ids, batch.position_ids, batch.targets, batch.cu_seqlens, batch.seq_bounds,
                 capture=capture)
    capture.embeds.retain_grad()
    (-(out.logp * batch.response_mask).sum()).backward()
    torch.testing.assert_close(capture.embed_grad, capture.embeds.grad)
    assert float(capture.embed_grad.abs().max()) > 0
    assert capture.hidden.shape == (batch.num_tokens, policy.model.config.hidden_size)
