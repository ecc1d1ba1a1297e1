"""benchmarks/screen_replay.py: the screened sampler's rule replayed over a uniform run's audit log.
A prompt that never carries gradient is skipped after its first visit and a skipped visit teaches
the rule nothing (as in the sampler); on fresh random logs the counts stay consistent and a rule
that screens nothing keeps every visit."""
import itertools
import json
import random
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from screen_replay import first_visits_probed, hindsight, main, probe_pass_chance, read_visits, replay  # noqa: E402


def _log(tmp_path: Path, rows: list[tuple[list[int], list[int]]], algorithm: str, n: int = 4) -> Path:
    """An audit log of a uniform run: per iteration, the keys visited and their accepted counts."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"algorithm": algorithm, "sampler": {"prior": 0.5}}))
    lines = [json.dumps({"iteration": it + 1, "sampler": "uniform", "keys": keys, "n": [n] * len(keys),
                         "accepted": accepted}) for it, (keys, accepted) in enumerate(rows)]
    (run / "allocations.jsonl").write_text("\n".join(lines) + "\n")
    return run / "allocations.jsonl"


def test_a_prompt_that_never_carries_gradient_is_skipped_after_its_first_visit(tmp_path):
    # Prompt 0 is never solved (0 of 4), prompt 1 always half (2 of 4), over five iterations. RAFT:
    # 0 of 4 under Beta(0.5, 4.5) leaves a 0.28 chance of an accepted sample in the next 4, below 0.45.
    visits = read_visits(_log(tmp_path, [([0, 1], [0, 2])] * 5, "raft++"))
    result = replay(visits, decay=1.0, threshold=0.45, prior=0.5, screen_out="unsolved", need_both=False)
    assert result == {"visits": 10, "first_visits": 2, "kept": 6, "useful": 5, "kept_useful": 5, "kept_mixed": 5}
    # Nothing screened: every visit kept.
    assert replay(visits, decay=1.0, threshold=0.0, prior=0.5, screen_out="unsolved", need_both=False)["kept"] == 10


def test_raft_can_screen_out_solved_prompts_too(tmp_path):
    # Prompt 0 always 4 of 4 (solved: gradient, but nothing left to learn), prompt 1 always 2 of 4.
    visits = read_visits(_log(tmp_path, [([0, 1], [4, 2])] * 5, "raft++"))
    keeps_solved = replay(visits, decay=1.0, threshold=0.45, prior=0.5, screen_out="unsolved", need_both=False)
    assert keeps_solved["kept"] == 10 and keeps_solved["kept_useful"] == 10 and keeps_solved["kept_mixed"] == 5
    for screen_out in ("solved", "agreeing"):
        r = replay(visits, decay=1.0, threshold=0.45, prior=0.5, screen_out=screen_out, need_both=False)
        assert r == {"visits": 10, "first_visits": 2, "kept": 6, "useful": 10, "kept_useful": 6, "kept_mixed": 5}


def test_grpo_screens_agreeing_groups_on_both_sides(tmp_path):
    # Prompt 0 always 4 of 4 (no reward variance), prompt 1 always 0 of 4, prompt 2 mixed.
    visits = read_visits(_log(tmp_path, [([0, 1, 2], [4, 0, 2])] * 4, "grpo"))
    result = replay(visits, decay=1.0, threshold=0.45, prior=0.5, screen_out="agreeing", need_both=True)
    assert result == {"visits": 12, "first_visits": 3, "kept": 6, "useful": 4, "kept_useful": 4, "kept_mixed": 4}


def test_random_logs_keep_their_counts_consistent(tmp_path, seed):
    rng = random.Random(seed)
    prompts, n = rng.randint(3, 12), rng.choice([2, 4, 8])
    rates = [rng.random() for _ in range(prompts)]
    rows = []
    for _ in range(rng.randint(2, 10)):
        keys = rng.sample(range(prompts), rng.randint(1, prompts))
        rows.append((keys, [sum(rng.random() < rates[k] for _ in range(n)) for k in keys]))
    visits = read_visits(_log(tmp_path, rows, rng.choice(["raft++", "grpo"]), n))
    for decay in (0.5, 1.0):
        for threshold in (0.0, 0.45, 1.0):
            r = replay(visits, decay=decay, threshold=threshold, prior=0.5, screen_out="agreeing", need_both=True)
            assert r["visits"] == sum(len(keys) for keys, _ in rows)
            assert r["first_visits"] <= r["kept"] <= r["visits"] and r["kept_useful"] <= min(r["kept"], r["useful"])
            if threshold == 0.0:
                assert r["kept"] == r["visits"] and r["kept_useful"] == r["useful"]


def test_hindsight_skips_the_revisits_of_dead_prompts_and_loses_no_useful_visit(tmp_path, seed):
    rng = random.Random(seed)
    prompts, n = rng.randint(3, 12), rng.choice([2, 4, 8])
    rates = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(prompts)]   # dead at both ends, and live
    rows = []
    for _ in range(rng.randint(2, 10)):
        keys = rng.sample(range(prompts), rng.randint(1, prompts))
        rows.append((keys, [sum(rng.random() < rates[k] for _ in range(n)) for k in keys]))
    algorithm = rng.choice(["raft++", "grpo"])
    need_both = algorithm == "grpo"
    visits = read_visits(_log(tmp_path, rows, algorithm, n))
    pooled = {}
    for keys, accepted in rows:
        for k, a in zip(keys, accepted):
            pooled.setdefault(k, []).append(a)
    live = {k for k, a in pooled.items() if sum(a) > 0 and (not need_both or sum(a) < n * len(a))}
    revisits_of_live = sum(len(a) - 1 for k, a in pooled.items() if k in live)
    r = hindsight(visits, need_both=need_both)
    assert r["first_visits"] == len(pooled) and r["visits"] == sum(len(a) for a in pooled.values())
    assert r["kept"] == len(pooled) + revisits_of_live
    assert r["kept_useful"] == r["useful"]                       # recall 1: a useful visit makes its prompt live
    # GRPO's known log above: prompts 0 (always solved) and 1 (never) are dead, 2 is live.
    (tmp_path / "known").mkdir()
    known = read_visits(_log(tmp_path / "known", [([0, 1, 2], [4, 0, 2])] * 4, "grpo"))
    assert hindsight(known, need_both=True) == {"visits": 12, "first_visits": 3, "kept": 6, "useful": 4,
                                                "kept_useful": 4, "kept_mixed": 4}


def test_a_log_of_another_sampler_is_refused_with_the_fix(tmp_path, capsys):
    log = _log(tmp_path, [([0], [1])], "raft++")
    log.write_text(log.read_text().replace('"uniform"', '"screened"'))
    with pytest.raises(SystemExit, match="sampler.kind=uniform"):
        main([str(log)])
    log.with_name("config.yaml").unlink()
    with pytest.raises(SystemExit, match="config.yaml: not found"):
        main([str(log)])


def test_probe_pass_chance_is_the_share_of_probe_subsets_that_show_gradient(seed):
    """Against enumeration: every way to draw the probe from a group of m with a accepted."""
    rng = random.Random(seed)
    for _ in range(20):
        m = rng.randint(2, 9)
        a, probe, need_both = rng.randint(0, m), rng.randint(1, m - 1), rng.random() < 0.5
        group = [1] * a + [0] * (m - a)
        subsets = list(itertools.combinations(range(m), probe))
        shows = [len({group[i] for i in sub}) == 2 if need_both else any(group[i] for i in sub) for sub in subsets]
        assert probe_pass_chance(a, m, probe, need_both) == pytest.approx(sum(shows) / len(subsets), abs=1e-12)


def test_probed_first_visits_spend_the_probe_and_keep_only_groups_with_gradient(tmp_path):
    # GRPO, groups of 4: prompt 0 never solved (0 of 4), prompt 1 2 of 4, revisits ignored.
    visits = read_visits(_log(tmp_path, [([0, 1], [0, 2])] * 3, "grpo"))
    assert first_visits_probed(visits, 0, need_both=True) == (8, 4)          # in full: prompt 1's group useful
    # a probe of 2: prompt 0 spends 2, prompt 1 passes with chance 4/6 (mixed pairs of 1100) and is completed
    spent, useful = first_visits_probed(visits, 2, need_both=True)
    assert spent == pytest.approx(2 + 2 + 2 * 4 / 6) and useful == pytest.approx(4 * 4 / 6)
