"""Coming from verl, TRL or OpenRLHF: their data files read as they are and trained on, a user's
float reward and "exact" driving RAFT++ and GRPO, and W&B offline logging - each through the real
loop on the CPU (one short iteration on the warm tiny model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _tiny_runs import QUIET, TRAIN, run_script

from gvm.data import load_prompts

pytest.importorskip("deepspeed")

ONE = ["iterations=1", "eval.k=1", "data.prompts_per_iteration=4", "sampler.kind=gvm", "sampler.n_per_prompt=2",
       "sampler.pilot_n=2", "rollout.sampling.max_tokens=16", "rollout.engine=hf", "data.prompt_style=compact", *QUIET]
PROBLEMS = [(f"{a}+{b}", a + b) for a in range(1, 5) for b in range(1, 4)]


def messages(problem: str) -> list[dict]:
    return [{"role": "user", "content": problem}]


def write_peer_file(shape: str, folder: Path) -> Path:
    """A training file as the peer writes it."""
    if shape == "verl":   # verl's RL parquet
        rows = [{"data_source": "arith", "prompt": messages(p), "ability": "math",
                 "reward_model": {"style": "rule", "ground_truth": str(v)}, "extra_info": {"index": i}}
                for i, (p, v) in enumerate(PROBLEMS)]
        path = folder / "train.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    path = folder / "train.jsonl"
    if shape == "trl":    # TRL's conversational rows
        rows = [{"prompt": messages(p), "solution": str(v)} for p, v in PROBLEMS]
    else:                 # OpenRLHF: --input_key question --label_key label
        rows = [{"question": p, "label": str(v)} for p, v in PROBLEMS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("shape", ["verl", "trl", "openrlhf"])
def test_peer_files_are_read_and_trained_on(shape, warm_model, tmp_path, seed):
    path = write_peer_file(shape, tmp_path)
    keys = ["data.problem_key=question", "data.answer_key=label"] if shape == "openrlhf" else []
    rows = load_prompts(path, *([k.split("=")[1] for k in keys]))
    assert [r["answer"] for r in rows] == [str(v) for _, v in PROBLEMS]
    if shape != "openrlhf":
        assert rows[0]["problem"] == messages(PROBLEMS[0][0])           # chat messages kept as they are
    if shape == "verl":
        assert rows[0]["data_source"] == "arith" and rows[0]["extra_info"] == {"index": 0}
    run_script(TRAIN, [f"run_root={tmp_path}", "name=run", f"model={warm_model}", f"seed={seed}",
                       f"train_data={path}", f"eval_data={path}", *keys, *ONE])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_generated"] == 4 * (2 + 2) and summary["accuracy_final"] is not None


def test_a_file_in_no_known_shape_names_its_keys_and_the_settings(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"query": "1+1", "target": {"value": "2"}}) + "\n")
    with pytest.raises(ValueError) as error:
        load_prompts(path)
    message = str(error.value)
    assert "['query', 'target', 'target.value']" in message
    assert "data.problem_key=" in message and "data.answer_key=" in message
    assert load_prompts(path, "query", "target.value")[0]["answer"] == "2"      # a dotted path reads it


FLOAT_REWARD = '''
def graded(completion, gold, row):
    """Partial credit: 1 for the right box, 0.3 for any box, -0.2 for none (a float reward)."""
    if "\\\\boxed{" + str(gold) + "}" in completion:
        return 1.0
    return 0.3 if "\\\\boxed{" in completion else -0.2
'''


@pytest.mark.parametrize("algorithm,reward", [("raft++", "exact"), ("raft++", "graded"), ("grpo", "graded")])
def test_exact_and_float_rewards_drive_a_run(algorithm, reward, warm_model, tmp_path, seed):
    if reward == "graded":
        (tmp_path / "rewards.py").write_text(FLOAT_REWARD)
        reward = f"{tmp_path / 'rewards.py'}:graded"
    run_script(TRAIN, [f"run_root={tmp_path}", "name=run", f"model={warm_model}", f"seed={seed}", "task.num_train=32",
                       "task.num_eval=4", "task.levels=[1]", "task.level_weights=[1.0]", f"algorithm={algorithm}",
                       f"verifier.reward={reward}", "verifier.accept_threshold=0.5", *ONE])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    audit = json.loads((tmp_path / "run" / "allocations.jsonl").read_text().splitlines()[0])
    assert rows[-1]["samples_generated"] == 16 and audit["sampler"] == "gvm"
    assert all(0.0 <= p <= 1.0 for p in audit["p_pilot"])        # p_i: rewards >= accept_threshold


def test_wandb_offline_history_holds_the_metrics(warm_model, tmp_path, seed):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, str(TRAIN), f"run_root={tmp_path}", "name=run", f"model={warm_model}",
                           f"seed={seed}", "task.num_train=32", "task.num_eval=4", "task.levels=[1]",
                           "task.level_weights=[1.0]", "iterations=2", "eval.every=1", "log.wandb=true",
                           "log.wandb_project=gvm-test", "log.wandb_tags=[ci]", *ONE[1:], "log.plot=true"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    [events] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history, run = [], None
    for raw in wandb_records(events):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif record.WhichOneof("record_type") == "run":
            run = record.run
    assert run.display_name == "run" and list(run.tags) == ["ci"] and run.project == "gvm-test"
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    by_step = {h["_step"]: h for h in history}
    for row in metrics:
        logged = by_step[row["iteration"]]
        assert logged["samples_generated"] == row["samples_generated"]
        if row.get("eval"):
            assert logged["eval/accuracy"] == pytest.approx(row["eval"]["accuracy"])
    assert any(key.startswith("accuracy_plot/") for h in history for key in h)   # the plot went up too


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B offline run file: LevelDB's log format (32 KiB blocks of checksummed,
    possibly fragmented records) after a 7-byte header."""
    data, position, block, out, pending = path.read_bytes(), 7, 32768, [], b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out
