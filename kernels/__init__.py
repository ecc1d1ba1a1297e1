"""gvm_kernels: fused LM-head log-probs / entropy with per-sequence gradient norms, and the
policy losses that consume them. Reusable from any RL trainer."""
