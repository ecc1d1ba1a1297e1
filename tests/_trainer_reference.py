"""Plain-PyTorch oracles for the trainer tests: a plain HF model, one sequence at a time,
materialised logits, log_softmax + gather, and the loss formulas written out from GVM.md.
Shared by tests/test_trainer*.py and the multi-rank worker (tests/_trainer_worker.py)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from gvm.packing import Sample


def plain_model(model_dir, weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The HF model from `model_dir` in fp32 eager attention, optionally with other weights."""
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= ({"lm_head.weight"} if config.tie_word_embeddings else set()), missing
        if config.tie_word_embeddings:
            model.tie_weights()
    return model.train()


def response_logps(model, sample: Sample, embed=None, head=None, temperature: float = 1.0) -> torch.Tensor:
    """log p of the response tokens from materialised logits; `embed` / `head` override the
    embedding table and the head matrix (separate leaves split a tied matrix's gradient)."""
    ids = torch.tensor([list(sample.prompt_ids) + list(sample.response_ids)])
    p = len(sample.prompt_ids)
    if embed is None and head is None:
        logits = model(input_ids=ids, use_cache=False).logits[0]
    else:
        embeds = F.embedding(ids, embed if embed is not None else model.model.embed_tokens.weight)
        hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state[0]
        logits = hidden @ (head if head is not None else model.lm_head.weight).T
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp[p - 1:-1].gather(1, ids[0, p:, None]).squeeze(1)


def token_advantages(sample: Sample) -> torch.Tensor:
    r = len(sample.response_ids)
    if isinstance(sample.advantage, (int, float)):
        return torch.full((r,), float(sample.advantage))
    return torch.tensor(sample.advantage, dtype=torch.float32)


def reference_loss(logps: list[torch.Tensor], samples: list[Sample], *, kind: str, agg: str, clip_low: float,
                   clip_high: float, kl_coef: float) -> torch.Tensor:
    """RAFT: -A logp; RAFT++/GRPO: -min(s A, clip(s) A) with s = exp(logp - old); plus
    kl_coef * (exp(ref - logp) - (ref - logp) - 1); then the aggregation over all samples."""
    terms = []
    for logp, s in zip(logps, samples):
        adv = token_advantages(s)
        if kind == "raft":
            term = -adv * logp
        else:
            ratio = torch.exp(logp - torch.as_tensor(s.old_logp, dtype=torch.float32))
            term = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_low, 1 + clip_high) * adv)
        if kl_coef > 0:
            diff = torch.as_tensor(s.ref_logp, dtype=torch.float32) - logp
            term = term + kl_coef * (torch.exp(diff) - diff - 1)
        terms.append(term)
    if agg == "token-mean":
        return torch.cat(terms).sum() / sum(t.numel() for t in terms)
    if agg == "seq-mean-token-sum":
        return torch.stack([t.sum() for t in terms]).mean()
    return torch.stack([t.mean() for t in terms]).mean()


def loss_and_grads(model, samples: list[Sample], **loss_kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = reference_loss([response_logps(model, s) for s in samples], samples, **loss_kwargs)
    loss.backward()
    return float(loss), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def per_sample_norms(model, samples: list[Sample]) -> dict:
    """The authors' way: one backward per sample of -sum(response logp); ||grad|| of the embedding
    table and of the head, as separate leaves (a tied matrix's two parts)."""
    out = {}
    for s in samples:
        embed = model.model.embed_tokens.weight.detach().clone().requires_grad_(True)
        head = model.lm_head.weight.detach().clone().requires_grad_(True)
        loss = -response_logps(model, s, embed=embed, head=head).sum()
        g_embed, g_head = torch.autograd.grad(loss, [embed, head])
        out[s.sample_id] = (float(g_embed.norm()), float(g_head.norm()))
    return out


def random_samples(rng: random.Random, count: int, *, vocab_low: int = 5, vocab_high: int = 20,
                   advantages=None) -> list[Sample]:
    """Samples of different lengths drawn from a small id range, so tokens repeat."""
    out = []
    for i in range(count):
        p, r = rng.randint(2, 7), rng.randint(3, 13)
        adv = advantages[i] if advantages is not None else rng.choice([1.0, 0.5, 2.0, -1.0])
        out.append(Sample(i, [rng.randint(vocab_low, vocab_high) for _ in range(p)],
                          [rng.randint(vocab_low, vocab_high) for _ in range(r)], adv))
    return out
