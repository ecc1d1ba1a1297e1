"""GVM-RAFT: allocate the sampling budget of rejection-sampling / GRPO training where it cuts
gradient variance most (arXiv 2505.02391)."""

__version__ = "0.1.0"
