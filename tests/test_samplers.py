"""The samplers (gvm.samplers) in the real loop on the CPU: what each generates, what it trains on,
that every generated sample is counted, and that every sampler makes the same optimizer steps per
iteration. A small training set makes prompts come back, so the adaptive sampler's history is
used; the per-rule arithmetic is tested in tests/test_posterior.py and tests/test_allocation.py."""
import json
from pathlib import Path

import numpy as np
import pytest
from _tiny_runs import QUIET, TASK, TRAIN, run_script

from gvm.allocation import allocate
from gvm.config import load_config
from gvm.config_build import ConfigError
from gvm.prompts import Prompt, PromptStream
from gvm.samplers import (SCREEN_GROUP_AUTO_FIELD, SamplerContext, ScreenedSampler, group_chances, history_chances,
                          prompt_groups, screen_chances, screen_group_field)
from gvm.stats import PromptStats, posterior_mean, prob_kept

pytest.importorskip("deepspeed")

M, N, PILOT, ITERATIONS = 8, 4, 2, 3
SMALL = [*TASK, *QUIET, "task.num_train=16", f"iterations={ITERATIONS}", "eval.every=0", "eval.k=1",
         f"data.prompts_per_iteration={M}", f"sampler.n_per_prompt={N}", f"sampler.pilot_n={PILOT}",
         "rollout.sampling.max_tokens=16", "rollout.engine=hf", "trainer.optimizer_steps_per_call=2"]


def _run(tmp_path: Path, warm_model: Path, seed: int, *overrides: str) -> tuple[list[dict], list[dict], Path]:
    run_script(TRAIN, [f"run_root={tmp_path}", "name=run", f"model={warm_model}", f"seed={seed}", *SMALL, *overrides])
    run_dir = tmp_path / "run"
    read = lambda name: [json.loads(x) for x in (run_dir / name).read_text().splitlines() if x.strip()]  # noqa: E731
    return read("metrics.jsonl")[1:], read("allocations.jsonl"), run_dir


def test_uniform_generates_n_per_prompt(tmp_path, warm_model, seed):
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=uniform")
    assert [r["samples"] for r in rows] == [M * N] * ITERATIONS
    assert all(a["n"] == [N] * M for a in audits) and all(r["R_pred"] == 1.0 for r in rows)
    assert [r["train"]["step"] for r in rows] == [2 * (t + 1) for t in range(ITERATIONS)]   # 2 steps an iteration


@pytest.mark.parametrize("algorithm", ["raft++", "grpo"])
def test_dapo_trains_only_groups_with_gradient_and_counts_all_it_drew(tmp_path, warm_model, seed, algorithm):
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=dapo", f"algorithm={algorithm}")
    for row, audit in zip(rows, audits):
        assert row["samples"] == N * len(audit["drawn"]) == N * M * audit["rounds"]    # every drawn group counted
        assert len(audit["keys"]) <= M and row["prompts_drawn"] == len(audit["drawn"])
        for accepted in audit["accepted"]:                                          # the kept groups
            assert accepted > 0 if algorithm == "raft++" else 0 < accepted < N
        useful = N * len(audit["keys"]) if algorithm == "grpo" else sum(audit["accepted"])   # GRPO: all of a kept group
        assert row["useful_fraction"] == pytest.approx(useful / row["samples"])
    assert [r["train"]["step"] for r in rows if r["train"]][-1] <= 2 * ITERATIONS


def test_gvm_trains_its_pilot_with_stage_two_in_one_step(tmp_path, warm_model, seed):
    rows, audits, run_dir = _run(tmp_path, warm_model, seed, "sampler.kind=gvm")
    config = load_config(run_dir / "config.yaml")
    for row, audit in zip(rows, audits):
        assert row["samples"] == M * PILOT + M * N                                  # pilot + budget N, all counted
        assert audit["held"] == [PILOT] * M
        if audit["allocation"] == "gvm":
            expected = allocate(audit["G"], audit["p"], M * N, **config.sampler.allocate_kwargs(),
                                objective=audit["objective"], held=audit["held"])
            assert audit["n"] == expected.tolist()
        assert row["n_per_prompt"]["min"] >= PILOT                                  # held + new samples enter
    assert [r["train"]["step"] for r in rows] == [2 * (t + 1) for t in range(ITERATIONS)]   # one train call each


def test_gvm_paper_reweighted_trains_stage_two_alone_and_counts_the_pilot(tmp_path, warm_model, seed):
    """The paper's sampler (pilot thrown away) with sampler.reweight=true in the real loop (the
    weights themselves: tests/test_train_parts.py): stage two alone is trained, every sample counted."""
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=gvm", "sampler.reuse_pilot_samples=false",
                           "sampler.zero_accept=skip", "sampler.reweight=true", "algorithm=raft")
    for row, audit in zip(rows, audits):
        assert row["samples"] == M * PILOT + M * N
        assert sum(audit["n"]) == M * N
        assert row["useful_fraction"] == pytest.approx(sum(audit["accepted"]) / row["samples"])  # stage two's accepted


def test_gvm_pilot_step_is_the_old_two_calls(tmp_path, warm_model, seed):
    rows, _, _ = _run(tmp_path, warm_model, seed, "sampler.kind=gvm", "sampler.pilot_step=true")
    assert rows[-1]["train"]["step"] > 2 * ITERATIONS                                # pilot steps come on top


@pytest.mark.parametrize("algorithm", ["raft++", "grpo"])
def test_adaptive_amortises_its_pilot_and_never_overspends(tmp_path, warm_model, seed, algorithm):
    budget = M * N
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=adaptive", f"algorithm={algorithm}",
                           f"sampler.budget={budget}")
    # 16 training prompts, 8 per iteration: iterations 1-2 see each once (a pilot), 3 comes back
    assert rows[0]["pilot_samples"] == M * PILOT and rows[1]["pilot_samples"] == M * PILOT
    for row, audit in zip(rows, audits):
        assert row["samples"] <= budget and row["samples"] == sum(audit["n"])
        assert audit["n"] == list(np.add(audit["pilot"], np.sum([r["n"] for r in audit["rounds"]] or [[0] * M], 0)))
        for round_ in audit["rounds"]:        # only live prompts are sampled in a round
            assert all(n == 0 for n, live in zip(round_["n"], round_["live"]) if not live)
        # the pilot goes exactly to the prompts whose decayed history is thinner than amortise_after (2)
        history = np.add(*audit["prior_counts"])
        assert audit["pilot"] == [0 if h >= 2 else PILOT for h in history]
    assert sum(r["pilot_samples"] for r in rows[2:]) <= sum(r["pilot_samples"] for r in rows[:2])


@pytest.mark.parametrize("algorithm,screen_out", [("raft++", "auto"), ("grpo", "auto"), ("raft++", "agreeing")])
def test_screened_skips_exactly_the_prompts_its_posterior_rule_screens_out(tmp_path, warm_model, seed, algorithm,
                                                                           screen_out):
    rows, audits, run_dir = _run(tmp_path, warm_model, seed, "sampler.kind=screened", f"algorithm={algorithm}",
                                 f"sampler.screen_out={screen_out}")
    sampler = load_config(run_dir / "config.yaml").sampler
    # auto: the algorithm's groups without gradient (RAFT: unsolved; GRPO: agreeing)
    rule = {"auto": "agreeing" if algorithm == "grpo" else "unsolved"}.get(screen_out, screen_out)
    history: dict[int, list[float]] = {}           # key -> [successes, failures], replayed from the audits
    for row, audit in zip(rows, audits):
        assert row["samples"] == N * len(audit["keys"])                        # n per sampled prompt, all counted
        assert 1 <= len(audit["keys"]) <= M and row["prompts_skipped"] == len(audit["skipped"])
        assert row["prompts_drawn"] >= len(audit["keys"]) + len(audit["skipped"])
        for key in audit["keys"] + audit["skipped"]:                            # every drawn prompt is a visit
            history.setdefault(key, [0.0, 0.0])
            history[key] = [c * sampler.history_decay for c in history[key]]
        chance = {}
        for key in audit["keys"] + audit["skipped"]:
            s, f = history[key]
            p = prob_kept([s], [f], [N], prior=sampler.prior, screen_out=rule)[0]
            chance[key] = 1.0 if s + f == 0 else p
        passing = {k for k, c in chance.items() if c >= sampler.screen_min_useful}
        assert passing <= set(audit["keys"]) and not passing & set(audit["skipped"])  # every passing one sampled
        filled = [chance[k] for k in audit["keys"] if k not in passing]             # the draws ran out: the
        if filled:                                                                 # most promising fill up
            assert len(audit["keys"]) == M
            assert min(filled) >= max((chance[k] for k in audit["skipped"]), default=0.0) - 1e-12
        for key, accepted in zip(audit["keys"], audit["accepted"]):
            history[key][0] += accepted
            history[key][1] += N - accepted
    assert all(not a["skipped"] for a in audits[:2])                           # first visits: nothing to screen on


def test_screen_max_rate_zeroes_exactly_the_nearly_solved_prompts(seed):
    # Random decayed histories: a prompt whose posterior mean (after this visit's fade) is above
    # max_rate gets chance 0, every other one what the rule without max_rate gives; no history: 1.
    rng = np.random.default_rng(seed)
    keys, decay, prior = list(range(40)), float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.2, 1.0))
    max_rate = float(rng.uniform(0.55, 0.75))
    histories = []
    for _ in range(2):                                  # two identical tables: one read with max_rate, one without
        stats = PromptStats()
        stats.visit(keys[:30], 0, decay)                # 10 prompts never seen
        histories.append(stats)
    succ, fail = rng.integers(0, 9, size=30), rng.integers(0, 9, size=30)
    succ[:3], fail[:3] = 8, 0                           # 8 of 8: posterior mean >= 0.77 at decay 0.3, prior 1
    for stats in histories:
        stats.count_outcomes(keys[:30], succ, fail)
    with_cap = screen_chances(histories[0], keys, 1, decay=decay, prior=prior, n=8, screen_out="agreeing",
                              max_rate=max_rate)
    without = screen_chances(histories[1], keys, 1, decay=decay, prior=prior, n=8, screen_out="agreeing")
    mean = posterior_mean(decay * succ, decay * fail, prior=prior)
    nearly_solved = np.concatenate([mean > max_rate, np.zeros(10, bool)])
    print(f"seed {seed}: {int(nearly_solved.sum())} of 30 nearly solved at max_rate {max_rate:.3f}")
    assert nearly_solved[:3].all() and not nearly_solved.all()
    assert np.all(with_cap[nearly_solved] == 0.0)
    assert np.allclose(with_cap[~nearly_solved], without[~nearly_solved])
    assert np.all(with_cap[30:] == 1.0)


def test_screened_pool_all_trains_on_the_likeliest_of_every_prompt(tmp_path, warm_model, seed):
    """sampler.screen_pool=all: each iteration every training prompt is a candidate (its history
    fades), and the M sampled are those with the highest chance; a prompt without history ranks at
    screen_unseen_chance. Replayed from the audits with the rule's own arithmetic."""
    unseen = 0.5
    rows, audits, run_dir = _run(tmp_path, warm_model, seed, "sampler.kind=screened", "algorithm=grpo",
                                 "sampler.screen_pool=all", f"sampler.screen_unseen_chance={unseen}",
                                 "sampler.history_decay=0.97")
    sampler = load_config(run_dir / "config.yaml").sampler
    history: dict[int, list[float]] = {}
    for row, audit in zip(rows, audits):
        keys, skipped = audit["keys"], audit["skipped"]
        assert len(keys) == M and sorted(keys + skipped) == list(range(16))   # every training prompt, once
        assert row["samples"] == N * M and audit["n"] == [N] * M
        assert row["prompts_drawn"] == 16 and row["prompts_skipped"] == 16 - M
        chance = {}
        for key in keys + skipped:
            s, f = [c * sampler.history_decay for c in history.get(key, [0.0, 0.0])]
            history[key] = [s, f]
            chance[key] = unseen if s + f == 0 else prob_kept([s], [f], [N], prior=sampler.prior,
                                                               screen_out="agreeing")[0]
        assert min(chance[k] for k in keys) >= max(chance[k] for k in skipped) - 1e-12
        for key, accepted in zip(keys, audit["accepted"]):
            history[key][0] += accepted
            history[key][1] += N - accepted
    print(f"seed {seed}: chances of the last iteration's sampled prompts {sorted(round(float(chance[k]), 3) for k in keys)}")


def test_screen_chances_ranks_prompts_without_history_at_unseen(seed):
    rng = np.random.default_rng(seed)
    keys, unseen = list(range(12)), float(rng.uniform(0, 1))
    stats = PromptStats()
    stats.visit(keys[:6], 0, 0.9)
    stats.count_outcomes(keys[:6], rng.integers(0, 5, size=6), rng.integers(0, 5, size=6) + 1)
    chances = screen_chances(stats, keys, 1, decay=0.9, prior=0.5, n=4, screen_out="agreeing", unseen=unseen)
    assert np.all(chances[6:] == unseen) and np.all((chances[:6] >= 0) & (chances[:6] <= 1))


def test_screen_group_ranks_prompts_without_history_at_their_groups_mean(tmp_path, warm_model, seed):
    """sampler.screen_group with screen_pool=all: a prompt without history ranks at the mean chance
    of the prompts with history in its group (the built-in task's row field `level`; the tiny task
    has one level, so one group), from the counts as they stand before the iteration's fade; with
    screen_unseen_chance=1 it would rank first. Replayed from the audits with the rule's own arithmetic."""
    rows, audits, run_dir = _run(tmp_path, warm_model, seed, "sampler.kind=screened", "algorithm=grpo",
                                 "sampler.screen_pool=all", "sampler.screen_unseen_chance=1.0",
                                 "sampler.screen_group=level", "sampler.screen_group_min_seen=1",
                                 "sampler.history_decay=0.97")
    sampler = load_config(run_dir / "config.yaml").sampler
    history: dict[int, list[float]] = {}
    pooled_used = 0
    for audit in audits:
        keys, skipped = audit["keys"], audit["skipped"]
        assert len(keys) == M and sorted(keys + skipped) == list(range(16))
        counts = [history[k] for k in history]
        group_mean = float(np.mean(history_chances([c[0] for c in counts], [c[1] for c in counts], prior=sampler.prior,
                                                   n=N, screen_out="agreeing"))) if counts else 1.0
        chance = {}
        for key in keys + skipped:
            if key not in history:
                chance[key] = group_mean
                pooled_used += bool(counts)
            else:
                s, f = [c * sampler.history_decay for c in history[key]]
                history[key] = [s, f]
                chance[key] = prob_kept([s], [f], [N], prior=sampler.prior, screen_out="agreeing")[0]
        assert min(chance[k] for k in keys) >= max(chance[k] for k in skipped) - 1e-12
        for key, accepted in zip(keys, audit["accepted"]):
            history.setdefault(key, [0.0, 0.0])
            history[key][0] += accepted
            history[key][1] += N - accepted
    assert pooled_used > 0      # iteration 2 ranks the 8 prompts iteration 1 did not sample at the group's mean
    print(f"seed {seed}: {pooled_used} rankings of a prompt without history at its group's mean")


def test_group_chances_is_the_mean_chance_of_the_groups_prompts_with_history(seed):
    rng = np.random.default_rng(seed)
    labels = [0, "b", (1, 2), [3]]                            # any row value; a list by its repr
    prompts = [Prompt(key=k, problem="", gold="", token_ids=[], row={"level": labels[int(rng.integers(4))]})
               for k in range(int(rng.integers(20, 60)))]
    stats = PromptStats()
    with_history = [p.key for p in prompts if rng.uniform() < 0.6]
    stats.count_outcomes(with_history, rng.uniform(0, 6, len(with_history)), rng.uniform(0, 6, len(with_history)))
    before = {k: (r.successes, r.failures) for k, r in stats.records.items()}
    min_seen = int(rng.integers(1, 6))
    rule = dict(prior=0.5, n=int(rng.integers(2, 9)), screen_out="agreeing", max_rate=float(rng.uniform(0.5, 1)))
    got = group_chances(stats, prompt_groups(prompts, "level"), [p.key for p in prompts], min_seen=min_seen, **rule)
    for i, prompt in enumerate(prompts):
        mates = [p.key for p in prompts if p.row["level"] == prompt.row["level"] and p.key in with_history]
        if len(mates) < min_seen:
            assert np.isnan(got[i])
        else:
            expected = np.mean([history_chances([before[k][0]], [before[k][1]], **rule)[0] for k in mates])
            assert got[i] == pytest.approx(expected, rel=1e-12)
    assert {k: (r.successes, r.failures) for k, r in stats.records.items()} == before     # nothing faded


def _screened(overrides: list[str], rows: list[dict]) -> ScreenedSampler:
    """A ScreenedSampler over prompts with these rows, built without an engine (it must not need one)."""
    config = load_config(None, ["algorithm=grpo", "sampler.kind=screened", *overrides])
    prompts = [Prompt(key=k, problem="", gold="", token_ids=[], row=row) for k, row in enumerate(rows)]
    context = SamplerContext(cfg=config, algorithm=None, rollouts=None, swap=None, timer=None, trainer=None,
                             stream=PromptStream(prompts, seed=0), stats=PromptStats())
    return ScreenedSampler(context)


def test_screen_group_names_a_missing_field_before_anything_is_generated():
    with pytest.raises(ConfigError, match=r"sampler\.screen_group='subject'.*its fields: level, solution"):
        _screened(["sampler.screen_group=subject"], [{"level": 1, "solution": ""}] * 3)


def test_screen_group_auto_pools_by_level_only_where_every_row_has_two_or_more_levels(seed, caplog):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(3, 40))
    levels = [int(v) for v in rng.integers(1, 4, size)]
    levels[0], levels[1] = 1, 2                                          # at least two values
    field = SCREEN_GROUP_AUTO_FIELD
    cases = {"every row, two or more values": ([{field: v} for v in levels], field),
             "one value": ([{field: 3}] * size, ""),
             "a row without it": ([{field: v} for v in levels[:-1]] + [{"subject": "x"}], "")}
    print(f"seed {seed}: {size} rows")
    for name, (rows, expected) in cases.items():
        caplog.clear()
        prompts = [Prompt(key=k, problem="", gold="", token_ids=[], row=row) for k, row in enumerate(rows)]
        with caplog.at_level("INFO", logger="gvm.samplers"):
            assert screen_group_field(prompts, "auto") == expected, name
        assert "sampler.screen_group=auto" in caplog.text, name                     # said in the log either way
        assert screen_group_field(prompts, "subject") == "subject"                   # a named field is not resolved
        assert screen_group_field(prompts, "") == ""
        grouped = _screened(["sampler.screen_group=auto"], rows)._group_of
        assert grouped == ({p.key: p.row[field] for p in prompts} if expected else {}), name


def test_screened_fills_the_batch_when_every_draw_is_screened_out(tmp_path, warm_model, seed):
    # A threshold no prompt with history meets: iteration 3 draws the 16 training prompts (the
    # draw limit: the training set) and the 8 most promising fill the batch, so the step keeps its size.
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=screened", "sampler.screen_min_useful=1.0")
    assert [len(a["keys"]) for a in audits] == [M, M, M]
    assert rows[2]["prompts_drawn"] == 16 and rows[2]["prompts_skipped"] == 16 - M and rows[2]["samples"] == N * M


def test_screened_probe_completes_only_groups_whose_probe_carries_gradient(tmp_path, warm_model, seed):
    """sampler.screen_probe=2 with GRPO: a prompt without history gets 2 samples first; it is trained
    on (its group completed to N) only when they differ, else dropped; every sample is counted."""
    probe = 2
    rows, audits, _ = _run(tmp_path, warm_model, seed, "sampler.kind=screened", "algorithm=grpo",
                           f"sampler.screen_probe={probe}")
    seen: set[int] = set()
    for row, audit in zip(rows, audits):
        assert audit["probe"] == probe and len(audit["keys"]) <= M
        first = [k for k in audit["keys"] if k not in seen]           # probed, and their probe differed
        with_history = [k for k in audit["keys"] if k in seen]
        assert not set(audit["dropped"]) & seen                        # only prompts without history are probed
        assert all(a in (0, probe) for a in audit["dropped_accepted"])   # dropped: the probe agreed
        for key, accepted in zip(audit["keys"], audit["accepted"]):
            if key in first:
                assert 0 < accepted < N                               # the probe's two outcomes are in the group
        assert row["prompts_probed"] == len(first) + len(audit["dropped"])
        assert row["prompts_dropped"] == len(audit["dropped"])
        assert row["samples"] == probe * len(audit["dropped"]) + N * len(audit["keys"])   # all counted
        assert audit["n"] == [N] * len(audit["keys"])
        assert len(with_history) + len(first) == len(audit["keys"])
        seen.update(audit["keys"] + audit["dropped"] + audit["skipped"])
    assert rows[0]["prompts_probed"] >= M                               # iteration 1: nothing has history
