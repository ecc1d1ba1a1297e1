"""The policy trainer's settings: one frozen dataclass, every field with its reason, checked on
construction so that a bad value fails with the field's name before any model is loaded."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from gvm_kernels.policy_loss import AGGREGATIONS, KINDS

GRAD_NORM_PARAMS = ("embed", "head", "both", "none")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("auto", "float32", "bfloat16")
ATTENTIONS = ("auto", "packed", "grouped")


@dataclass(frozen=True)
class TrainerConfig:
    """Settings of `PolicyTrainer`. Defaults follow the GVM paper's runs where it states them."""
    model_path: str = ""                      # HF folder (config.json + weights); required
    reference_model_path: str | None = None   # GRPO's frozen KL reference; None: model_path
    zero_stage: int = 3                       # ZeRO stage 0-3; 3 shards weights, grads and Adam state
    dtype: str = "auto"                       # "auto": bf16 on CUDA, fp32 on the CPU
    seed: int = 0                             # torch/numpy/python seed at start (logged)
    # optimisation
    lr: float = 1e-6                          # paper: 1e-6
    lr_schedule: str = "constant"             # "constant" or "cosine" after the warm-up
    warmup_steps: int = 0                     # linear warm-up over this many optimizer steps
    total_steps: int = 0                      # cosine horizon in optimizer steps (needed for cosine)
    min_lr_ratio: float = 0.0                 # cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.0                 # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    torch_adam: bool | None = None            # DeepSpeed's AdamW over torch.optim.AdamW (True) or its FusedAdam;
                                              # None: torch on the CPU (no minutes-long g++ build, and offloading
                                              # is moot there), FusedAdam on CUDA (offload_states needs it)
    grad_clip: float = 1.0                    # global grad-norm clip; 0 disables
    optimizer_steps_per_call: int = 1         # train_step splits its samples into this many mini-batches
    mini_batch_samples: int | None = None     # instead, one mini-batch per this many samples (verl's
                                              # ppo_mini_batch_size x rollout.n: the paper's GVM runs, n = 1 per row,
                                              # took ~8x the baselines' updates); None: optimizer_steps_per_call
    # memory and speed
    micro_batch_tokens: int = 8192            # token budget of one forward/backward per rank
    gradient_checkpointing: bool = False      # recompute layer activations in the backward
    attention: str = "auto"                   # "packed" (block mask / flash varlen), "grouped" (length groups)
    use_liger: bool = True                    # Liger RMSNorm/RoPE/SwiGLU kernels, CUDA only
    # algorithm (passed to gvm_kernels.policy_loss)
    algorithm: str = "raft++"                 # default loss kind of train_step (gvm_kernels.policy_loss.KINDS)
    loss_agg: str = "token-mean"              # paper: token-mean
    clip_low: float = 0.2                     # paper: clip 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None            # > 1 caps negative-advantage tokens; None: off
    kl_coef: float = 0.0                      # paper GRPO: 1e-3 (k3 to the reference model)
    entropy_coef: float = 0.0
    temperature: float = 1.0                  # the sampling temperature, so log-probs match the rollout
    # per-sample gradient statistics (GVM's G_i)
    grad_norm_params: str = "embed"           # "embed", "head", "both" (embed^2 + head^2) or "none"

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ValueError(f"TrainerConfig.{name}={getattr(self, name)!r}: {why}")

        need(isinstance(self.model_path, str) and bool(self.model_path), "model_path",
             "set it to a Hugging Face model folder (with config.json)")
        need(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.lr_schedule != "cosine" or self.total_steps > self.warmup_steps, "total_steps",
             "the cosine schedule needs total_steps > warmup_steps (its horizon in optimizer steps)")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must lie in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
             "must be two numbers in [0, 1)")
        need(self.adam_eps > 0, "adam_eps", "must be > 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")
        need(self.optimizer_steps_per_call >= 1, "optimizer_steps_per_call", "must be >= 1")
        need(self.mini_batch_samples is None or self.mini_batch_samples >= 1, "mini_batch_samples",
             "must be >= 1, or None (optimizer_steps_per_call mini-batches per call)")
        need(self.micro_batch_tokens >= 1, "micro_batch_tokens", "must be >= 1")
        need(self.attention in ATTENTIONS, "attention", f"must be one of {ATTENTIONS}")
        need(self.algorithm in KINDS, "algorithm", f"must be one of {KINDS}")
        need(self.loss_agg in AGGREGATIONS, "loss_agg", f"must be one of {AGGREGATIONS}")
        need(0 <= self.clip_low < 1, "clip_low", "must lie in [0, 1)")
        need(self.clip_high >= 0, "clip_high", "must be >= 0")
        need(self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1, or None to disable")
        need(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        need(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.grad_norm_params in GRAD_NORM_PARAMS, "grad_norm_params", f"must be one of {GRAD_NORM_PARAMS}")

    def to_dict(self) -> dict:
        return asdict(self)

    def mini_batches(self, num_samples: int) -> int:
        """Optimizer steps of one train_step call over `num_samples` samples."""
        if self.mini_batch_samples is None:
            return self.optimizer_steps_per_call
        return max(1, math.ceil(num_samples / self.mini_batch_samples))
