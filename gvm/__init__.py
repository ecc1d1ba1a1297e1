"""GVM-RAFT: allocate the sampling budget of rejection-sampling / GRPO training where it cuts
gradient variance most (arXiv 2505.02391)."""

from gvm.allocation import allocate, allocate_uniform, gvm_weights

__all__ = ["allocate", "allocate_uniform", "gvm_weights"]
__version__ = "0.1.0"
