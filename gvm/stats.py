"""Per-prompt acceptance rate p_i and gradient scale G_i, carried across iterations.

Each iteration measures p_i (accepted / pilot samples) and G_i (mean gradient norm of the
accepted pilot samples; none accepted gives no measurement of G). A prompt seen before may
smooth its estimate with the earlier one:

    p_i <- ema * p_i(before) + (1 - ema) * p_i(now)        (same for G_i)

ema = 0 uses this iteration's pilot only (the paper). When a prompt had no accepted sample this
time, its G_i keeps the earlier value if there is one (a p_i > 0 from history still needs a
scale); a prompt never solved has G_i = 0, as in the paper. The table is keyed by the prompt's
stable index in the training set and can be saved with a checkpoint and restored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class PromptRecord:
    p: float              # smoothed acceptance rate
    g: float              # smoothed gradient scale (0 until an accepted sample is measured)
    seen: int = 0         # pilot rounds this prompt took part in
    last_iteration: int = -1


class PromptStats:
    """The table of PromptRecord by prompt key (see the module docstring)."""

    def __init__(self, ema: float = 0.0):
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {ema}")
        self.ema = ema
        self.records: dict[int, PromptRecord] = {}

    def update(self, keys: list[int], accept_rates, grad_norms, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold in this iteration's measurements and return the (p, G) to allocate with, [n] each.

        accept_rates: p_i measured now, in [0, 1]. grad_norms: G_i measured now, NaN where the
        prompt had no accepted sample (nothing measured)."""
        p_now = np.asarray(accept_rates, dtype=np.float64)
        g_now = np.asarray(grad_norms, dtype=np.float64)
        if not (len(keys) == p_now.size == g_now.size):
            raise ValueError(f"keys, accept_rates and grad_norms must have one entry per prompt, got "
                             f"{len(keys)}, {p_now.size} and {g_now.size}")
        p_out, g_out = np.empty(len(keys)), np.empty(len(keys))
        for i, key in enumerate(keys):
            record = self.records.get(key)
            measured = not math.isnan(g_now[i])
            if record is None:
                record = PromptRecord(p=float(p_now[i]), g=float(g_now[i]) if measured else 0.0)
            elif self.ema == 0.0:  # this pilot only (the paper)
                record.p, record.g = float(p_now[i]), float(g_now[i]) if measured else 0.0
            else:
                record.p = self.ema * record.p + (1.0 - self.ema) * float(p_now[i])
                if measured:  # a first measurement is taken as it is; unmeasured keeps the old scale
                    record.g = float(g_now[i]) if record.g == 0.0 else \
                        self.ema * record.g + (1.0 - self.ema) * float(g_now[i])
            record.seen += 1
            record.last_iteration = iteration
            self.records[key] = record
            p_out[i], g_out[i] = record.p, record.g
        return p_out, g_out

    def state_dict(self) -> dict:
        return {"ema": self.ema,
                "records": {str(k): [r.p, r.g, r.seen, r.last_iteration] for k, r in self.records.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = float(state["ema"])
        self.records = {int(k): PromptRecord(float(p), float(g), int(seen), int(last))
                        for k, (p, g, seen, last) in state["records"].items()}

    def __len__(self) -> int:
        return len(self.records)
