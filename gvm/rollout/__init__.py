"""Rollout engines: vLLM (colocated) and a transformers fallback behind one interface."""
