"""Run configuration: YAML + key=value overrides into frozen dataclasses, checked before any work
(gvm/config.py). No model or engine is started here."""
import dataclasses
import random
from pathlib import Path

import pytest
import yaml

from gvm.algorithms import ALGORITHMS
from gvm.config import (ConfigError, RunConfig, SamplerConfig, check_model_folder, check_paths, from_dict,
                        load_config, parse_override)
from gvm.engines.base import SamplingConfig
from gvm.toy import build_tokenizer
from gvm.trainer_config import TrainerConfig
from gvm.verify import VerifierConfig

@pytest.fixture
def rng(seed):
    return random.Random(seed)


def test_defaults_are_the_builtin_run():
    cfg = load_config()
    assert cfg.builtin_model and cfg.builtin_task
    assert cfg.algorithm == "raft++" and cfg.sampler.kind == "screened"
    assert cfg.prompt_style == "compact" and cfg.warmstart_steps > 0
    # the reused classes are the real ones, with the derived fields in step
    assert isinstance(cfg.trainer, TrainerConfig) and isinstance(cfg.rollout.sampling, SamplingConfig)
    assert isinstance(cfg.verifier, VerifierConfig)
    assert cfg.trainer.algorithm == cfg.algorithm and cfg.trainer.temperature == cfg.rollout.sampling.temperature
    assert cfg.sampler.n_per_prompt == 2         # RAFT++'s best measured (gvm.algorithms)
    # the screened settings of the RAFT++ winner on the hard-tail task (docs/train.md)
    assert (cfg.sampler.screen_out, cfg.sampler.screen_group, cfg.sampler.history_decay) == ("agreeing", "auto", 0.9)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_samples_per_prompt_default_to_the_algorithms_and_an_explicit_value_wins(algorithm):
    cfg = load_config(None, [f"algorithm={algorithm}"])
    own = ALGORITHMS[algorithm].n_per_prompt
    assert cfg.sampler.n_per_prompt == own and cfg.sampler.stage2_budget(10) == 10 * own
    assert cfg.to_dict()["sampler"]["n_per_prompt"] == own        # written resolved: resume compares it
    assert from_dict(cfg.to_dict()).sampler.n_per_prompt == own
    other = own + 3
    assert load_config(None, [f"algorithm={algorithm}", f"sampler.n_per_prompt={other}"]).sampler.n_per_prompt == other


def test_an_unresolved_sampler_says_what_to_set():
    with pytest.raises(ConfigError, match="sampler.n_per_prompt=null"):
        SamplerConfig().stage2_budget(8)
    assert SamplerConfig(budget=12).stage2_budget(8) == 12
    with pytest.raises(ConfigError, match="sampler.n_per_prompt=0: must be >= 1 or null"):
        load_config(None, ["sampler.n_per_prompt=0"])


def test_overrides_are_typed_by_the_field(rng):
    budget, lr, top_p = rng.randint(1, 500), rng.uniform(1e-7, 1e-2), rng.uniform(0.1, 1.0)
    cfg = load_config(None, [f"sampler.budget={budget}", f"trainer.lr={lr:e}", f"rollout.sampling.top_p={top_p}",
                             "sampler.reuse_pilot_samples=false", "sampler.max_per_prompt=null",
                             "task.levels=[1,3,5]", "trainer.adam_betas=[0.8, 0.95]", "algorithm=grpo",
                             "rollout.vllm={tensor_parallel_size: 2}"])
    assert cfg.sampler.budget == budget and isinstance(cfg.sampler.budget, int)
    assert cfg.trainer.lr == pytest.approx(lr, rel=1e-6) and isinstance(cfg.trainer.lr, float)
    assert cfg.rollout.sampling.top_p == pytest.approx(top_p)
    assert cfg.sampler.reuse_pilot_samples is False and cfg.sampler.max_per_prompt is None
    assert cfg.task.levels == (1, 3, 5) and cfg.trainer.adam_betas == (0.8, 0.95)
    assert cfg.algorithm == "grpo" and cfg.trainer.algorithm == "grpo"
    assert cfg.rollout.vllm == {"tensor_parallel_size": 2}


def test_shortcuts_and_yaml_file_then_overrides(tmp_path, rng):
    budget = rng.randint(10, 99)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "preset", "budget": budget, "eval_every": 3,
                                    "sampler": {"pilot_n": 6}, "trainer": {"lr": 5e-4}}))
    cfg = load_config(path, ["sampler.pilot_n=2", "train_data=some/file.jsonl"])
    assert cfg.name == "preset" and cfg.sampler.budget == budget and cfg.eval.every == 3
    assert cfg.sampler.pilot_n == 2                      # the command line wins over the file
    assert cfg.trainer.lr == 5e-4 and cfg.trainer.grad_norm_params == "embed"  # run defaults kept
    assert cfg.data.train_data == "some/file.jsonl" and not cfg.builtin_task and cfg.prompt_style == "cot"


def test_saved_config_loads_back_equal(tmp_path, rng):
    overrides = [f"seed={rng.randint(0, 10**6)}", f"sampler.alpha={rng.uniform(0, 0.1)}",
                 f"trainer.clip_high={rng.uniform(0.2, 0.4)}", f"task.num_train={rng.randint(50, 5000)}",
                 "task.levels=[1, 2, 3, 4, 5]", "task.level_weights=[1, 1, 2, 3, 3]", "rollout.sampling.stop_token_ids=[5, 7]"]
    cfg = load_config(None, overrides)
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert "model_path" not in yaml.safe_load(path.read_text())["trainer"]


@pytest.mark.parametrize("override, key, fragment", [
    ("sampler.kind=thompson", "sampler.kind", "must be one of"),
    ("sampler.budget=0", "sampler.budget", ">= 1"),
    ("sampler.budget=ten", "sampler.budget", "must be an integer"),
    ("sampler.pilot_n=0", "sampler.pilot_n", ">= 1"),
    ("sampler.replay=-1", "sampler.replay", ">= 0"),
    ("sampler.stats_ema=1.0", "sampler.stats_ema", "[0, 1)"),
    ("sampler.zero_accept=drop", "sampler.zero_accept", "must be one of"),
    ("sampler.screen_min_useful=1.5", "sampler.screen_min_useful", "[0, 1]"),
    ("sampler.screen_max_rate=0", "sampler.screen_max_rate", "(0, 1]"),
    ("sampler.screen_max_draws=0", "sampler.screen_max_draws", ">= 1"),
    ("sampler.screen_probe=-1", "sampler.screen_probe", ">= 0"),
    ("sampler.screen_pool=every", "sampler.screen_pool", "must be one of"),
    ("sampler.screen_unseen_chance=1.5", "sampler.screen_unseen_chance", "[0, 1]"),
    ("sampler.screen_group_min_seen=0", "sampler.screen_group_min_seen", ">= 1"),
    ("algorithm=ppo", "algorithm", "must be one of"),
    ("iterations=-1", "iterations", ">= 0"),
    ("epochs=0", "epochs", ">= 1"),
    ("data.prompts_per_iteration=0", "data.prompts_per_iteration", ">= 1"),
    ("rollout.engine=sglang", "rollout.engine", "must be one of"),
    ("rollout.sampling.temperature=0", "rollout.sampling.temperature", "must be > 0"),
    ("eval.k=0", "eval.k", ">= 1"),
    ("task.levels=[1, 9]", "task.levels", "distinct levels"),
    ("task.level_weights=[1.5, 2.5]", "task.level_weights", "one per level"),
    ("tiny.hidden_size=100", "tiny.hidden_size", "head_dim * num_heads"),
    ("resume=maybe", "resume", "true or false"),
    ("name=a/b", "name", "without '/'"),
])
def test_bad_values_name_key_value_and_what_is_allowed(override, key, fragment):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert f"{key}=" in message and fragment in message
    assert repr(parse_override(override)[1]) in message or str(parse_override(override)[1]) in message


def test_a_probe_must_leave_room_in_the_group():
    with pytest.raises(ConfigError, match=r"config key sampler\.screen_probe=4: must be below sampler\.n_per_prompt \(4\)"):
        load_config(None, ["algorithm=grpo", "sampler.kind=screened", "sampler.screen_probe=4"])
    with pytest.raises(ConfigError, match=r"sampler\.screen_probe=1: must be >= 2 where the screen skips agreeing"):
        load_config(None, ["algorithm=grpo", "sampler.kind=screened", "sampler.screen_probe=1"])
    assert load_config(None, ["algorithm=grpo", "sampler.kind=screened", "sampler.screen_probe=2"]).sampler.screen_probe == 2
    with pytest.raises(ConfigError, match=r"sampler\.screen_probe=2: needs sampler\.screen_pool=draws"):
        load_config(None, ["algorithm=grpo", "sampler.kind=screened", "sampler.screen_probe=2", "sampler.screen_pool=all"])
    with pytest.raises(ConfigError, match=r"sampler\.screen_probe=1: must be >= 2 where the screen skips agreeing"):
        load_config(None, ["algorithm=raft++", "sampler.kind=screened", "sampler.screen_probe=1"])   # the default
    assert load_config(None, ["algorithm=raft++", "sampler.kind=screened", "sampler.screen_probe=1",
                              "sampler.screen_out=unsolved"]).sampler.screen_probe == 1


def test_reused_class_errors_carry_their_section():
    with pytest.raises(ConfigError, match=r"config key trainer\.zero_stage=5: must be 0, 1, 2 or 3"):
        load_config(None, ["trainer.zero_stage=5"])
    with pytest.raises(ConfigError, match=r"rollout.sampling.*top_p"):
        load_config(None, ["rollout.sampling.top_p=0"])
    with pytest.raises(ConfigError, match=r"verifier.*num_workers"):
        load_config(None, ["verifier.num_workers=-1"])


def test_unknown_keys_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'sampler.budgte'.*did you mean 'budget'"):
        load_config(None, ["sampler.budgte=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'.*allowed in the top level"):
        load_config(None, ["learning_rate=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.lrr'"):
        from_dict({"trainer": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["sampler.budget"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_config(None, ["seed=1", "seed.x=1"])


def test_derived_trainer_fields_point_to_their_key():
    for key, owner in (("algorithm", "algorithm"), ("model_path", "model"), ("temperature", "rollout.sampling.temperature")):
        with pytest.raises(ConfigError, match=f"trainer.{key} is set by the key '{owner}'"):
            load_config(None, [f"trainer.{key}=1"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="sampler.max_per_prompt.*must reach the budget 100"):
        load_config(None, ["sampler.kind=gvm", "data.prompts_per_iteration=10", "sampler.budget=100",
                           "sampler.max_per_prompt=9"])
    with pytest.raises(ConfigError, match="sampler.min_per_prompt.*exceeds the budget 20"):
        load_config(None, ["sampler.kind=gvm", "data.prompts_per_iteration=10", "sampler.budget=20",
                           "sampler.min_per_prompt=3"])
    with pytest.raises(ConfigError, match="grad_norm_params='none'"):
        load_config(None, ["trainer.grad_norm_params=none", "sampler.kind=gvm"])
    for kind in ("uniform", "adaptive", "screened"):  # adaptive reads G_i off the training step (none: all 1)
        assert load_config(None, ["trainer.grad_norm_params=none", f"sampler.kind={kind}"]).sampler.kind == kind
    with pytest.raises(ConfigError, match="kl_coef"):
        load_config(None, ["algorithm=raft", "trainer.kl_coef=0.001"])


def test_missing_files_and_model_folders_fail_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train_data='.*nope.jsonl': file not found"):
        check_paths(load_config(None, [f"train_data={tmp_path / 'nope.jsonl'}"]))
    with pytest.raises(ConfigError, match=r"data.eval_data=.*file not found"):
        check_paths(load_config(None, [f"eval_data={tmp_path / 'math.jsonl'}"]))
    with pytest.raises(ConfigError, match=r"model=.*not a folder"):
        check_paths(load_config(None, [f"model={tmp_path / 'absent'}"]))
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        check_model_folder(str(folder), "model")
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"model=.*has no tokenizer"):
        check_paths(load_config(None, [f"model={folder}"]))
    build_tokenizer().save_pretrained(folder)
    check_paths(load_config(None, [f"model={folder}"]))  # now complete


def test_config_is_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


@pytest.mark.parametrize("preset", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_presets_load_and_name_their_run(preset):
    cfg = load_config(preset, ["model=/any/model", "train_data=/any/train.jsonl"])
    assert cfg.name == preset.stem
    assert cfg.sampler.kind in ("gvm", "uniform") and cfg.algorithm in ("raft++", "grpo")


PAPER_PRESETS = {"paper_gvm_raft++": ("raft++", "gvm"), "paper_gvm_grpo": ("grpo", "gvm"),
                 "paper_raft++": ("raft++", "uniform"), "paper_grpo": ("grpo", "uniform")}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_carry_the_authors_settings(name):
    """The RLHFlow/GVM run scripts: 1024 prompts per iteration, N' = 8, N = 8 per prompt, alpha 1e-3,
    beta 2, unsolved prompts skipped, no cap, floor or filters, the pilot thrown away, lr 1e-6,
    clip 0.2, temperature 1, responses up to 3072 tokens, token-mean, GRPO's KL 1e-3."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml",
                      ["model=/any/model", "train_data=/any/train.jsonl"])
    algorithm, sampler = PAPER_PRESETS[name]
    assert (cfg.algorithm, cfg.sampler.kind) == (algorithm, sampler)
    assert cfg.data.prompts_per_iteration == 1024
    assert cfg.sampler.stage2_budget(cfg.data.prompts_per_iteration) == 8 * 1024        # N = 8 per prompt
    if sampler == "gvm":
        assert cfg.sampler.pilot_n == 8
        assert cfg.sampler.allocate_kwargs() == {
            "alpha": 1e-3, "beta": 2.0, "min_per_prompt": 0, "max_per_prompt": None, "filter_threshold": None,
            "filter_insufficient": None, "zero_accept": "skip", "explore_per_prompt": 1, "explore_fraction": 0.1}
        assert not cfg.sampler.reuses_pilot
    trainer = cfg.trainer
    assert trainer.lr == 1e-6 and trainer.clip_low == trainer.clip_high == 0.2 and trainer.loss_agg == "token-mean"
    assert trainer.kl_coef == (1e-3 if algorithm == "grpo" else 0.0)
    assert cfg.rollout.sampling.temperature == 1.0 and trainer.temperature == 1.0
    assert cfg.rollout.sampling.max_tokens == 3072


def test_run_defaults_differ_from_library_defaults_only_where_declared():
    """Each setting has one default: the sampler's allocation settings are allocate()'s except the
    two the run config overrides (with their reasons), the trainer's are TrainerConfig's except
    RUN_TRAINER_DEFAULTS, and the tiny model's are gvm.toy's."""
    import inspect

    from gvm.allocation import allocate
    from gvm.config import RUN_TRAINER_DEFAULTS
    from gvm.toy import TinyModelConfig, build_tiny

    library = {k: p.default for k, p in inspect.signature(allocate).parameters.items()
               if p.kind is p.KEYWORD_ONLY and k not in ("objective", "held")}      # a setting / data of each call
    run = SamplerConfig().allocate_kwargs()
    assert set(run) == set(library)
    assert {k for k in library if library[k] != run[k]} == {"max_per_prompt", "zero_accept"}
    trainer_run, trainer_lib = dataclasses.asdict(RunConfig().trainer), dataclasses.asdict(TrainerConfig(model_path="x"))
    differ = {k for k in trainer_lib if trainer_lib[k] != trainer_run[k]}
    assert differ == set(RUN_TRAINER_DEFAULTS) | {"model_path"}
    assert RunConfig().tiny == TinyModelConfig()
    assert all(p.kind is p.VAR_KEYWORD for n, p in inspect.signature(build_tiny).parameters.items() if n != "path"
               and n != "seed")


def test_optimizer_steps_per_call_or_per_sample_count():
    """Every sampler gets one train_step per iteration: optimizer_steps_per_call mini-batches, or with
    mini_batch_samples (the paper's counting, verl's ppo_mini_batch_size x rollout.n) one per that
    many samples, so a sampler that trains on more samples takes more steps."""
    fixed = TrainerConfig(model_path="m", optimizer_steps_per_call=3)
    assert [fixed.mini_batches(n) for n in (1, 100, 10_000)] == [3, 3, 3]
    counted = TrainerConfig(model_path="m", mini_batch_samples=256)
    assert [counted.mini_batches(n) for n in (1, 256, 257, 8192)] == [1, 1, 2, 32]
    with pytest.raises(ValueError, match="mini_batch_samples"):
        TrainerConfig(model_path="m", mini_batch_samples=0)
