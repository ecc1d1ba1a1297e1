"""`python -m gvm.eval`: avg@k / pass@k with the real Verifier and a real engine (transformers, CPU)
on a tiny model taught to always answer \\boxed{7}, so the expected scores are known exactly."""
import json
import random
import string

import pytest
from _seed import seed_for
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gvm.config import ConfigError
from gvm.data import format_prompt, load_prompts, write_jsonl
from gvm.eval import main as eval_main
from gvm.prompts import encode_prompt
from gvm.toy import build_tiny
from gvm.verify import Verifier

SEED = seed_for(__name__)  # this module's seed (tests/_seed.py: replay with GVM_TEST_SEED)
TINY = dict(hidden_size=64, num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128)
ANSWER = "\\boxed{7}"
ALPHABET = string.ascii_letters + string.digits + " +-*/=()$\\{}^_.,?"


@pytest.fixture(scope="module")
def seven_model(tmp_path_factory):
    """A tiny model fine-tuned until its reply to any prompt (compact or chain-of-thought style) is
    \\boxed{7} and the end of the turn."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    folder = build_tiny(tmp_path_factory.mktemp("seven") / "model", seed=SEED, **TINY)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    reply = tokenizer.encode(ANSWER) + [end]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps = 400
    # a linear decay: at a constant 1e-2 some seeds plateau near a loss of 0.13 (seed 1563195182
    # did in CI); decaying, every seed tried reaches 0.003 within 50-190 steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: max(0.05, 1 - k / steps))
    for step in range(steps):  # until the reply is learnt (a loss of 0.003)
        batch = []
        for style in ("compact", "cot") * 4:
            # any text: short sums like the test's rows, long ones like the benchmark problems
            problem = "".join(rng.choice(ALPHABET) for _ in range(rng.choice((1, 3, 5, 20, 80, 300))))
            batch.append(tokenizer.encode(format_prompt(problem, tokenizer, style=style), add_special_tokens=False))
        width = max(len(p) for p in batch) + len(reply)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):  # right padding, loss on the reply only
            n = len(prompt) + len(reply)
            ids[row, :n] = torch.tensor(prompt + reply)
            labels[row, len(prompt):n] = torch.tensor(reply)
            mask[row, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if loss.item() < 0.003:
            break
    assert loss.item() < 0.003, f"the tiny model did not learn its fixed reply (loss {loss.item():.3f})"
    model.save_pretrained(folder)
    return folder


def run(args: list[str], tmp_path) -> dict:
    out = tmp_path / "result.json"
    eval_main([*args, f"out={out}", "engine=hf", "max_tokens=12", f"seed={SEED}", "verifier.num_workers=0"])
    return {r["name"]: r for r in json.loads(out.read_text())["results"]}


def test_avg_and_pass_at_k_count_exactly(seven_model, tmp_path):
    rng = random.Random(SEED + 1)
    rows = []
    for i in range(12):
        gold = 7 if rng.random() < 0.5 else rng.choice([3, 8, 17, 70])
        rows.append({"problem": f"{rng.randint(0, 9)}+{rng.randint(0, 9)}", "answer": str(gold)})
    expected = sum(r["answer"] == "7" for r in rows) / len(rows)
    write_jsonl(rows, tmp_path / "set.jsonl")
    # greedy: every one of the k samples is the same decode, so avg@k == pass@k == share of 7s
    result = run([f"model={seven_model}", f"data={tmp_path / 'set.jsonl'}", "k=3", "temperature=0",
                  "prompt_style=compact"], tmp_path)["set"]
    assert result["num_prompts"] == 12 and result["k"] == 3
    assert result["avg@3"] == pytest.approx(expected) and result["pass@3"] == pytest.approx(expected)


def prompt_tokens(model_dir, problem: str, style: str) -> int:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return len(encode_prompt(problem, tokenizer, style))


def test_reads_the_five_benchmark_formats(seven_model, eval_dir, tmp_path):
    results = run([f"model={seven_model}", f"data={eval_dir}", "k=2", "temperature=0", "limit=3",
                   "prompt_style=cot"], tmp_path)
    assert sorted(results) == ["aime24", "amc23", "math500", "minerva_math", "olympiad_bench"]
    verifier = Verifier(num_workers=0)
    budget = 512 - 12                          # the tiny model's context minus max_tokens
    for name, result in results.items():
        rows = load_prompts(eval_dir / f"{name}.jsonl")[:3]
        fits = [prompt_tokens(seven_model, r["problem"], "cot") <= budget for r in rows]
        # the model answers 7 everywhere: the expected score is the share of golds math-equal to 7
        # among the prompts that fit; a prompt over the budget is unanswered
        scores = verifier.score([ANSWER] * len(rows), [r["answer"] for r in rows])
        expected = sum(s for s, f in zip(scores, fits) if f) / len(rows)
        assert result["num_prompts"] == 3 and result["too_long"] == fits.count(False)
        assert result["avg@2"] == pytest.approx(expected), name
        assert result["pass@2"] == pytest.approx(expected), name


def test_every_benchmark_file_finishes_and_counts_its_too_long_prompts(seven_model, eval_dir, tmp_path):
    """All five files whole, through vLLM (which a prompt over the context would crash): the long
    ones are reported as unanswered, the rest answered."""
    import subprocess
    import sys

    pytest.importorskip("vllm")
    out = tmp_path / "all.json"
    proc = subprocess.run([sys.executable, "-m", "gvm.eval", f"model={seven_model}", f"data={eval_dir}", "k=1",
                           "temperature=0", "max_tokens=64", "prompt_style=cot", "engine=vllm", f"out={out}",
                           "vllm={cpu_kv_cache_bytes: 67108864}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    for name, result in results.items():
        rows = load_prompts(eval_dir / f"{name}.jsonl")
        too_long = sum(prompt_tokens(seven_model, r["problem"], "cot") > 512 - 64 for r in rows)
        assert result["num_prompts"] == len(rows) and result["too_long"] == too_long, name
        if too_long:
            assert f"{too_long} too long (counted wrong)" in proc.stdout
    assert sum(r["too_long"] for r in results.values()) > 0      # the tiny context does not hold them all


def test_sampled_scores_are_consistent(seven_model, tmp_path):
    rows = [{"problem": f"{i}+{i}", "answer": "7" if i % 2 else "5"} for i in range(6)]
    write_jsonl(rows, tmp_path / "s.jsonl")
    result = run([f"model={seven_model}", f"data={tmp_path / 's.jsonl'}", "k=4", "temperature=1.0",
                  "prompt_style=compact"], tmp_path)["s"]
    assert 0.0 <= result["avg@4"] <= result["pass@4"] <= 0.5  # only the odd rows can be right


def test_bad_arguments_fail_before_the_engine(seven_model, tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'kk'"):
        eval_main([f"model={seven_model}", "data=x.jsonl", "kk=3"])
    with pytest.raises(ConfigError, match="k=0"):
        eval_main([f"model={seven_model}", "data=x.jsonl", "k=0"])
    with pytest.raises(ConfigError, match=r"data='.*missing.jsonl': no such file"):
        eval_main([f"model={seven_model}", f"data={tmp_path / 'missing.jsonl'}"])
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((seven_model / "config.json").read_text())
    with pytest.raises(ConfigError, match="has no tokenizer"):
        eval_main([f"model={bare}", f"data={tmp_path / 'missing.jsonl'}"])


def test_the_papers_table_in_one_command(seven_model, eval_dir, tmp_path, capsys):
    """data=<the five files> k=...: avg@k and pass@k per benchmark and their average, in the
    column order of the paper's Table 1, also as JSON; limit= rows per benchmark for a quick look."""
    results = run([f"model={seven_model}", f"data={eval_dir}", "k=2", "temperature=0", "limit=2",
                   "prompt_style=cot"], tmp_path)
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| ") and "Average" in line)
    assert header.split(" | ")[1:] == ["MATH500", "Minerva Math", "Olympiad Bench", "AIME24", "AMC23", "Average |"]
    avg_row = next(line for line in printed.splitlines() if line.startswith("| avg@2 |"))
    cells = [float(c) for c in avg_row.strip(" |").split(" | ")[1:]]
    order = ["math500", "minerva_math", "olympiad_bench", "aime24", "amc23"]
    assert cells[:5] == pytest.approx([100 * results[n]["avg@2"] for n in order], abs=0.005)
    assert cells[5] == pytest.approx(sum(cells[:5]) / 5, abs=0.01)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["average"]["avg@2"] == pytest.approx(sum(results[n]["avg@2"] for n in order) / 5)
    assert all(r["num_prompts"] == 2 for r in saved["results"])
