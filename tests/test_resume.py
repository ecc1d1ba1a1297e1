"""Nothing lost, nothing mixed (gvm.loop_state, gvm.run_folder, gvm.failpoints): the real loop on the
CPU killed hard at every failpoint and resumed gives the same metrics rows, allocation audits,
evaluations and final weights as the run never killed; damaged checkpoints are passed over
(never deleted) for the newest complete one; a used folder, or a resume that would change what
the run is, stops with a clear error before any work."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_runs import QUIET, TASK, TRAIN, run_process_group
from safetensors.torch import load_file

from gvm.config import ConfigError, load_config
from gvm.failpoints import ENV, FAILPOINT_EXIT, FAILPOINTS
from gvm.run_folder import plan_launch

pytest.importorskip("deepspeed")

ITERATIONS = 2
SMALL = [*TASK, *QUIET, f"iterations={ITERATIONS}", "checkpoint_every=1", "eval.every=2", "eval.k=1",
         "task.num_eval=4", "data.prompts_per_iteration=4", "sampler.kind=gvm", "sampler.pilot_n=2",
         "sampler.n_per_prompt=2", "sampler.replay=1", "rollout.sampling.max_tokens=16", "rollout.engine=hf",
         f"verifier.reward={Path(__file__).resolve().parent / '_accept_all_reward.py'}:accept_all"]
# sampler.replay=1: iteration 2 also trains on iteration 1's accepted samples, which a resume after
# iteration 1's checkpoint must take from the checkpoint (gvm.replay).
# Which passage of each failpoint falls in iteration 2 (the last), after iteration 1's checkpoint:
# per iteration the gvm sampler generates twice (pilot, stage 2), trains, syncs and logs once;
# "eval" runs before RL and then at iteration 2; the checkpoint of iteration 2 is the final one.
NTH = {"generate": 3, "verify": 3, "eval": 2}
TIMES = {"seconds", "wall_seconds", "time", "warmstart_seconds", "time_s"}


def launch(args: list[str], failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    return run_process_group([sys.executable, str(TRAIN), *args], timeout=900, env=env)


def finished(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def without_times(value):
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def read_rows(path: Path) -> list[dict]:
    return [without_times(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    for name in ("metrics.jsonl", "allocations.jsonl"):
        assert read_rows(run_dir / name) == read_rows(reference / name), name
    ours, theirs = load_file(run_dir / "final" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert summary["accuracy_before"] == expected["accuracy_before"]
    assert summary["accuracy_final"] == expected["accuracy_final"]
    assert summary["samples_generated"] == expected["samples_generated"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, warm_model, module_seed) -> tuple[Path, list[str]]:
    """The run never killed."""
    root = tmp_path_factory.mktemp("reference")
    args = [f"run_root={root}", "name=run", f"model={warm_model}", f"seed={module_seed}", *SMALL]
    finished(launch(args))
    rows = read_rows(root / "run" / "metrics.jsonl")
    # RAFT++ trains on accepted samples only, all with advantage 1: iteration 2 replays exactly what iteration 1
    # trained on (tests/_accept_all_reward.py accepts every sample, whatever the warm model writes)
    assert rows[1]["replayed"] == 0 and rows[2]["replayed"] == rows[1]["train"]["num_samples"] > 0
    return root / "run", args[2:]


@pytest.mark.parametrize("point", FAILPOINTS)
def test_killed_anywhere_and_resumed_is_the_run_never_killed(point, reference, tmp_path):
    reference_dir, args = reference
    run_args = [f"run_root={tmp_path}", "name=run", *args]
    killed = launch(run_args, failpoint=f"{point}@{NTH.get(point, 2)}")
    assert killed.returncode == FAILPOINT_EXIT, f"{point} did not fire:\n{killed.stdout[-2000:]}\n{killed.stderr[-3000:]}"
    log = finished(launch([*run_args, "resume=true"]))
    assert "resumed from" in log
    assert_same_run(tmp_path / "run", reference_dir)


@pytest.fixture(scope="module")
def used_folder(reference) -> Path:
    return reference[0]


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(folder, target)
    return target


def _resume(copy: Path, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    return launch([f"run_root={copy.parent}", "name=run", *args, "resume=true", f"iterations={ITERATIONS + 1}", *extra])


@pytest.mark.parametrize("damage", ["latest-garbage", "latest-empty", "no-loop-state", "truncated-optimizer"])
def test_damaged_checkpoints_are_passed_over_never_deleted(damage, reference, tmp_path):
    reference_dir, args = reference
    copy = _copy(reference_dir, tmp_path)
    checkpoints = sorted(p for p in (copy / "checkpoints").iterdir() if p.is_dir())
    newest, before = checkpoints[-1], checkpoints[-2]
    if damage == "latest-garbage":
        (copy / "checkpoints" / "latest").write_bytes(b"\xff\xfe not a tag \x00")
        expected = newest
    elif damage == "latest-empty":
        (copy / "checkpoints" / "latest").write_text("")
        expected = newest
    elif damage == "no-loop-state":
        (newest / "loop_state.json").unlink()
        expected = before
    else:
        optimizer = max(newest.rglob("*optim_states.pt"), key=lambda p: p.stat().st_size)
        optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
        expected = before
    log = finished(_resume(copy, args, "checkpoint_keep=0"))
    assert f"resumed from {expected}" in log
    assert newest.is_dir() and before.is_dir()                             # nothing the run wrote was deleted ...
    if expected == before:
        assert "passed over" in log and str(newest) in log                  # ... it says what it passed over, why,
        assert (copy / "checkpoints" / "iter000002.damaged").is_dir()       # and keeps it aside when redoing it
    rows = read_rows(copy / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS + 2))    # each iteration once, one more at the end


def test_a_used_folder_stops_a_fresh_run_and_loses_nothing(reference, tmp_path):
    reference_dir, args = reference
    copy = _copy(reference_dir, tmp_path)
    before = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
    proc = launch([f"run_root={copy.parent}", "name=run", *args])
    assert proc.returncode == 2 and "holds an earlier run" in proc.stderr and "overwrite=true" in proc.stderr
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == before
    finished(launch([f"run_root={copy.parent}", "name=run", *args, "overwrite=true", "iterations=1"]))
    assert [r["iteration"] for r in read_rows(copy / "metrics.jsonl")] == [0, 1]


def test_resume_refuses_a_changed_algorithm_and_takes_more_iterations(reference, tmp_path):
    reference_dir, args = reference
    copy = _copy(reference_dir, tmp_path)
    resume = [f"run_root={copy.parent}", "name=run", *args, "resume=true", f"iterations={ITERATIONS + 1}"]
    # What a launch does with its folder is planned before any work (gvm.run_folder), so the refusals are
    # checked in this process; a used folder's refusal, above, goes through the command line (exit 2).
    with pytest.raises(ConfigError, match=re.escape("algorithm: 'raft++' -> 'grpo'")):
        plan_launch(load_config(None, [*resume, "algorithm=grpo"]))
    with pytest.raises(ConfigError, match=re.escape("trainer.lr: 0.0002 -> 0.1")):
        plan_launch(load_config(None, [*resume, "trainer.lr=0.1"]))
    log = finished(_resume(copy, args, "eval.every=1"))                    # more iterations, another cadence
    assert "resume changes iterations: 2 -> 3" in log and "resume changes eval.every: 2 -> 1" in log
    assert [r["iteration"] for r in read_rows(copy / "metrics.jsonl")] == list(range(ITERATIONS + 2))


def test_checkpoints_are_whole_and_only_the_newest_kept(reference):
    reference_dir, _ = reference
    folders = sorted(p.name for p in (reference_dir / "checkpoints").iterdir() if p.is_dir())
    assert folders == ["iter000001", "iter000002"]                          # checkpoint_keep = 2
    assert (reference_dir / "checkpoints" / "latest").read_text().strip() == "iter000002"
    for name in folders:
        manifest = json.loads((reference_dir / "checkpoints" / name / "MANIFEST.json").read_text())
        assert "loop_state.json" in manifest and any(k.endswith("optim_states.pt") for k in manifest)


def test_long_and_unencodable_rows_never_reach_the_engine(warm_model, tmp_path, seed):
    """A training file with prompts longer than the model's context (under data.max_prompt_tokens)
    and a row the tokenizer cannot encode: vLLM would refuse them; the run drops them at load,
    says how many and where, and finishes."""
    pytest.importorskip("vllm")
    rows = [{"problem": f"{a}+{b}", "answer": str(a + b)} for a in range(1, 9) for b in range(1, 3)]
    rows.insert(3, {"problem": "9+" + "1" * 600, "answer": "1"})               # line 4: over the context
    rows.insert(7, {"problem": "2+\ud800", "answer": "2"})                     # line 8: a lone surrogate
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = finished(launch([f"run_root={tmp_path}", "name=files", f"model={warm_model}", f"seed={seed}",
                           f"train_data={path}", "data.prompt_style=compact", "iterations=1", "eval.k=1",
                           "data.prompts_per_iteration=4", "sampler.n_per_prompt=2", "sampler.pilot_n=2",
                           "rollout.sampling.max_tokens=16", "rollout.engine=vllm", *QUIET]))
    assert "1 of 18 prompts are longer than the prompt budget of 496 tokens, dropped (line 4)" in log
    assert "skipped 1 of 18 rows the tokenizer cannot encode (line 8)" in log
