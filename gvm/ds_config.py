"""DeepSpeed configuration and the learning-rate schedule, built from a `TrainerConfig`.

The optimizer is DeepSpeed's own AdamW (config "optimizer": {"type": "AdamW"}): with it
`engine.offload_states()` / `reload_states()` can move Adam's state off the GPU while vLLM
generates. Gradient accumulation is driven by the trainer (a variable number of micro-batches per
optimizer step), so DeepSpeed's own counters are set to 1 and the boundary is set by hand.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .trainer_config import TrainerConfig


def resolve_dtype(name: str) -> torch.dtype:
    """"auto": bf16 on CUDA (tensor cores, no loss scaling), fp32 on the CPU (exact tests)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def build_ds_config(cfg: TrainerConfig, *, with_optimizer: bool = True) -> dict:
    """The DeepSpeed config dict. `with_optimizer=False` gives the frozen reference model's config
    (same ZeRO stage, no optimizer, no gradients)."""
    dtype = resolve_dtype(cfg.dtype)
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 3:
        # save_hf gathers the full 16-bit weights on rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict = {
        "train_micro_batch_size_per_gpu": 1,   # bookkeeping only: batches are packed token streams
        "gradient_accumulation_steps": 1,      # the trainer sets the accumulation boundary itself
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,              # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if with_optimizer:
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.lr, "betas": list(cfg.adam_betas), "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay,
            "torch_adam": use_torch_adam(cfg)}}
        if cfg.grad_clip > 0:
            config["gradient_clipping"] = cfg.grad_clip
    return config


def use_torch_adam(cfg: TrainerConfig) -> bool:
    """torch.optim.AdamW inside DeepSpeed, or DeepSpeed's FusedAdam (JIT-built on first use)."""
    return (not torch.cuda.is_available()) if cfg.torch_adam is None else cfg.torch_adam


def lr_factor(step: int, cfg: TrainerConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based): linear warm-up to 1 over
    warmup_steps (the first step already moves, at lr / warmup_steps), then constant, or a cosine
    from 1 down to min_lr_ratio at total_steps (held there afterwards)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler_factory(cfg: TrainerConfig) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """What deepspeed.initialize(lr_scheduler=...) calls with the optimizer it built; DeepSpeed
    steps it once per optimizer step and saves its state in checkpoints."""
    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    return make
