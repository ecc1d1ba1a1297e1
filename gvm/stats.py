"""What each training prompt's samples have shown so far: its acceptance rate p_i and gradient
scale G_i, carried across iterations and saved with checkpoints (keyed by the prompt's stable
index in the training set).

Two ways to read it:

- Smoothed pilot estimates (the "gvm" sampler): each iteration measures p_i (accepted / pilot
  samples) and G_i (mean gradient norm of the accepted pilot samples), and a prompt seen before
  may smooth them with the earlier ones, p_i <- ema * p_i(before) + (1 - ema) * p_i(now) (the
  same for G_i). ema = 0 uses this iteration's pilot only (the paper). A prompt with no accepted
  sample this time keeps its earlier G_i if it has one; a prompt never solved has G_i = 0.

- A posterior (the "adaptive" sampler): every sample a prompt has had, pilot, later rounds and
  earlier visits, counts as a success or failure, and p_i ~ Beta(prior + s_i, prior + f_i). The
  policy moves between visits, so at every visit the old counts are multiplied by `decay`: a
  prompt found unsolvable (or solved) long ago becomes uncertain again and is re-checked. G_i is
  the mean gradient norm of its trained samples (from the training backward: no extra pass).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


@dataclass
class PromptRecord:
    p: float = 0.0             # smoothed pilot acceptance rate (gvm)
    g: float = 0.0             # gradient scale: smoothed pilot norm (gvm) or trained samples' norm
    seen: int = 0              # visits: iterations this prompt was drawn in
    last_iteration: int = -1
    successes: float = 0.0     # decayed counts of accepted / rejected samples (adaptive)
    failures: float = 0.0

    @property
    def has_history(self) -> bool:
        """Some sample of this prompt has been counted (decay never brings counts back to 0)."""
        return self.successes + self.failures > 0


class PromptStats:
    """The table of PromptRecord by prompt key (see the module docstring)."""

    def __init__(self, ema: float = 0.0):
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {ema}")
        self.ema = ema
        self.records: dict[int, PromptRecord] = {}

    def record(self, key: int) -> PromptRecord:
        """The prompt's record (a blank one, not stored, for a prompt never seen)."""
        return self.records.get(key, PromptRecord())

    # -- the gvm sampler's smoothed pilot estimates --------------------------------------------

    def update(self, keys: list[int], accept_rates, grad_norms, iteration: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold in this iteration's pilot measurements and return the (p, G) to allocate with, [n] each.

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

    # -- the adaptive sampler's posterior ------------------------------------------------------

    def visit(self, keys: list[int], iteration: int, decay: float) -> None:
        """A new visit of each prompt: its earlier counts fade by `decay` (the policy has moved)."""
        for key in keys:
            record = self.records.setdefault(key, PromptRecord())
            record.successes *= decay
            record.failures *= decay
            record.seen += 1
            record.last_iteration = iteration

    def count_outcomes(self, keys: list[int], successes, failures) -> None:
        """Add samples' outcomes (accepted / rejected) to each prompt's counts."""
        for key, s, f in zip(keys, successes, failures):
            record = self.records.setdefault(key, PromptRecord())
            record.successes += float(s)
            record.failures += float(f)

    def observe_norms(self, norms_by_key: dict[int, list[float]]) -> None:
        """The trained samples' gradient norms per prompt: G_i becomes their mean (the latest
        visit's; the policy moves between visits)."""
        for key, values in norms_by_key.items():
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                self.records.setdefault(key, PromptRecord()).g = float(np.mean(finite))

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"ema": self.ema, "records": {str(k): asdict(r) for k, r in self.records.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.ema = float(state["ema"])
        self.records = {int(k): PromptRecord(**r) for k, r in state["records"].items()}

    def __len__(self) -> int:
        return len(self.records)


# ---------------------------------------------------------------------------------------------
# The posterior's rules (pure functions of the counts)


def posterior_mean(successes, failures, prior: float) -> np.ndarray:
    """E[p] under Beta(prior + s, prior + f); with prior 0, the plain rate s / (s + f) (0 when there
    is nothing)."""
    s, f = np.asarray(successes, np.float64), np.asarray(failures, np.float64)
    a, b = prior + s, prior + f
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(a + b > 0, a / np.maximum(a + b, 1e-300), 0.0)


def _beta_moment(a: np.ndarray, b: np.ndarray, k: np.ndarray) -> np.ndarray:
    """E[p^k] under Beta(a, b) = B(a + k, b) / B(a, b); a point mass where a + b = 0 is excluded by
    the callers (they use prior > 0 or observed counts)."""
    return np.exp(_lgamma(a + k) - _lgamma(a + k + b) - _lgamma(a) + _lgamma(a + b))


def prob_useful(successes, failures, held_successes, held_failures, extra, *, prior: float,
                need_both: bool) -> np.ndarray:
    """The probability that a prompt's samples this iteration carry gradient once it gets `extra`
    more, under p ~ Beta(prior + s + held_s, prior + f + held_f) (s, f: decayed history; held:
    this iteration's samples so far).

    need_both (GRPO): the group must hold both outcomes, else every advantage is 0. Otherwise
    (RAFT): at least one accepted sample. Already useful: 1; no extra samples and not yet useful: 0.
    """
    hs, hf = np.asarray(held_successes, np.float64), np.asarray(held_failures, np.float64)
    k = np.asarray(extra, np.float64)
    a = prior + np.asarray(successes, np.float64) + hs
    b = prior + np.asarray(failures, np.float64) + hf
    a, b = np.maximum(a, 1e-12), np.maximum(b, 1e-12)     # a prior of 0 with no counts: undecided
    all_fail = _beta_moment(b, a, k)                        # E[(1 - p)^k]
    all_pass = _beta_moment(a, b, k)                        # E[p^k]
    if need_both:
        useful = np.where((hs > 0) & (hf > 0), 1.0,
                          np.where(hs > 0, 1.0 - all_pass, np.where(hf > 0, 1.0 - all_fail, 1.0 - all_pass - all_fail)))
    else:
        useful = np.where(hs > 0, 1.0, 1.0 - all_fail)
    return np.clip(np.where(k > 0, useful, np.where(useful == 1.0, 1.0, 0.0)), 0.0, 1.0)


# What a screen predicts and skips: groups likely all rejected (RAFT's groups without gradient),
# likely all accepted (solved: nothing left to learn there, though RAFT trains on them), or either.
SCREEN_OUT = ("unsolved", "solved", "agreeing")


def prob_kept(successes, failures, n, *, prior: float, screen_out: str) -> np.ndarray:
    """The posterior chance (p ~ Beta(prior + s, prior + f)) that n new samples are not what
    `screen_out` skips: "unsolved" 1 - E[(1 - p)^n]; "solved" 1 - E[p^n]; "agreeing" (GRPO's
    groups without gradient) 1 - E[p^n] - E[(1 - p)^n]."""
    if screen_out not in SCREEN_OUT:
        raise ValueError(f"screen_out must be one of {SCREEN_OUT}, got {screen_out!r}")
    s, f = np.asarray(successes, np.float64), np.asarray(failures, np.float64)
    zeros = np.zeros_like(s)
    if screen_out == "solved":
        a, b = np.maximum(prior + s, 1e-12), np.maximum(prior + f, 1e-12)
        return np.clip(1.0 - _beta_moment(a, b, np.asarray(n, np.float64)), 0.0, 1.0)
    return prob_useful(s, f, zeros, zeros, n, prior=prior, need_both=screen_out == "agreeing")


def shows_kept(accepted, total, *, screen_out: str) -> np.ndarray:
    """Whether samples already drawn (accepted of total, per prompt) are not a group `screen_out`
    skips: "unsolved" some accepted; "solved" some rejected; "agreeing" both (the screened
    sampler's probe: only such prompts get the rest of their group)."""
    if screen_out not in SCREEN_OUT:
        raise ValueError(f"screen_out must be one of {SCREEN_OUT}, got {screen_out!r}")
    accepted, total = np.asarray(accepted, np.float64), np.asarray(total, np.float64)
    some_accepted, some_rejected = accepted > 0, accepted < total
    return {"unsolved": some_accepted, "solved": some_rejected,
            "agreeing": some_accepted & some_rejected}[screen_out]


def pilot_sizes(effective_counts, pilot_n: int, amortise_after: float | None) -> np.ndarray:
    """Pilot samples per prompt: `pilot_n`, or none for a prompt whose (decayed) history holds at
    least `amortise_after` samples, whose posterior stands in for a pilot (None: always a pilot)."""
    counts = np.asarray(effective_counts, np.float64)
    if amortise_after is None:
        return np.full(counts.size, pilot_n, dtype=np.int64)
    return np.where(counts >= amortise_after, 0, pilot_n).astype(np.int64)


def round_budgets(total: int, rounds: int) -> list[int]:
    """`total` samples over `rounds` rounds as evenly as possible, the remainder to the first ones."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    base, extra = divmod(int(total), rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]
