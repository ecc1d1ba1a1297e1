"""gvm_kernels: fused LM-head log-probs / entropy with per-sequence gradient norms, and the
policy losses that consume them. Reusable from any RL trainer (see README, "Kernels")."""

from .embedding_norms import embedding_sq_grad_norms
from .fused_logprobs import fused_logprobs
from .policy_loss import group_advantages, policy_loss

__all__ = ["embedding_sq_grad_norms", "fused_logprobs", "group_advantages", "policy_loss"]
