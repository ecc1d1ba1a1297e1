"""The convergence benchmark's reading of curves (benchmarks/curves.py): the monotone fit, the cost
to reach a target, the paired ratios and the bootstrap interval, on fresh random curves."""
import random
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from curves import (bootstrap_median, bootstrap_pooled_ratio, cost_to_reach, cumulative_useful, isotonic,  # noqa: E402
                    paired_ratios, pooled_ratio, pooled_ratio_missing, ratio_text, seed_mean_curve)


def test_isotonic_is_the_closest_non_decreasing_fit(seed):
    rng = random.Random(seed)
    values = [rng.uniform(0, 1) for _ in range(rng.randint(1, 30))]
    fit = isotonic(values)
    assert all(a <= b + 1e-12 for a, b in zip(fit, fit[1:]))
    assert sum(fit) == pytest.approx(sum(values))                 # pooling keeps every block's mean
    assert isotonic(sorted(values)) == pytest.approx(sorted(values))


def test_cost_to_reach_interpolates_the_fit():
    costs, accs = [0, 100, 200, 300], [0.2, 0.3, 0.25, 0.4]       # the fit is 0.2, 0.275, 0.275, 0.4
    assert cost_to_reach(costs, accs, 0.2) == 0
    assert cost_to_reach(costs, accs, 0.3) == pytest.approx(200 + 100 * (0.3 - 0.275) / (0.4 - 0.275))
    assert cost_to_reach(costs, accs, 0.41) is None


def test_a_method_that_never_reaches_the_target_gets_no_credit():
    ratios = paired_ratios({0: 1000.0, 1: 800.0, 2: None}, {0: (500.0, 900.0), 1: (None, 300.0), 2: (10.0, 10.0)})
    assert ratios == {0: 2.0, 1: 0.0}                              # seed 2: the baseline itself never got there


def test_a_baseline_that_ends_no_better_than_it_started_leaves_its_seed_out():
    accuracies = [0.23, 0.04, 0.02]                     # a collapsed run: its final is below its start
    target = sum(accuracies[-2:]) / 2
    base = cost_to_reach([0.0, 100.0, 200.0], accuracies, target)
    assert base == 0.0
    assert paired_ratios({0: base, 1: 400.0}, {0: (0.0, 200.0), 1: (200.0, 400.0)}) == {1: 2.0}


def test_a_method_that_meets_the_target_at_its_start_leaves_its_seed_out():
    # Seen at lr 3e-4: uniform dipped and ended below the start, uniform2x's monotone fit stayed
    # above uniform's final from its first evaluation on (cost 0: no ratio, not a division by zero).
    target = 0.219
    method = cost_to_reach([0.0, 100.0, 200.0], [0.227, 0.224, 0.222], target)
    assert method == 0.0
    assert paired_ratios({0: 150.0, 1: 400.0}, {0: (method, 200.0), 1: (200.0, 400.0)}) == {1: 2.0}


def test_useful_samples_add_each_iterations_fraction_of_what_it_generated(seed):
    rng = random.Random(seed)
    rows, generated, expected = [{"iteration": 0, "samples_generated": 0}], 0, [0.0]
    for iteration in range(1, rng.randint(2, 12)):
        step = rng.randint(1, 600)
        fraction = rng.choice([None, rng.random()])      # None: a row that logged no fraction adds none
        generated += step
        rows.append({"iteration": iteration, "samples_generated": generated, "useful_fraction": fraction})
        expected.append(expected[-1] + (fraction or 0.0) * step)
    assert cumulative_useful(rows) == pytest.approx(expected)
    resumed = [{**rows[0], "samples_generated": 1000, "useful_fraction": 0.9}]   # the start adds nothing
    assert cumulative_useful(resumed) == [0.0]


def test_bootstrap_interval_holds_the_median(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(0, 0.3) for _ in range(7)]
    median, low, high = bootstrap_median(values, rounds=2000, seed=seed)
    assert median == statistics.median(values) and min(values) <= low <= median <= high <= max(values)


def _rising_runs(rng: random.Random, seeds: int, evaluations: int) -> dict:
    """Per seed, {iteration: (samples, accuracy)} rising from one start (the runs of one method)."""
    runs = {}
    for s in range(seeds):
        accs = [0.2]
        for _ in range(evaluations - 1):
            accs.append(accs[-1] + rng.uniform(0.001, 0.05))
        runs[s] = {5 * i: (256.0 * 5 * i * rng.uniform(0.9, 1.1) if i else 0.0, a) for i, a in enumerate(accs)}
    return runs


def test_seed_mean_curve_averages_the_evaluations_every_run_has(seed):
    rng = random.Random(seed)
    runs = list(_rising_runs(rng, rng.randint(1, 5), rng.randint(2, 6)).values())
    longest = max(runs, key=len)
    extra = max(longest) + 5
    longest[extra] = (1e9, 1.0)                                 # one run evaluated once more: not averaged
    costs, accs = seed_mean_curve(runs)
    shared = sorted(set.intersection(*(set(r) for r in runs)))
    assert len(costs) == len(accs) == len(shared) and (len(runs) == 1 or extra not in shared)
    for i, it in enumerate(shared):
        assert costs[i] == pytest.approx(sum(r[it][0] for r in runs) / len(runs))
        assert accs[i] == pytest.approx(sum(r[it][1] for r in runs) / len(runs))


def test_a_method_at_the_references_accuracy_for_a_kth_of_the_cost_is_k_times_cheaper_pooled(seed):
    """The seed-averaged reading, checked where the answer is known: a method whose every run is
    the reference's at cost / k reaches the reference's mean final at 1/k of its cost, on every
    bootstrap draw too."""
    rng = random.Random(seed)
    reference = _rising_runs(rng, rng.randint(1, 6), rng.randint(3, 7))
    k = rng.uniform(0.3, 4.0)
    method = {s: {it: (cost / k, acc) for it, (cost, acc) in run.items()} for s, run in reference.items()}
    assert pooled_ratio(reference, reference, method) == pytest.approx(k)
    ratio, low, high = bootstrap_pooled_ratio(reference, reference, method, rounds=200, seed=seed)
    assert (ratio, low, high) == pytest.approx((k, k, k))
    assert bootstrap_pooled_ratio(reference, reference, reference, rounds=50) == pytest.approx((1.0, 1.0, 1.0))


def test_pooled_ratio_gives_no_credit_to_a_mean_curve_that_falls_short():
    reference = {0: {0: (0.0, 0.2), 5: (100.0, 0.3), 10: (200.0, 0.4)},       # mean final 0.35 (last two)
                 1: {0: (0.0, 0.2), 5: (100.0, 0.3), 10: (200.0, 0.4)}}
    short = {0: {0: (0.0, 0.2), 5: (50.0, 0.5), 10: (100.0, 0.5)},          # seed 0 alone would get there...
             1: {0: (0.0, 0.2), 5: (50.0, 0.1), 10: (100.0, 0.2)}}          # ...the mean (0.35) only at its end
    assert pooled_ratio(reference, reference, short) == pytest.approx(150.0 / 100.0)
    short[1][10] = (100.0, 0.19)
    assert pooled_ratio(reference, reference, short) == 0.0
    flat = {s: {it: (c, 0.5) for it, (c, _) in run.items()} for s, run in reference.items()}
    assert pooled_ratio(reference, reference, flat) is None               # there from its start: says nothing
    assert pooled_ratio(reference, short, reference) is None              # the baseline never gets there
    assert pooled_ratio(reference, reference, {7: reference[0]}) is None  # no seed in common
    # and the report says why in words, not "nanx (nan-nan)"
    assert pooled_ratio_missing(reference, reference, short) is None
    assert pooled_ratio_missing(reference, short, reference) == ("the baseline's seed-averaged curve never "
                                                                 "reaches the target (0.3500)")
    assert pooled_ratio_missing(reference, reference, flat) == "a seed-averaged curve is at the target from its start"
    assert pooled_ratio_missing(reference, reference, {7: reference[0]}) == "no seed in common"
    assert ratio_text((float("nan"),) * 3, "why") == "none: why"
    assert ratio_text((1.5, 1.25, 2.0)) == "1.50x (1.25-2.00)"


def test_the_tuned_baseline_is_the_best_uniform_over_shared_seeds_and_scores_every_arm():
    from tuned_baseline import best_baseline, score
    up = [(0.0, 0.2), (100.0, 0.3), (200.0, 0.4)]                  # final 0.35, reached at 150 samples
    arms = {"uniform lr 0.0002": {0: [(0.0, 0.2), (100.0, 0.22), (200.0, 0.28)], 1: [(0.0, 0.2), (100.0, 0.25), (200.0, 0.25)],
                                  2: [(0.0, 0.2), (100.0, 0.9), (200.0, 1.0)]},       # a lucky seed the other lacks
            "uniform lr 0.0004": {0: up, 1: up},
            "screened lr 0.0004": {0: [(0.0, 0.2), (50.0, 0.3), (100.0, 0.4)], 1: [(0.0, 0.2), (100.0, 0.25)]}}
    baseline, seeds, candidates = best_baseline(arms, ["uniform"], min_seeds=2)
    assert (baseline, seeds, candidates) == ("uniform lr 0.0004", [0, 1], ["uniform lr 0.0002", "uniform lr 0.0004"])
    # Tuned on samples per step too: uniform at n/4 per prompt is a candidate of "uniform*"; with
    # one seed it is not (min_seeds), so it cannot win on a lucky run.
    quarter = {"uniform-quarter lr 0.0002": {0: [(0.0, 0.2), (400.0, 0.95)]}}
    assert best_baseline({**arms, **quarter}, ["uniform*"], min_seeds=2)[0] == "uniform lr 0.0004"
    quarter["uniform-quarter lr 0.0002"][1] = [(0.0, 0.2), (400.0, 0.9)]
    assert best_baseline({**arms, **quarter}, ["uniform*"], min_seeds=2)[0] == "uniform-quarter lr 0.0002"
    assert best_baseline({**arms, **quarter}, ["uniform"], min_seeds=2)[0] == "uniform lr 0.0004"
    scored = score(arms, baseline)
    assert scored["uniform lr 0.0004"]["per_seed"] == {0: 1.0, 1: 1.0}
    assert scored["screened lr 0.0004"]["per_seed"] == {0: 2.0, 1: 0.0}       # seed 1 never gets there
    assert scored["screened lr 0.0004"]["reached"] == 1
    assert scored["uniform lr 0.0002"]["seeds"] == [0, 1]                      # only seeds the baseline ran
    # Seed-averaged: the screened mean curve (evaluations both seeds have) stops at 0.275 < 0.35
    assert scored["screened lr 0.0004"]["pooled"][0] == 0.0
    assert scored["uniform lr 0.0004"]["pooled"][0] == 1.0


def test_a_baseline_scored_against_itself_is_level_on_every_seed(seed):
    from tuned_baseline import score
    rng = random.Random(seed)
    curves = {}
    for s in range(rng.randint(1, 6)):
        accs = [0.2]
        for _ in range(rng.randint(2, 8)):
            accs.append(accs[-1] + rng.uniform(0.001, 0.05))           # rising: the target lies above the start
        curves[s] = [(100.0 * i, a) for i, a in enumerate(accs)]
    scored = score({"uniform lr 1": curves}, "uniform lr 1")["uniform lr 1"]
    assert set(scored["per_seed"].values()) == {1.0}
    assert scored["pooled"] == (1.0, 1.0, 1.0)


def test_runs_that_start_elsewhere_than_their_seed_are_not_paired(seed):
    """Every run of a seed starts at the same accuracy before RL (one warm start, one held-out set);
    one from another machine or a damaged folder does not, and is the one reported."""
    from tuned_baseline import unpaired
    rng = random.Random(seed)
    seeds = range(rng.randint(1, 5))
    starts = {s: rng.uniform(0.1, 0.3) for s in seeds}
    labels = [f"uniform lr {i}" for i in range(rng.randint(3, 6))]
    arms = {label: {s: [(0.0, starts[s]), (100.0, starts[s] + rng.uniform(0, 0.1))] for s in seeds}
            for label in labels}
    assert unpaired(arms) == []
    odd_label, odd_seed = rng.choice(labels), rng.choice(list(seeds))
    moved = starts[odd_seed] + rng.choice([-1, 1]) * rng.uniform(1e-4, 0.05)
    arms[odd_label][odd_seed] = [(0.0, moved), (100.0, 0.5)]
    assert unpaired(arms) == [(odd_label, odd_seed, moved, starts[odd_seed])]


def test_method_names_parse_to_their_settings_and_bad_ones_are_refused():
    from bench_convergence import iterations_of, method_overrides, parse_args, run_overrides, variant_overrides
    args = parse_args(["--methods", "uniform,uniform-quarter-rp,screened@2x32-rp,gvm-iw-rp", "--iterations", "20"])
    assert parse_args(["--methods", "uniform@1x64,screened@1x128", "--reference", "uniform@1x64",
                       "--algorithms", "raft++"]).reference == "uniform@1x64"
    for method in ("uniform-quarter", "screened@2x32", "gvm-iw"):
        assert method_overrides(args, method + "-rp") == [*method_overrides(args, method), "sampler.replay=1"]
        assert iterations_of(args, method + "-rp") == iterations_of(args, method)
    assert "sampler.replay=1" not in method_overrides(args, "uniform")
    assert iterations_of(args, "screened@2x32") == 160          # a quarter of the prompts at 2 of 8: 8x the iterations
    assert iterations_of(parse_args(["--methods", "uniform,uniform@1x128", "--algorithms", "raft++"]), "uniform@1x128") == 80
    variant = parse_args(["--methods", "uniform,screened-quarter-rp~hold", "--variant",
                          "hold=sampler.history_decay=0.9;sampler.screen_out=agreeing"])
    assert method_overrides(variant, "screened-quarter-rp~hold") == method_overrides(variant, "screened-quarter-rp")
    assert variant_overrides(variant, "screened-quarter-rp~hold") == ["sampler.history_decay=0.9",
                                                                      "sampler.screen_out=agreeing"]
    assert variant_overrides(variant, "screened-quarter-rp") == []
    # a variant changes a setting --extra gives every run: it comes after it, and the last one wins
    extra = parse_args(["--methods", "uniform,screened~fade", "--variant", "fade=sampler.history_decay=0.7",
                        "--extra", "sampler.history_decay=0.9"])
    keys = run_overrides(extra, "x", method_overrides(extra, "screened~fade"), 3,
                         variant_overrides(extra, "screened~fade"))
    assert [k for k in keys if k.startswith("sampler.history_decay=")][-1] == "sampler.history_decay=0.7"
    assert iterations_of(variant, "screened-quarter-rp~hold") == iterations_of(variant, "screened-quarter")
    for bad in (["--methods", "thompson-rp"], ["--methods", "uniform-rp-rp"], ["--methods", "uniform@0"],
                ["--methods", "uniform,screened~nope"], ["--methods", "uniform", "--variant", "hold"],
                ["--methods", "uniform,thompson~hold", "--variant", "hold=sampler.prior=1"],
                ["--methods", "uniform,uniform@1x128", "--algorithms", "raft++,grpo"],    # a GRPO group needs two
                ["--methods", "uniform@1x64,screened@1x128"],                    # the reference (uniform) is not run
                ["--methods", "uniform", "--reference", "uniform@1x64"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_reused_run_names_the_settings_it_was_made_with_that_differ_now(tmp_path):
    import yaml
    from bench_convergence import changed_settings

    from gvm.config import load_config
    made = ["sampler.kind=screened", "sampler.screen_group=", "iterations=20", "eval.every=5"]
    saved = yaml.safe_load(load_config(None, made).to_yaml())
    del saved["sampler"]["screen_max_rate"]                   # a key added after the run: not compared
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert changed_settings(tmp_path, made) == []
    assert changed_settings(tmp_path, [*made, "iterations=80", "eval.every=10", "sampler.screen_max_rate=0.9"]) == []
    now = [*made[:1], "iterations=20"]                         # screen_group's default now, "auto"
    assert changed_settings(tmp_path, now) == ["sampler.screen_group: '' -> 'auto'"]


def test_the_plot_draws_every_method_against_both_costs(seed, tmp_path):
    from bench_convergence import plot
    rng = random.Random(seed)
    curves = {"grpo": {method: {s: [(256 * it * (s + 1), 10.0 * it, rng.random(), it, 100.0 * it) for it in range(0, 9, 2)]
                                for s in range(rng.randint(1, 3))} for method in ("uniform", "screened")}}
    curves["grpo"]["screened"][0].insert(1, (128, 5.0, 0.5, 1, 50.0))   # a denser run: only shared iterations drawn
    plot(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
