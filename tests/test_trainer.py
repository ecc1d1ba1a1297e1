"""PolicyTrainer on one process: real DeepSpeed (ZeRO-3, gloo, CPU, fp32) on a tiny Qwen2, checked
against a plain HF model with materialised logits (tests/_trainer_reference.py)."""
import dataclasses
import logging
import math
import random

import pytest
import torch
from _trainer_reference import (loss_and_grads, per_sample_norms, plain_model, random_samples,
                                response_logps)

from gvm.ds_config import use_torch_adam
from gvm.toy import build_tiny
from gvm.engines.weight_sync import iter_gathered_weights
from gvm.trainer import PolicyTrainer, Sample, TrainerConfig

log = logging.getLogger(__name__)
TINY = dict(hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, module_seed):
    return build_tiny(tmp_path_factory.mktemp("tiny"), seed=module_seed, **TINY)


@pytest.fixture(scope="module")
def trainer(tiny_dir):
    # A small token budget forces several micro-batches per step (the loss rescaling is tested).
    return PolicyTrainer(TrainerConfig(model_path=str(tiny_dir), dtype="float32", torch_adam=True, lr=1e-3,
                                       grad_clip=0.0, micro_batch_tokens=40, grad_norm_params="both", clip_low=0.2,
                                       clip_high=0.28))


def current_weights(trainer: PolicyTrainer) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in iter_gathered_weights(trainer.engine.module)}


def set_loss_options(trainer: PolicyTrainer, **changes) -> None:
    """Loss knobs are read at every step, so they can change between steps."""
    trainer.config = dataclasses.replace(trainer.config, **changes)


# ------------------------------------------------------------------------------------------------
# configuration errors (no engine needed)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, field", [
    (dict(model_path=""), "model_path"),
    (dict(zero_stage=4), "zero_stage"),
    (dict(lr=0.0), "lr"),
    (dict(lr_schedule="cosine", total_steps=0), "total_steps"),
    (dict(lr_schedule="linear"), "lr_schedule"),
    (dict(grad_norm_params="all"), "grad_norm_params"),
    (dict(loss_agg="mean"), "loss_agg"),
    (dict(algorithm="ppo"), "algorithm"),
    (dict(micro_batch_tokens=0), "micro_batch_tokens"),
    (dict(dual_clip=1.0), "dual_clip"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_config_values_name_the_field(changes, field):
    args = dict(model_path="/some/model")
    args.update(changes)
    with pytest.raises(ValueError, match=f"TrainerConfig.{field}="):
        TrainerConfig(**args)


def test_model_path_without_config_is_rejected(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="TrainerConfig.model_path=.*config.json"):
        PolicyTrainer(TrainerConfig(model_path=str(tmp_path)))


# ------------------------------------------------------------------------------------------------
# losses and gradients equal the plain implementation
# ------------------------------------------------------------------------------------------------

def assert_grads_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for name in want:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind, agg", [("raft", "token-mean"), ("raft++", "token-mean"),
                                       ("grpo", "seq-mean-token-mean"), ("raft++", "seq-mean-token-sum")])
def test_loss_and_gradients_match_plain_pytorch(trainer, tiny_dir, seed, kind, agg):
    rng = random.Random(seed + 31 * len(kind) + len(agg))
    kl_coef = 0.1 if kind == "grpo" else 0.0
    set_loss_options(trainer, loss_agg=agg, kl_coef=kl_coef)
    model = plain_model(tiny_dir, current_weights(trainer))
    samples = random_samples(rng, 6, vocab_high=90)
    with torch.no_grad():
        logps = [response_logps(model, s) for s in samples]
    if kind != "raft":
        # old policy = current one moved by noise that pushes some ratios outside the clip range
        samples = [dataclasses.replace(s, old_logp=(lp + 0.3 * torch.randn(lp.shape)).tolist())
                   for s, lp in zip(samples, logps)]
    if kl_coef:
        samples = [dataclasses.replace(s, ref_logp=(lp + 0.2 * torch.randn(lp.shape)).tolist())
                   for s, lp in zip(samples, logps)]
    want_loss, want_grads = loss_and_grads(model, samples, kind=kind, agg=agg, clip_low=0.2, clip_high=0.28,
                                           kl_coef=kl_coef)
    got: dict = {}
    metrics = trainer.train_step(samples, kind, on_gradients=lambda t: got.update(t.full_gradients()))
    assert metrics["loss"] == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
    assert_grads_close(got, want_grads)
    if kind != "raft":
        assert 0 < metrics["clip_frac"] < 1  # the clipped branch was exercised
    set_loss_options(trainer, loss_agg="token-mean", kl_coef=0.0)


# ------------------------------------------------------------------------------------------------
# per-sample gradient norms from the training backward
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, agg", [("raft", "token-mean"), ("raft++", "seq-mean-token-mean")])
def test_training_step_norms_equal_per_sample_backward(trainer, tiny_dir, seed, kind, agg):
    rng = random.Random(seed + 7)
    set_loss_options(trainer, loss_agg=agg)
    samples = random_samples(rng, 7, advantages=[1.0, 0.5, 2.0, 1.0, 0.0, -1.5, 1.0])
    want = per_sample_norms(plain_model(tiny_dir, current_weights(trainer)), samples)
    # raft++ without old_logp: the trainer computes them, so the ratio is 1 and nothing is clipped
    metrics = trainer.train_step(samples, kind)
    for s in samples:
        if s.advantage == 0.0:  # no gradient: reported as NaN, not as 0
            assert math.isnan(metrics["grad_norms"][s.sample_id])
            assert metrics["grad_norms_exact"][s.sample_id] is False
            continue
        e, h = want[s.sample_id]
        assert metrics["grad_norms_embed"][s.sample_id] == pytest.approx(e, rel=1e-4)
        assert metrics["grad_norms_head"][s.sample_id] == pytest.approx(h, rel=1e-4)
        assert metrics["grad_norms"][s.sample_id] == pytest.approx(math.hypot(e, h), rel=1e-4)
        assert metrics["grad_norms_exact"][s.sample_id] is True
    set_loss_options(trainer, loss_agg="token-mean")


def test_statistics_only_pass_matches_and_leaves_weights(trainer, tiny_dir, seed):
    rng = random.Random(seed + 11)
    samples = random_samples(rng, 5)
    before = current_weights(trainer)
    want = per_sample_norms(plain_model(tiny_dir, before), samples)
    got = trainer.grad_norms(samples)
    for s in samples:
        assert got[s.sample_id] == pytest.approx(math.hypot(*want[s.sample_id]), rel=1e-4)
    after = current_weights(trainer)
    assert all(torch.equal(before[n], after[n]) for n in before)
    # and no gradient leaked into the next step: it still matches the plain implementation
    got_grads: dict = {}
    trainer.train_step(samples, "raft", on_gradients=lambda t: got_grads.update(t.full_gradients()))
    _, want_grads = loss_and_grads(plain_model(tiny_dir, before), samples, kind="raft", agg="token-mean",
                                   clip_low=0.2, clip_high=0.28, kl_coef=0.0)
    assert_grads_close(got_grads, want_grads)


def test_later_mini_batches_report_inexact_norms(trainer, seed):
    """Two optimizer steps in one call with fixed old_logp: the second mini-batch has ratios != 1."""
    rng = random.Random(seed + 13)
    set_loss_options(trainer, optimizer_steps_per_call=2)
    samples = random_samples(rng, 6, advantages=[1.0] * 6)
    olds = trainer.logprobs(samples)
    samples = [dataclasses.replace(s, old_logp=o) for s, o in zip(samples, olds)]
    step = trainer.step
    metrics = trainer.train_step(samples, "raft++")
    assert trainer.step == step + 2
    exact = [metrics["grad_norms_exact"][s.sample_id] for s in samples]
    assert exact[:3] == [True] * 3 and exact[3:] == [False] * 3
    assert all(math.isfinite(metrics["grad_norms"][s.sample_id]) for s in samples)
    set_loss_options(trainer, optimizer_steps_per_call=1)


def test_logprobs_equal_plain_model(trainer, tiny_dir, seed):
    samples = random_samples(random.Random(seed + 17), 5, vocab_high=90)
    model = plain_model(tiny_dir, current_weights(trainer))
    got = trainer.logprobs(samples)
    with torch.no_grad():
        for s, lp in zip(samples, got):
            torch.testing.assert_close(lp, response_logps(model, s), rtol=1e-5, atol=1e-5)


def test_grpo_reference_model_is_frozen_initial_policy(trainer, tiny_dir, seed):
    samples = random_samples(random.Random(seed + 19), 4, vocab_high=90)
    initial = plain_model(tiny_dir)
    set_loss_options(trainer, kl_coef=0.05)
    metrics = trainer.train_step(samples, "grpo")  # ref_logp filled from the reference engine
    assert metrics["kl_ref"] > 0  # the policy has moved away from the reference by now
    ref = trainer.ref_logprobs(samples)
    with torch.no_grad():
        for s, lp in zip(samples, ref):
            torch.testing.assert_close(lp, response_logps(initial, s), rtol=1e-5, atol=1e-5)
    set_loss_options(trainer, kl_coef=0.0)


# ------------------------------------------------------------------------------------------------
# training makes progress, checkpoints resume exactly
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_config(tiny_dir):
    return TrainerConfig(model_path=str(tiny_dir), dtype="float32", lr=3e-3, warmup_steps=2, lr_schedule="cosine",
                         total_steps=20, min_lr_ratio=0.1, weight_decay=0.01, grad_norm_params="embed",
                         micro_batch_tokens=64)


@pytest.fixture(scope="module")
def sft_trainer(sft_config):
    return PolicyTrainer(sft_config)


def test_loss_decreases_on_a_fixed_batch(sft_trainer, seed, caplog):
    samples = random_samples(random.Random(seed + 23), 6, advantages=[1.0] * 6)
    losses = []
    with caplog.at_level(logging.INFO, logger="gvm.trainer"):
        for _ in range(4):
            sft_trainer.offload()  # as around generation; the step reloads
            losses.append(sft_trainer.train_step(samples, "raft")["loss"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # torch's AdamW (the CPU default) cannot be offloaded by DeepSpeed: said once, not raised
    notes = sum("offload()" in r.getMessage() for r in caplog.records)
    assert notes == (1 if use_torch_adam(sft_trainer.config) else 0)


def test_checkpoint_resumes_exactly(sft_trainer, sft_config, tmp_path, seed):
    samples = random_samples(random.Random(seed + 29), 5)
    sft_trainer.train_step(samples, "raft++")
    sft_trainer.save_checkpoint(tmp_path)
    saved_step = sft_trainer.step
    draw = torch.rand(4)
    expected = sft_trainer.train_step(samples, "raft++")
    expected_weights = current_weights(sft_trainer)

    resumed = PolicyTrainer(sft_config)
    resumed.load_checkpoint(tmp_path)
    assert resumed.step == saved_step
    assert torch.equal(torch.rand(4), draw)  # RNG streams restored
    got = resumed.train_step(samples, "raft++")
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert got["lr"] == pytest.approx(expected["lr"], rel=1e-9)
    for name, tensor in current_weights(resumed).items():
        torch.testing.assert_close(tensor, expected_weights[name], rtol=0, atol=1e-7, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# tied embeddings, gradient checkpointing, length-grouped attention, saving for transformers
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tied_trainer(tmp_path_factory, module_seed):
    path = build_tiny(tmp_path_factory.mktemp("tied"), seed=module_seed + 1, tie_word_embeddings=True, **TINY)
    return PolicyTrainer(TrainerConfig(model_path=str(path), dtype="float32", torch_adam=True, lr=1e-3,
                                       grad_norm_params="both",
                                       attention="grouped", gradient_checkpointing=True, micro_batch_tokens=48)), path


def test_tied_model_norm_parts_with_checkpointing_and_grouped_attention(tied_trainer, seed):
    trainer, path = tied_trainer
    assert trainer.tied
    samples = random_samples(random.Random(seed + 31), 5, advantages=[1.0, 2.0, 1.0, 0.5, 1.0])
    want = per_sample_norms(plain_model(path, current_weights(trainer)), samples)
    metrics = trainer.train_step(samples, "raft")
    for s in samples:
        e, h = want[s.sample_id]
        assert metrics["grad_norms_embed"][s.sample_id] == pytest.approx(e, rel=1e-4)
        assert metrics["grad_norms_head"][s.sample_id] == pytest.approx(h, rel=1e-4)


def test_save_hf_loads_in_transformers_with_identical_outputs(tied_trainer, tmp_path, seed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, _ = tied_trainer
    trainer.train_step(random_samples(random.Random(seed + 37), 3), "raft")  # weights differ from the init
    out = trainer.save_hf(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert loaded.config.tie_word_embeddings
    weights = current_weights(trainer)
    state = loaded.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), name
    samples = random_samples(random.Random(seed + 41), 3, vocab_high=90)
    ours = trainer.logprobs(samples)
    with torch.no_grad():
        for s, lp in zip(samples, ours):
            torch.testing.assert_close(response_logps(loaded.eval(), s), lp, rtol=1e-5, atol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer("1+1=2")["input_ids"]) == "1+1=2"


@pytest.mark.parametrize("stage", [0, 2])
def test_lower_zero_stages_match_plain_pytorch(tiny_dir, seed, stage):
    trainer = PolicyTrainer(TrainerConfig(model_path=str(tiny_dir), dtype="float32", torch_adam=True, zero_stage=stage,
                                          lr=1e-3,
                                          micro_batch_tokens=40, grad_norm_params="both"))
    samples = random_samples(random.Random(seed + 43 + stage), 5)
    model = plain_model(tiny_dir)
    want_loss, want_grads = loss_and_grads(model, samples, kind="raft", agg="token-mean", clip_low=0.2,
                                           clip_high=0.2, kl_coef=0.0)
    got: dict = {}
    metrics = trainer.train_step(samples, "raft", on_gradients=lambda t: got.update(t.full_gradients()))
    assert metrics["loss"] == pytest.approx(want_loss, rel=1e-5)
    assert_grads_close(got, want_grads)
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in want_grads.values()))
    assert metrics["grad_norm"] == pytest.approx(total, rel=1e-4)
    want = per_sample_norms(plain_model(tiny_dir, current_weights(trainer)), samples)
    got_norms = trainer.grad_norms(samples)
    for s in samples:
        assert got_norms[s.sample_id] == pytest.approx(math.hypot(*want[s.sample_id]), rel=1e-4)


VLLM_SCRIPT = """
import json, sys
from gvm.engines.base import SamplingConfig
from gvm.engines.factory import resolve_engine
folder, prompts, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
engine = resolve_engine("vllm", {"dtype": "float32", "cpu_kv_cache_bytes": 32 << 20}, {}, seed=seed).build(folder)
rows = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_tokens=12, seed=seed))
print("SAMPLES", json.dumps([[(c.token_ids, c.logprobs) for c in row] for row in rows]))
engine.close()
"""


def test_save_hf_loads_in_vllm_with_equal_log_probs(tied_trainer, tmp_path, seed):
    """vLLM (in a subprocess: its own process group and memory), built by the project's engine
    factory, samples from the saved folder; its log-probs of what it sampled equal ours."""
    import json
    import subprocess
    import sys

    pytest.importorskip("vllm")
    trainer, _ = tied_trainer
    out = trainer.save_hf(tmp_path / "hf")
    prompts = [list(s.prompt_ids) for s in random_samples(random.Random(seed + 47), 3, vocab_high=90)]
    proc = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(out), json.dumps(prompts), str(seed)],
                          capture_output=True, text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("SAMPLES ")]
    assert proc.returncode == 0 and line, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = json.loads(line[0][len("SAMPLES "):])
    samples = [Sample(sample_id=f"{i}/{j}", prompt_ids=prompt, response_ids=tokens, advantage=1.0)
               for i, (prompt, row) in enumerate(zip(prompts, rows)) for j, (tokens, _) in enumerate(row)]
    theirs = [logprobs for row in rows for _, logprobs in row]
    assert all(len(s.response_ids) > 0 for s in samples)
    for ours, ref in zip(trainer.logprobs(samples), theirs):
        torch.testing.assert_close(ours, torch.tensor(ref, dtype=torch.float32), rtol=1e-5, atol=1e-5)
