"""What screening by history could buy on a task, read off a uniform run's audit log, with no training.

    python benchmarks/screen_replay.py runs/<uniform run>/allocations.jsonl [more logs ...]

A uniform run generates for every prompt it visits, so its log (`allocations.jsonl`: the keys,
samples and accepted counts of every visit) says which visits carried gradient (RAFT / RAFT++: an
accepted sample; GRPO: both outcomes in the group). This replays the screened sampler's rule
(`gvm.samplers.screen_chances`, the same code) over those visits for a grid of `screen_out` x
`history_decay` x `screen_min_useful`: a visit the rule would skip is not generated, so its outcome
joins no history, as in the sampler. Per rule it reports the visits kept, the useful fraction
among them against all visits' (their ratio is the most a screen can raise the useful-sample
fraction here), the share of kept visits with both outcomes (for RAFT, the prompts neither
unsolved nor solved) and the recall (the useful visits kept: gradient the screen throws away). It
cannot say what the skipped samples would have taught; bench_convergence.py measures that. First
visits have no history and are always kept, so a run with few epochs bounds the gain from above
by its share of revisits. A last row, "hindsight", keeps every first visit and every revisit of
the prompts that carried gradient at some visit of the run: the same gain for a screen that knew
after one visit which prompts are dead. A last table says what probing first visits
(`sampler.screen_probe`) would have spent on them and kept useful, in samples.
"""
from __future__ import annotations

import argparse
import json
import sys
from math import comb
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from gvm.algorithms import get_algorithm  # noqa: E402
from gvm.config import SamplerConfig  # noqa: E402
from gvm.samplers import screen_chances  # noqa: E402
from gvm.stats import SCREEN_OUT, PromptStats  # noqa: E402

DECAYS = (0.5, 0.7, 0.9, 1.0)
THRESHOLDS = (0.3, 0.45, 0.6)
PROBES = (0, 1, 2, 4)                  # samples a first visit is probed with (0: generated in full)


def read_visits(log: Path) -> list[tuple[int, list[int], list[int], list[int]]]:
    """(iteration, keys, samples, accepted) per iteration of a uniform run's audit log."""
    visits = []
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("sampler") != "uniform" or "accepted" not in row:
            raise SystemExit(f"{log}:{number}: not a uniform run's audit row (sampler {row.get('sampler')!r}); "
                             f"replay needs every visit generated: a run with sampler.kind=uniform")
        visits.append((row["iteration"], row["keys"], row["n"], row["accepted"]))
    return visits


class VisitTally:
    """What a rule kept of a log's visits, added up one iteration at a time (boolean arrays over
    that iteration's visits): shared by the history rule and hindsight."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(("visits", "first_visits", "kept", "useful", "kept_useful", "kept_mixed"), 0)

    def add(self, *, keep: np.ndarray, first: np.ndarray, accepted, samples, need_both: bool) -> None:
        mixed = np.array([0 < a < m for a, m in zip(accepted, samples)], dtype=bool)
        carried = mixed if need_both else np.array([a > 0 for a in accepted], dtype=bool)
        for name, on in (("visits", np.ones_like(keep)), ("first_visits", first), ("kept", keep),
                         ("useful", carried), ("kept_useful", carried & keep), ("kept_mixed", mixed & keep)):
            self.counts[name] += int(on.sum())


def replay(visits, *, decay: float, threshold: float, prior: float, screen_out: str, need_both: bool) -> dict:
    """The rule's verdict on every visit, and what the kept ones carried (useful: gradient for RAFT
    when need_both is false, both outcomes when it is true)."""
    stats = PromptStats()
    tally = VisitTally()
    for iteration, keys, samples, accepted in visits:
        n = int(np.median(samples))
        first = np.array([not stats.record(k).has_history for k in keys], dtype=bool)
        keep = screen_chances(stats, keys, iteration, decay=decay, prior=prior, n=n, screen_out=screen_out) >= threshold
        kept_keys = [k for k, on in zip(keys, keep) if on]
        stats.count_outcomes(kept_keys, [a for a, on in zip(accepted, keep) if on],
                             [m - a for m, a, on in zip(samples, accepted, keep) if on])
        tally.add(keep=keep, first=first, accepted=accepted, samples=samples, need_both=need_both)
    return tally.counts


def hindsight(visits, *, need_both: bool) -> dict:
    """A screen that knows the whole run: every first visit kept (it must be generated to be known),
    every later visit kept when the prompt carried gradient on any visit of the run (GRPO: both
    outcomes in its samples pooled over the run; RAFT: an accepted one), skipped otherwise. It skips
    exactly the prompts with nothing to give in this run and loses no useful visit: what a screen
    that told the dead prompts from the live ones after one visit could buy, against the history
    rule's rows (a rule that also skipped the unlucky visits of live prompts could buy more)."""
    accepted_total: dict[int, int] = {}
    samples_total: dict[int, int] = {}
    for _, keys, samples, accepted in visits:
        for k, m, a in zip(keys, samples, accepted):
            accepted_total[k] = accepted_total.get(k, 0) + a
            samples_total[k] = samples_total.get(k, 0) + m
    live = {k for k in samples_total
            if accepted_total[k] > 0 and (not need_both or accepted_total[k] < samples_total[k])}
    seen: set[int] = set()
    tally = VisitTally()
    for _, keys, samples, accepted in visits:
        first = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):          # one by one: a prompt drawn twice in an iteration is first once
            first[i] = k not in seen
            seen.add(k)
        keep = first | np.array([k in live for k in keys], dtype=bool)
        tally.add(keep=keep, first=first, accepted=accepted, samples=samples, need_both=need_both)
    return tally.counts


def probe_pass_chance(accepted: int, samples: int, probe: int, need_both: bool) -> float:
    """The chance that `probe` of a visit's samples, drawn without replacement (a generated group's
    order is random), show what the sampler keeps: both outcomes (GRPO) or an accepted one (RAFT)."""
    def none_of(count: int) -> float:      # all probe samples from the other `samples - count`
        return comb(samples - count, probe) / comb(samples, probe)
    return 1.0 - none_of(accepted) - (none_of(samples - accepted) if need_both else 0.0)


def first_visits_probed(visits, probe: int, *, need_both: bool) -> tuple[float, float]:
    """The expected (samples, useful samples) of a log's first visits had each been probed with
    `probe` samples and completed only when the probe showed gradient (sampler.screen_probe); 0
    probes: generated in full. A completed group carries gradient by construction, so its useful
    samples are all of it; a dropped probe's are none."""
    seen: set[int] = set()
    spent = useful = 0.0
    for _, keys, samples, accepted in visits:
        for k, m, a in zip(keys, samples, accepted):
            if k in seen:
                continue
            seen.add(k)
            if probe == 0 or probe >= m:
                spent, useful = spent + m, useful + m * ((0 < a < m) if need_both else (a > 0))
            else:
                chance = probe_pass_chance(a, m, probe, need_both)
                spent, useful = spent + probe + (m - probe) * chance, useful + m * chance
    return spent, useful


def table_row(screen_out: str, decay, threshold, r: dict) -> str:
    kept = max(r["kept"], 1)
    among_kept, among_all = r["kept_useful"] / kept, r["useful"] / max(r["visits"], 1)
    return (f"| {screen_out} | {decay} | {threshold} | {r['kept'] / r['visits']:.2f} | {among_kept:.2f} | "
            f"{among_all:.2f} | {among_kept / max(among_all, 1e-12):.2f}x | {r['kept_mixed'] / kept:.2f} | "
            f"{r['kept_useful'] / max(r['useful'], 1):.2f} |")


def report(log: Path, visits, algorithm: str, prior: float) -> list[str]:
    need_both = get_algorithm(algorithm).needs_both_outcomes
    lines = [f"### {log} ({algorithm}, prior {prior})", "",
             "| screen_out | history_decay | screen_min_useful | visits kept | useful among kept | useful among all "
             "| gain | both outcomes among kept | recall |", "|---|---|---|---|---|---|---|---|---|"]
    for screen_out in (("agreeing",) if need_both else SCREEN_OUT):
        for decay in DECAYS:
            for threshold in THRESHOLDS:
                r = replay(visits, decay=decay, threshold=threshold, prior=prior, screen_out=screen_out,
                           need_both=need_both)
                lines.append(table_row(screen_out, decay, threshold, r))
    lines.append(table_row("hindsight (the whole run known)", "-", "-", hindsight(visits, need_both=need_both)))
    r = replay(visits, decay=1.0, threshold=0.0, prior=prior, screen_out="agreeing", need_both=need_both)
    lines += ["", "First visits (no history) generated in full or probed first (`sampler.screen_probe`; expected "
              "over which samples a probe would have drawn), in samples:", "",
              "| first visits | samples | useful samples | useful fraction |", "|---|---|---|---|"]
    for probe in (p for p in PROBES if p != 1 or not need_both):      # one sample never shows both outcomes
        spent, useful = first_visits_probed(visits, probe, need_both=need_both)
        lines.append(f"| {'in full' if probe == 0 else f'probe of {probe}'} | {spent:.0f} | {useful:.0f} | "
                     f"{useful / max(spent, 1e-12):.2f} |")
    lines += ["", f"{r['visits']} visits of {len({k for _, keys, _, _ in visits for k in keys})} prompts, "
                  f"{r['first_visits']} of them first visits (no history: always kept); "
                  f"{r['kept_mixed'] / max(r['visits'], 1):.2f} of all visits had both outcomes", ""]
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", nargs="+", type=Path, help="allocations.jsonl of uniform runs")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    lines = []
    for log in args.logs:
        config_path = log.parent / "config.yaml"
        if not config_path.is_file():
            raise SystemExit(f"{config_path}: not found; the replay reads the run's algorithm and prior there")
        config = yaml.safe_load(config_path.read_text())
        prior = config.get("sampler", {}).get("prior", SamplerConfig.prior)
        lines += report(log, read_visits(log), config["algorithm"], prior)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
