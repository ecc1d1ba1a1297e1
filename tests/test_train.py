"""The whole loop, launched as a user would: `torchrun --nproc_per_node 2 gvm/train.py <overrides>`
(two ranks, gloo, ZeRO-3, in-process vLLM on the CPU) on the built-in task at a reduced size, then
resumed on one process, then run on an HF folder with data files (the "real model" path).

The run must end with a held-out accuracy above the warm start's, and its audit log must show
that every stage-2 allocation is `allocate()` of the p_i and G_i it logged. Fresh seed each run
(printed)."""
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _seed import seed_for
from _tiny_runs import one_two_rank_vllm_group_at_a_time, run_process_group
import yaml

pytest.importorskip("deepspeed")

from gvm.allocation import allocate  # noqa: E402
from gvm.config import ConfigError, load_config  # noqa: E402
from gvm.train import main, parse_args  # noqa: E402

TRAIN = Path(__file__).resolve().parents[1] / "gvm" / "train.py"
SEED = seed_for(__name__)  # this module's seed (tests/_seed.py: replay with GVM_TEST_SEED)
ITERATIONS = 20
PROMPTS, PILOT, PER_PROMPT = 64, 4, 4
EVAL_PROMPTS, EVAL_K = 200, 16
WARMSTART_STEPS = 900
# The built-in default (task, learning rate, 20 iterations) with the paper's GVM sampler (its audit
# is checked below), evaluation before and after only, at 16 samples per prompt so that the paired
# before/after difference has a standard error of about 0.01. The warm-started model misreads digits
# and RL removes the slips: on 2 CPU cores, with the default's 600-step warm start, this run went
# 0.287 -> 0.387 (two ranks, avg@16). The warm start here is longer, because RL's gain depends on
# where it starts. At 600 steps the warm start's accuracy spreads with the seed (one process,
# avg@16, five seeds: 0.19 to 0.32), and from the weakest (module seed 499421996: 0.155 on two
# ranks) RL stayed level for 20 iterations. At 900 steps five seeds start at 0.235 to 0.302 (that
# one at 0.298, and 0.317 -> 0.357 on two ranks), and RL from the lowest, 0.235, reached 0.302 (one
# process).
SMALL = [f"seed={SEED}", f"iterations={ITERATIONS}", "checkpoint_every=10", "log.progress=false",
         f"warmstart.steps={WARMSTART_STEPS}",
         f"task.num_eval={EVAL_PROMPTS}", f"eval.k={EVAL_K}", f"data.prompts_per_iteration={PROMPTS}",
         "sampler.kind=gvm", f"sampler.pilot_n={PILOT}", f"sampler.n_per_prompt={PER_PROMPT}",
         "rollout.vllm={cpu_kv_cache_bytes: 33554432}", f"eval.every={ITERATIONS}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], ranks: int, timeout: int = 600) -> subprocess.CompletedProcess:
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                   "--master_port", str(_free_port()), str(TRAIN), *args]
    else:
        command = [sys.executable, str(TRAIN), *args]
    with one_two_rank_vllm_group_at_a_time() if ranks > 1 else contextlib.nullcontext():
        proc = run_process_group(command, timeout=timeout)
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-8000:]}"
    return proc


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One two-rank run of the built-in default at a reduced size."""
    print(f"seed={SEED}")
    root = tmp_path_factory.mktemp("runs")
    proc = _launch([f"run_root={root}", "name=small", *SMALL], ranks=2, timeout=1200)
    print(proc.stdout[-3000:])
    return root / "small", proc.stdout


def test_held_out_accuracy_rises_above_the_warm_start(run):
    run_dir, stdout = run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["accuracy_final"] > summary["accuracy_before"], summary
    assert "held-out accuracy before RL" in stdout and "p0" in stdout   # the per-iteration table


def test_stage2_counts_are_allocate_of_the_logged_statistics(run):
    run_dir, _ = run
    config = load_config(run_dir / "config.yaml")
    audits = _rows(run_dir / "allocations.jsonl")
    assert [a["iteration"] for a in audits] == list(range(1, ITERATIONS + 1))
    for audit in audits:
        budget = audit["budget"]
        assert budget == PROMPTS * PER_PROMPT and sum(audit["n"]) == budget
        if audit["allocation"] == "gvm":
            expected = allocate(audit["G"], audit["p"], budget, **config.sampler.allocate_kwargs(),
                                objective=audit["objective"], held=audit["held"])
            assert np.array_equal(audit["n"], expected), audit
        else:  # nobody could take the budget: an even split, flagged
            assert max(audit["n"]) - min(audit["n"]) <= 1
        # p_i is accepted / pilot samples; G_i is measured exactly where something was accepted
        for p, g in zip(audit["p_pilot"], audit["G_pilot"]):
            assert p * PILOT == pytest.approx(round(p * PILOT))
            assert (g is not None and g > 0) == (p > 0)
    assert any(a["allocation"] == "gvm" and len(set(a["n"])) > 1 for a in audits), "GVM never varied n_i"


def test_run_folder_holds_logs_plot_checkpoint_and_model(run):
    run_dir, _ = run
    rows = _rows(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS + 1))   # 0: before RL
    per_iteration = PROMPTS * PILOT + PROMPTS * PER_PROMPT                  # the pilot counts
    assert [r["samples_generated"] for r in rows] == [per_iteration * t for t in range(ITERATIONS + 1)]
    last = rows[-1]
    assert set(last["time"]) >= {"pilot_rollout", "verify", "grad_norms", "allocate", "rollout", "train", "sync"}
    assert last["eval"]["num_prompts"] == EVAL_PROMPTS and sum(last["accept_hist"]) == PROMPTS
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "accuracy.png").stat().st_size > 1000
    assert (run_dir / "final" / "config.json").is_file() and (run_dir / "final" / "tokenizer.json").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text().strip()
    assert load_config(run_dir / "config.yaml").seed == SEED


def test_resume_continues_from_the_last_checkpoint(run):
    run_dir, _ = run
    before = _rows(run_dir / "metrics.jsonl")
    _launch([f"run_root={run_dir.parent}", "name=small", *SMALL, "resume=true", f"iterations={ITERATIONS + 1}"],
            ranks=2)   # ZeRO checkpoints resume on the world size that wrote them
    rows = _rows(run_dir / "metrics.jsonl")
    assert rows[: len(before)] == before
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS + 2))
    assert rows[-1]["samples_generated"] == before[-1]["samples_generated"] + PROMPTS * (PILOT + PER_PROMPT)
    assert len(_rows(run_dir / "allocations.jsonl")) == ITERATIONS + 1


def test_a_hf_folder_with_data_files_takes_the_same_path(run, tmp_path):
    """model=<HF folder> train_data=... eval_data=...: chat-template prompts, GRPO, uniform, HF engine."""
    run_dir, _ = run
    _launch([f"run_root={tmp_path}", "name=files", f"model={run_dir / 'final'}", f"seed={SEED}",
             f"train_data={run_dir / 'data' / 'train.jsonl'}", f"eval_data={run_dir / 'data' / 'eval.jsonl'}",
             "algorithm=grpo", "sampler.kind=uniform", "sampler.n_per_prompt=4", "data.prompts_per_iteration=4",
             "iterations=1", "rollout.engine=hf", "rollout.sampling.max_tokens=24", "log.progress=false",
             "eval.k=1", "data.max_eval_prompts=100",
             "log.tensorboard=false"], ranks=1)
    saved = yaml.safe_load((tmp_path / "files" / "config.yaml").read_text())
    assert saved["algorithm"] == "grpo" and saved["data"]["train_data"].endswith("train.jsonl")
    rows = _rows(tmp_path / "files" / "metrics.jsonl")
    assert rows[-1]["samples_generated"] == 16 and rows[-1]["eval"]["num_prompts"] == 100
    assert not (tmp_path / "files" / "warmstart").exists()   # no warm start for a given model


def test_bad_settings_fail_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"sampler.budget=0"):
        parse_args(["sampler.budget=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'sampler.n'"):
        parse_args(["sampler.n=3"])
    with pytest.raises(ConfigError, match="file not found"):
        main(load_config(None, [f"run_root={tmp_path}", f"train_data={tmp_path / 'train.jsonl'}"]))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no tokenizer"):
        main(load_config(None, [f"run_root={tmp_path}", f"model={folder}"]))
    assert not (tmp_path / "default").exists()   # nothing was started or written
