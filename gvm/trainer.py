"""The policy trainer: a Hugging Face causal LM in a DeepSpeed engine (ZeRO-3 by default), trained
with RAFT / RAFT++ / GRPO on packed batches, with GVM's per-sample gradient norms taken from the
same backward.

One `train_step(samples, algorithm)` call = `optimizer_steps_per_call` optimizer steps (default 1;
with `mini_batch_samples`, one per that many samples):
the samples are split in order into that many mini-batches; each is dealt to the ranks (longest
first onto the lightest rank), cut into micro-batches of at most `micro_batch_tokens` tokens, run
forward/backward with gradient accumulation, then one AdamW step (warm-up + cosine/constant
schedule, global grad-norm clipping). The loss of every micro-batch is rescaled so that the
accumulated gradient equals the gradient of the *global* aggregation (token-mean over all the
mini-batch's response tokens, or the mean over all its sequences) whatever the split over ranks
and micro-batches: one rank and many ranks give the same update. Under ZeRO-3 every forward and
backward is collective, so ranks with fewer micro-batches run zero-loss padding passes, and with
"grouped" attention all ranks make the same number of body calls. The loss settings of
`self.config` (algorithm knobs, loss_agg, kl_coef, grad_norm_params, optimizer_steps_per_call) are
read at every step: `trainer.config = dataclasses.replace(trainer.config, kl_coef=...)` changes
them between steps; model, ZeRO and optimizer settings are fixed at construction.

Per-sample gradient norms (GVM's G_i, the norm of the gradient of the summed log-likelihood
log pi(y|x) of the sequence). The backward of the training loss already holds, per sequence b,
  - head:  ||dW_b||^2, written by the fused LM-head kernel (sq_grad_norms_out), and
  - embed: ||dE_b||^2, from the gradient reaching the embedding output (a tensor hook) through
           gvm_kernels.embedding_norms (repeated tokens summed before squaring).
Attention never crosses sequences, so these are sequence b's own parts of the loss gradient.
Sequence b's part is sum_t g_t grad logp_t with g_t = dL/dlogp_t. We compute the *nominal*
coefficient c_b = dL/dlogp_t at ratio 1 without the KL and entropy terms (a tiny autograd pass over
policy_loss at logp = old_logp, with this micro-batch's scale: e.g. token-mean with advantage A over
M response tokens in the mini-batch gives c_b = -A / M) and report
    G_b = ||part of b|| / |c_b|.
This is exact whenever every response token of b has g_t = c_b: always in RAFT (per-sequence
advantage); in RAFT++ / GRPO at the first mini-batch of an iteration (old_logp from the same
weights, ratio 1, nothing clipped) with kl_coef = 0 and entropy_coef = 0. Otherwise (later
mini-batches: ratios != 1, clipped tokens get g_t = 0; KL / entropy terms) the value is the norm of
the ratio-weighted, clip-masked log-likelihood gradient sum_t (g_t / c_b) grad logp_t; the step's
`grad_norms_exact` says per sample whether the captured g_t matched c_b (relative 1e-3) - the
trainer checks this with a hook on the log-probs. A sample with advantage 0 (rejected in RAFT,
all-equal groups in GRPO) gets no gradient: its G is NaN; `grad_norms(samples)` computes it with a
statistics-only pass. With tied embeddings (lm_head.weight is embed_tokens.weight) "embed" and
"head" are the two separate parts of the shared matrix's gradient; "both" reports
sqrt(embed^2 + head^2) without the cross term 2<dE_b, dW_b> (logged at start).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gvm_kernels.embedding_norms import embedding_sq_grad_norms
from gvm_kernels.policy_loss import KINDS, policy_loss

from . import distributed as gdist
from .ds_config import build_ds_config, lr_scheduler_factory, resolve_dtype, use_torch_adam
from .packing import PackedBatch, Sample, pack, plan_micro_batches
from .policy_model import (Capture, PackedPolicy, count_body_calls, is_tied, load_causal_lm, maybe_apply_liger,
                           resolve_attention, use_fused_head)
from .trainer_config import TrainerConfig

__all__ = ["PolicyTrainer", "TrainerConfig", "Sample", "PackedBatch"]

log = logging.getLogger(__name__)

EXACT_RTOL = 1e-3  # relative agreement of g_t with c_b below which a rescaled norm counts as exact
RNG_FILE = "rng_state_rank{rank}.pt"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _split_in_order(items: list, parts: int) -> list[list]:
    """`parts` contiguous chunks whose sizes differ by at most one (empty chunks dropped)."""
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            chunks.append(items[start:end])
        start = end
    return chunks


class PolicyTrainer:
    """RAFT / RAFT++ / GRPO trainer over a DeepSpeed engine (see the module docstring).

    Public API: train_step, logprobs, ref_logprobs, grad_norms, save_hf, save_checkpoint,
    load_checkpoint, full_gradients, offload, reload (weights go to an engine through
    gvm.engines.weight_sync). Every rank must call each method with the
    same arguments (the full list of samples): the trainer splits the work over ranks itself.
    """

    def __init__(self, config: TrainerConfig, tokenizer: Any = None):
        self.config = config
        gdist.init_distributed()
        _seed_everything(config.seed)
        self.dtype = resolve_dtype(config.dtype)
        self.rank, self.world_size = gdist.rank(), gdist.world_size()
        self.engine, self.hf_model, self.tied = self._build_engine(config.model_path, "model_path", with_optimizer=True)
        self.device = self.engine.device
        self.ref_engine = None
        if config.algorithm == "grpo" and config.kl_coef > 0:
            self._reference()  # built up front: every rank must build it at the same time
        self.tokenizer = tokenizer if tokenizer is not None else self._load_tokenizer(config.model_path)
        self.step = 0  # optimizer steps taken
        self._offload_note_logged = False
        self._offloaded = False      # between offload() and reload()
        self._states_moved = False   # offload() really moved the states (DeepSpeed offload_states)
        if self.tied and config.grad_norm_params == "both":
            log.info("tied embeddings: grad_norm_params='both' reports sqrt(embed^2 + head^2) of the shared matrix's "
                     "two parts, without the cross term 2<dE_b, dW_b>")
        if self.rank == 0:
            log.info("PolicyTrainer: world size %d, dtype %s, config %s", self.world_size, self.dtype, config.to_dict())

    # ------------------------------------------------------------------------------------------
    # set-up
    # ------------------------------------------------------------------------------------------

    def _build_engine(self, path: str, field: str, *, with_optimizer: bool):
        import deepspeed

        cfg = self.config
        hf_model = load_causal_lm(path, self.dtype, field)
        maybe_apply_liger(hf_model, cfg.use_liger)
        use_fused_head(hf_model, cfg.temperature)
        if cfg.gradient_checkpointing and with_optimizer:
            # Non-reentrant: works with torch.autograd.grad (statistics-only pass) and ZeRO-3.
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy = PackedPolicy(hf_model, resolve_attention(cfg.attention, hf_model.config.hidden_size))
        if with_optimizer:
            engine, *_ = deepspeed.initialize(
                model=policy, model_parameters=[p for p in policy.parameters() if p.requires_grad],
                config=build_ds_config(cfg), lr_scheduler=lr_scheduler_factory(cfg))
            engine.train()
        else:
            policy.requires_grad_(False)
            engine, *_ = deepspeed.initialize(model=policy, config=build_ds_config(cfg, with_optimizer=False))
            engine.eval()
        return engine, hf_model, is_tied(hf_model)

    def _reference(self):
        if self.ref_engine is None:
            path = self.config.reference_model_path or self.config.model_path
            field = "reference_model_path" if self.config.reference_model_path else "model_path"
            self.ref_engine, _, _ = self._build_engine(path, field, with_optimizer=False)
        return self.ref_engine

    @staticmethod
    def _load_tokenizer(path: str):
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a weights-only folder: save_hf then writes no tokenizer

    # ------------------------------------------------------------------------------------------
    # forward passes
    # ------------------------------------------------------------------------------------------

    def _forward(self, engine, batch: PackedBatch, *, head_norms: torch.Tensor | None = None,
                 entropy: bool = False, capture: Capture | None = None, num_calls: int | None = None):
        return engine(batch.input_ids, batch.position_ids, batch.targets, batch.cu_seqlens, batch.seq_bounds,
                      head_norms, entropy, capture, num_calls)

    def _my_micro_batches(self, samples: Sequence[Sample]) -> list[tuple[list[int], int]]:
        """This rank's micro-batches (sample indices) with the number of body calls each must make
        so that all ranks make the same ("grouped" attention under ZeRO-3). Every rank plans all
        ranks' micro-batches, so no communication is needed."""
        lengths = [s.num_tokens for s in samples]
        plan = plan_micro_batches(lengths, self.world_size, self.config.micro_batch_tokens)
        calls = [max(count_body_calls([lengths[i] for i in ranks[m]]) for ranks in plan)
                 for m in range(len(plan[0]))]
        return list(zip(plan[self.rank], calls))

    def _logprobs_with(self, engine, samples: Sequence[Sample]) -> list[torch.Tensor]:
        self.reload()
        samples = list(samples)
        mine: dict[int, torch.Tensor] = {}
        was_training = engine.training
        engine.eval()
        with torch.no_grad():
            for idx, calls in self._my_micro_batches(samples):
                batch = pack([samples[i] for i in idx]).to(self.device)
                logp = self._forward(engine, batch, num_calls=calls).logp.float().cpu()
                for i, values in zip(idx, batch.split_responses(logp)):
                    mine[i] = values.clone()
        if was_training:
            engine.train()
        merged: dict[int, torch.Tensor] = {}
        for part in gdist.all_gather_objects(mine):
            merged.update(part)
        return [merged[i] for i in range(len(samples))]

    def logprobs(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Per-token log pi_theta of each sample's response tokens (no grad): one float32 CPU
        tensor [R_i] per sample, in input order, on every rank (old-policy log-probs)."""
        return self._logprobs_with(self.engine, samples)

    def ref_logprobs(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Like `logprobs`, under the frozen reference model (GRPO's KL term)."""
        return self._logprobs_with(self._reference(), samples)

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------

    def _norm_parts(self) -> tuple[bool, bool]:
        which = self.config.grad_norm_params
        return which in ("embed", "both"), which in ("head", "both")

    def _loss_options(self, kind: str) -> dict:
        cfg = self.config
        return dict(kind=kind, clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
                    agg=cfg.loss_agg)

    def _fill_missing_logps(self, samples: list[Sample], kind: str) -> list[Sample]:
        """old_logp (RAFT++/GRPO) and ref_logp (KL > 0) computed here when a sample lacks them."""
        need_old = kind != "raft" and any(s.old_logp is None for s in samples)
        need_ref = self.config.kl_coef > 0 and any(s.ref_logp is None for s in samples)
        if need_old:
            olds = self.logprobs(samples)
            samples = [s if s.old_logp is not None else dataclasses.replace(s, old_logp=o)
                       for s, o in zip(samples, olds)]
        if need_ref:
            refs = self.ref_logprobs(samples)
            samples = [s if s.ref_logp is not None else dataclasses.replace(s, ref_logp=r)
                       for s, r in zip(samples, refs)]
        return samples

    def train_step(self, samples: Sequence[Sample], algorithm: str | None = None,
                   on_gradients: Callable[["PolicyTrainer"], None] | None = None) -> dict:
        """Train on `samples` (the same full list on every rank) with "raft", "raft++" or "grpo"
        (default: config.algorithm); advantages come with the samples (GRPO: group_advantages).

        Returns metrics: loss, policy-loss metrics (clip_frac, ratio_mean, ...), grad_norm (global,
        before clipping), lr, counts, time_s, norm_stats_s (seconds of per-sample statistics work
        outside the backward: embedding norms, rescaling, gathering), and per sample (keyed by
        sample_id): grad_norms (G,
        NaN without gradient), grad_norms_embed / grad_norms_head (the parts measured) and
        grad_norms_exact (see the module docstring). Values of the last optimizer step for
        step-level scalars when optimizer_steps_per_call > 1; per-sample dicts cover all samples.
        `on_gradients(trainer)` runs on every rank after the gradients of each optimizer step are
        accumulated and before the update (e.g. to read `full_gradients()`).
        """
        kind = algorithm or self.config.algorithm
        if kind not in KINDS:
            raise ValueError(f"algorithm must be one of the loss kinds {KINDS}, got {kind!r}")
        samples = list(samples)
        if not samples:
            raise ValueError("train_step needs at least one sample")
        ids = [s.sample_id for s in samples]
        if len(set(ids)) != len(ids):
            raise ValueError("sample_id values must be unique within a train_step call")
        if kind == "grpo" and self.config.kl_coef > 0:
            self._reference()
        start = time.perf_counter()
        self.reload()
        samples = self._fill_missing_logps(samples, kind)
        metrics: dict = {"grad_norms": {}, "grad_norms_embed": {}, "grad_norms_head": {}, "grad_norms_exact": {}}
        for mini in _split_in_order(samples, self.config.mini_batches(len(samples))):
            step_metrics = self._optimizer_step(mini, kind, on_gradients)
            for key in ("grad_norms", "grad_norms_embed", "grad_norms_head", "grad_norms_exact"):
                metrics[key].update(step_metrics.pop(key))
            metrics.update(step_metrics)
        metrics["time_s"] = time.perf_counter() - start
        return metrics

    def _optimizer_step(self, samples: list[Sample], kind: str, on_gradients=None) -> dict:
        cfg = self.config
        want_embed, want_head = self._norm_parts()
        token_mean = cfg.loss_agg == "token-mean"
        # The global normaliser of this mini-batch: all its response tokens, or all its sequences.
        total = sum(len(s.response_ids) for s in samples) if token_mean else len(samples)
        plan = self._my_micro_batches(samples)
        sums = torch.zeros(8, dtype=torch.float64)  # loss, tokens, clip, dual, ratio, approx_kl, kl_ref, entropy
        per_sample: list[tuple] = []
        norm_seconds = 0.0  # statistics work outside the backward (the head norms ride inside it)
        self.engine.train()
        for m, (idx, calls) in enumerate(plan):
            batch = pack([samples[i] for i in idx]).to(self.device)
            local = int(batch.response_mask.sum()) if token_mean else batch.num_seqs
            # token-mean of policy_loss divides by this micro-batch's count: rescale to the global
            # one; times world size because DeepSpeed averages gradients over ranks.
            scale = local / total * self.world_size
            self.engine.set_gradient_accumulation_boundary(m == len(plan) - 1)
            nonempty = batch.num_seqs > 0
            capture = Capture(want_embed_grad=want_embed and nonempty)
            head_norms = (torch.zeros(max(batch.num_seqs, 1), dtype=torch.float32, device=self.device)
                          if want_head else None)
            out = self._forward(self.engine, batch, head_norms=head_norms, entropy=cfg.entropy_coef > 0,
                                capture=capture, num_calls=calls)
            upstream: list[torch.Tensor] = []
            if nonempty and (want_embed or want_head):
                out.logp.register_hook(lambda g: upstream.append(g.detach()))
            if nonempty:
                loss, loss_metrics = policy_loss(
                    out.logp, batch.old_logp, batch.advantages, batch.response_mask, **self._loss_options(kind),
                    ref_logp=batch.ref_logp, kl_coef=cfg.kl_coef, entropy=out.entropy,
                    entropy_coef=cfg.entropy_coef, cu_seqlens=batch.cu_seqlens)
            else:  # padding micro-batch: a zero loss whose backward runs ZeRO-3's collectives
                loss, scale = out.logp.sum() * 0.0, 0.0
            self.engine.backward(loss * scale, scale_wrt_gas=False)
            if nonempty:
                n_tok = float(loss_metrics["num_tokens"])
                weighted = [float(loss_metrics.get(k, 0.0)) * n_tok for k in
                            ("clip_frac", "dual_clip_frac", "ratio_mean", "approx_kl", "kl_ref", "entropy")]
                sums += torch.tensor([float(loss.detach()) * local / total, n_tok, *weighted], dtype=torch.float64)
            if nonempty and (want_embed or want_head):
                t0 = time.perf_counter()
                per_sample += self._sample_norms(batch, kind, scale, out.logp.detach(), upstream, capture,
                                                 head_norms)
                norm_seconds += time.perf_counter() - t0
        if on_gradients is not None:
            on_gradients(self)
        # Below ZeRO DeepSpeed does not report the global norm: the whole gradients are at hand.
        plain_norm = self._plain_grad_norm() if self.config.zero_stage == 0 else None
        self.engine.step()
        self.step += 1
        gdist.all_reduce_sum(sums)
        result = self._step_metrics(sums, kind, len(samples), plain_norm)
        t0 = time.perf_counter()
        result.update(self._gather_norms(per_sample))
        result["norm_stats_s"] = norm_seconds + time.perf_counter() - t0
        return result

    def _nominal_coefficients(self, batch: PackedBatch, kind: str, scale: float, logp: torch.Tensor) -> torch.Tensor:
        """dL/dlogp_t at ratio 1 without KL / entropy, for this micro-batch's scaled loss ([N], float64)."""
        anchor = batch.old_logp if batch.old_logp is not None else logp
        x = anchor.detach().double().requires_grad_(True)
        old = None if batch.old_logp is None else batch.old_logp.double()
        loss, _ = policy_loss(x, old, batch.advantages.double(), batch.response_mask, **self._loss_options(kind),
                              cu_seqlens=batch.cu_seqlens)
        (grad,) = torch.autograd.grad(loss * scale, x)
        return grad

    def _sample_norms(self, batch: PackedBatch, kind: str, scale: float, logp: torch.Tensor,
                      upstream: list[torch.Tensor], capture: Capture, head_norms: torch.Tensor | None) -> list[tuple]:
        """(sample_id, G, G_embed, G_head, exact) for each sequence of the micro-batch."""
        nominal = batch.split_responses(self._nominal_coefficients(batch, kind, scale, logp).cpu())
        actual = batch.split_responses(upstream[0].double().cpu()) if upstream else [None] * batch.num_seqs
        sq_embed = sq_head = None
        if capture.embed_grad is not None:
            sq_embed = embedding_sq_grad_norms(batch.input_ids, capture.embed_grad.float(), batch.cu_seqlens).cpu()
        if head_norms is not None:
            sq_head = head_norms.cpu()
        rows = []
        for b, sample_id in enumerate(batch.sample_ids):
            c_tok = nominal[b]
            coef = float(c_tok.mean().abs())
            constant = bool(((c_tok - c_tok.mean()).abs() <= EXACT_RTOL * coef).all())
            exact = (coef > 0 and constant and actual[b] is not None and self.config.entropy_coef == 0
                     and bool(((actual[b] - c_tok).abs() <= EXACT_RTOL * coef).all()))
            g_embed = math.sqrt(float(sq_embed[b])) / coef if sq_embed is not None and coef > 0 else None
            g_head = math.sqrt(float(sq_head[b])) / coef if sq_head is not None and coef > 0 else None
            if coef > 0:
                g = math.sqrt(sum(x * x for x in (g_embed, g_head) if x is not None))
            else:
                g, g_embed, g_head = math.nan, (math.nan if sq_embed is not None else None), (
                    math.nan if sq_head is not None else None)
            rows.append((sample_id, g, g_embed, g_head, exact))
        return rows

    def _gather_norms(self, rows: list[tuple]) -> dict:
        out: dict = {"grad_norms": {}, "grad_norms_embed": {}, "grad_norms_head": {}, "grad_norms_exact": {}}
        for part in gdist.all_gather_objects(rows):
            for sample_id, g, g_embed, g_head, exact in part:
                out["grad_norms"][sample_id] = g
                if g_embed is not None:
                    out["grad_norms_embed"][sample_id] = g_embed
                if g_head is not None:
                    out["grad_norms_head"][sample_id] = g_head
                out["grad_norms_exact"][sample_id] = exact
        return out

    def _plain_grad_norm(self) -> float:
        squares = [p.grad.float().pow(2).sum() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.stack(squares).sum().sqrt()) if squares else 0.0

    def _step_metrics(self, sums: torch.Tensor, kind: str, num_samples: int, grad_norm: float | None) -> dict:
        tokens = max(float(sums[1]), 1.0)
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
        metrics = {
            "loss": float(sums[0]),
            "clip_frac": float(sums[2]) / tokens,
            "dual_clip_frac": float(sums[3]) / tokens,
            "num_tokens": float(sums[1]),
            "num_samples": num_samples,
            "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
            "lr": float(self.engine.get_lr()[0]),
            "step": self.step,
            "algorithm": kind,
        }
        if kind != "raft":
            metrics["ratio_mean"] = float(sums[4]) / tokens
            metrics["approx_kl"] = float(sums[5]) / tokens
        if self.config.kl_coef > 0:
            metrics["kl_ref"] = float(sums[6]) / tokens
        if self.config.entropy_coef > 0:
            metrics["entropy"] = float(sums[7]) / tokens
        return metrics

    # ------------------------------------------------------------------------------------------
    # statistics-only pass
    # ------------------------------------------------------------------------------------------

    def grad_norms(self, samples: Sequence[Sample]) -> dict:
        """G per sample (keyed by sample_id) for samples that are not trained on: the norm of the
        gradient of sum_t log pi(y_t | ...) over the response, for grad_norm_params ("embed",
        "head" or "both" = sqrt(embed^2 + head^2)). Nothing is stepped or accumulated: autograd
        is asked only for the gradient at the embedding output (or, for "head", at the head's
        input), so the weight-gradient products of the body are pruned; the fused head kernel
        still runs its dW pass to write the head norms.
        """
        want_embed, want_head = self._norm_parts()
        if not (want_embed or want_head):
            raise ValueError("grad_norms needs TrainerConfig.grad_norm_params in ('embed', 'head', 'both')")
        self.reload()
        samples = list(samples)
        rows: list[tuple] = []
        zero3 = self.config.zero_stage == 3
        # ZeRO-3 must gather weights through the engine's forward; below stage 3 the weights are
        # whole and the bare module avoids DeepSpeed's backward hooks (stage 0 rejects a backward
        # that engine.backward did not start).
        model = self.engine if zero3 else self.engine.module
        self.engine.train()
        for idx, calls in self._my_micro_batches(samples):
            batch = pack([samples[i] for i in idx]).to(self.device)
            capture = Capture()
            head_norms = (torch.zeros(max(batch.num_seqs, 1), dtype=torch.float32, device=self.device)
                          if want_head else None)
            out = self._forward(model, batch, head_norms=head_norms, capture=capture, num_calls=calls)
            total = (out.logp * batch.response_mask).sum()
            target = capture.embeds if want_embed else capture.hidden
            (grad,) = torch.autograd.grad(total, [target])
            if batch.num_seqs == 0:
                continue
            sq_embed = (embedding_sq_grad_norms(batch.input_ids, grad.float(), batch.cu_seqlens).cpu()
                        if want_embed else None)
            sq_head = head_norms.cpu() if want_head else None
            for b, sample_id in enumerate(batch.sample_ids):
                parts = [float(x[b]) for x in (sq_embed, sq_head) if x is not None]
                rows.append((sample_id, math.sqrt(sum(parts))))
        if zero3:
            # The autograd.grad above ran DeepSpeed's backward epilogue, which marks a micro-step as
            # done: without this reset the next step would add its gradient onto the previous one.
            self.engine.optimizer.zero_grad()
        merged: dict = {}
        for part in gdist.all_gather_objects(rows):
            merged.update(dict(part))
        return {s.sample_id: merged[s.sample_id] for s in samples}

    # ------------------------------------------------------------------------------------------
    # weights out, checkpoints, memory
    # ------------------------------------------------------------------------------------------

    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere); collective under ZeRO-3."""
        if self.config.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            state = self.engine.module.state_dict()
        if self.rank != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def save_hf(self, path: str | Path) -> Path:
        """Write a Hugging Face folder (weights gathered in the training dtype, config, generation
        config, tokenizer when known) that transformers and vLLM load. Call on every rank."""
        self.reload()  # the states must be on the device
        path = Path(path)
        state = self._full_state_dict()
        if self.rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            if self.tied:
                state.pop("lm_head.weight", None)  # the shared tensor is stored once, as HF does
            self.hf_model.config.dtype = self.dtype
            self.hf_model.save_pretrained(path, state_dict=state)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(path)
        gdist.barrier()
        return path

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """Every parameter's full accumulated gradient (fp32, averaged over ranks, before clipping),
        by HF name; valid between the backward and the update (inside `on_gradients`). Collective."""
        from deepspeed.utils import safe_get_full_grad

        grads = {}
        for name, param in self.engine.module.named_parameters():
            grad = safe_get_full_grad(param)
            if grad is not None:
                grads[name] = grad.detach().float().cpu().clone()
        return grads

    def save_checkpoint(self, directory: str | Path, tag: str | None = None, save_latest: bool = True) -> Path:
        """DeepSpeed checkpoint (weights, AdamW state, LR schedule) plus the step counter, the
        config and every rank's python/numpy/torch RNG state, under directory/<tag> (default
        step<k>); `save_latest=False` leaves directory/latest alone (gvm.loop_state names it)."""
        self.reload()  # the states must be on the device
        directory = Path(directory)
        tag = tag or f"step{self.step}"
        self.engine.save_checkpoint(str(directory), tag=tag, save_latest=save_latest,
                                    client_state={"trainer_step": self.step, "config": self.config.to_dict()})
        torch.save(_rng_state(), directory / tag / RNG_FILE.format(rank=self.rank))
        gdist.barrier()
        return directory / tag

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> None:
        """Resume exactly from `save_checkpoint` output (the latest tag unless one is given)."""
        self.reload()  # the states must be on the device
        directory = Path(directory)
        load_path, client_state = self.engine.load_checkpoint(
            str(directory), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise ValueError(f"load_checkpoint: no DeepSpeed checkpoint found in {str(directory)!r} (tag {tag!r})")
        self.step = int(client_state["trainer_step"])
        tag = tag or (directory / "latest").read_text().strip()
        rng_file = directory / tag / RNG_FILE.format(rank=self.rank)
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            log.warning("no RNG state for rank %d in %s; RNG streams are not restored", self.rank, directory / tag)

    def _offload_supported(self) -> bool:
        # DeepSpeed moves optimizer states only for ZeRO optimizers over its FusedAdam.
        optimizer = getattr(self.engine, "optimizer", None)
        return (hasattr(self.engine, "offload_states") and hasattr(optimizer, "offload_states")
                and not use_torch_adam(self.config))

    def offload(self) -> None:
        """Move optimizer state, gradients and weights off the accelerator while the rollout engine
        generates (DeepSpeed offload_states). Where the engine cannot (ZeRO-0, torch AdamW, the CPU)
        nothing moves (logged once), but the trainer still counts as offloaded until `reload`."""
        if self._offloaded:
            return
        if self._offload_supported():
            self.engine.offload_states(pin_memory=torch.cuda.is_available())
            self._states_moved = True
        elif not self._offload_note_logged:
            log.info("offload(): DeepSpeed offloads states only for ZeRO stages 1-3 with its FusedAdam (here: stage "
                     "%d, torch AdamW %s); nothing moved", self.config.zero_stage, use_torch_adam(self.config))
            self._offload_note_logged = True
        self._offloaded = True

    def reload(self) -> None:
        """Undo `offload`; the training and scoring methods call it themselves when needed."""
        if not self._offloaded:
            return
        if self._states_moved:
            self.engine.reload_states()
            self._states_moved = False
        self._offloaded = False

    @property
    def holds_states(self) -> bool:
        """False between `offload` and `reload` (gvm.colocation checks it before every generation)."""
        return not self._offloaded
