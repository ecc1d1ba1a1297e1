"""Prompt loading, prompt formatting and the built-in arithmetic task."""
import itertools
import json
import random
import re
import statistics
import warnings
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gvm.arithmetic import LEVELS, ArithmeticTask, make_split, misread, solve, with_slips
from gvm.data import COT_INSTRUCTION, SYSTEM_PROMPT, format_prompt, load_prompts, write_jsonl
from gvm.toy import build_tokenizer

EXPRESSION = re.compile(r"[0-9+\-*]+")
BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def random_records(rng: random.Random, n: int) -> list[dict]:
    """Rows with the answer types the real sets have: strings, ints (0 included), floats, lists."""
    answers = [lambda: str(rng.randint(0, 999)), lambda: 0, lambda: rng.random() * 100,
               lambda: [str(rng.randint(0, 9)), "x"], lambda: "\\frac{1}{2}"]
    records = [{"problem": f"problem {rng.random()} ünï", "answer": rng.choice(answers)(),
                "level": rng.randint(1, 5), "extra": {"k": [1, 2]}} for _ in range(n)]
    records[rng.randrange(n)]["answer"] = 0  # a falsy answer that must not be skipped
    return records


def expected_rows(records: list[dict]) -> list[dict]:
    """What load_prompts returns: the record, its index (from 0) and its line (from 1; no blank lines)."""
    return [{"index": i, "line": i + 1, **record} for i, record in enumerate(records)]


def evaluate(expression: str) -> int:
    """Python's value of a generated expression (digits and + - * only)."""
    assert EXPRESSION.fullmatch(expression), expression
    return eval(expression, {"__builtins__": {}})  # safe: the regex admits only arithmetic


# --- load_prompts: formats -------------------------------------------------------------------


def test_jsonl_round_trip_keeps_fields_and_raw_answers(seed, tmp_path):
    records = random_records(random.Random(seed), 30)
    rows = load_prompts(write_jsonl(records, tmp_path / "p.jsonl"))
    assert rows == expected_rows(records)


def test_json_list_and_data_wrapper_load_the_same_rows(seed, tmp_path):
    records = random_records(random.Random(seed), 12)
    (tmp_path / "list.json").write_text(json.dumps(records))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": records, "version": 1}))
    assert load_prompts(tmp_path / "list.json") == expected_rows(records)
    assert load_prompts(tmp_path / "wrapped.json") == expected_rows(records)


def test_json_file_holding_json_lines_is_read_as_lines(seed, tmp_path):
    records = random_records(random.Random(seed), 5)
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_prompts(path) == expected_rows(records)


def test_parquet_round_trip(seed, tmp_path):
    rng = random.Random(seed)
    records = [{"problem": f"p{rng.random()}", "answer": str(rng.randint(0, 99)),
                "level": rng.randint(1, 5)} for _ in range(20)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "p.parquet")
    assert load_prompts(tmp_path / "p.parquet") == expected_rows(records)


def test_custom_keys_are_renamed_and_colliding_fields_kept(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "What is 2+2?", "gold": "4", "problem": "old", "index": 9}))
    rows = load_prompts(path, problem_key="question", answer_key="gold")
    assert rows == [{"index": 0, "line": 1, "problem": "What is 2+2?", "answer": "4",
                     "source_problem": "old", "source_index": 9}]


# --- load_prompts: skipped rows and bad files ------------------------------------------------


def test_rows_without_problem_or_answer_are_skipped_with_one_warning_naming_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    lines = [{"problem": "a", "answer": "1"},            # line 1
             None,                                        # line 2: blank
             {"problem": "b"},                            # line 3: no answer
             {"problem": "c", "answer": 0},               # line 4: 0 is an answer
             {"problem": "  ", "answer": "2"},            # line 5: blank problem
             {"problem": "d", "answer": []},              # line 6: empty list
             {"problem": "e", "answer": None}]            # line 7
    path.write_text("".join("\n" if r is None else json.dumps(r) + "\n" for r in lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = load_prompts(path)
    assert [(r["index"], r["line"], r["problem"]) for r in rows] == [(0, 1, "a"), (2, 4, "c")]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "gaps.jsonl" in message and "skipped 4 of 6" in message
    assert "lines 3, 5, 6, 7" in message


def test_skip_warning_names_only_the_first_few_lines(tmp_path):
    records = [{"problem": "ok", "answer": "1"}] + [{"problem": f"p{i}"} for i in range(9)]
    path = write_jsonl(records, tmp_path / "many.jsonl")
    with pytest.warns(UserWarning, match=r"skipped 9 of 10 lines .*\(lines 2, 3, 4, 5, 6, \.\.\.\)"):
        assert len(load_prompts(path)) == 1


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": "2"}\n{"problem": oops}\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 3 is not valid JSON"):
        load_prompts(path)


def test_jsonl_line_that_is_not_an_object_is_rejected(tmp_path):
    path = tmp_path / "list_line.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"list_line\.jsonl: line 2 is a JSON list"):
        load_prompts(path)


def test_bad_json_file_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"problem": "a", "answer": "1"},\n  {"problem": "b" "answer": "2"}\n]\n')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON at line 3"):
        load_prompts(path)


def test_file_that_is_not_parquet_names_the_file(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text('{"problem": "a", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable Parquet file"):
        load_prompts(path)


def test_missing_file_and_unknown_source_raise_not_found(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_prompts(missing)
    with pytest.raises(FileNotFoundError, match="no-such-owner/no-such-set.*neither a file nor"):
        load_prompts("no-such-owner/no-such-set")


def test_misuse_is_reported(tmp_path):
    path = write_jsonl([{"problem": "a", "answer": "1"}], tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="split"):
        load_prompts(path, split="test")
    with pytest.raises(ValueError, match="'question'"):
        load_prompts(path, problem_key="question")
    (tmp_path / "p.csv").write_text("problem,answer\na,1\n")
    with pytest.raises(ValueError, match="unknown file type '.csv'"):
        load_prompts(tmp_path / "p.csv")


def test_real_evaluation_sets_load_with_expected_counts(eval_dir):
    counts = {"math500": 500, "aime24": 30, "amc23": 40, "minerva_math": 272, "olympiad_bench": 675}
    for name, count in counts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # none of the real rows may be skipped
            rows = load_prompts(eval_dir / f"{name}.jsonl")
        assert len(rows) == count, name
        assert [row["index"] for row in rows] == list(range(count))
        assert all(isinstance(row["problem"], str) and row["problem"] for row in rows)
    amc = load_prompts(eval_dir / "amc23.jsonl")
    assert all(isinstance(row["answer"], float) for row in amc)  # raw, not normalised here
    olympiad = load_prompts(eval_dir / "olympiad_bench.jsonl")
    assert all(isinstance(row["answer"], list) for row in olympiad)
    assert "unit" in olympiad[0] and "context" in olympiad[0]


# --- format_prompt ---------------------------------------------------------------------------


def test_cot_prompt_through_a_chat_template():
    text = format_prompt("What is 1+1?", build_tokenizer())
    assert text == (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
                    f"<|im_start|>user\nWhat is 1+1? {COT_INSTRUCTION}<|im_end|>\n"
                    f"<|im_start|>assistant\n")
    assert SYSTEM_PROMPT == "Please reason step by step, and put your final answer within \\boxed{}."


def test_prompt_without_a_chat_template_is_plain_text():
    class PlainTokenizer:  # a base-model tokenizer: no chat template
        chat_template = None

    assert format_prompt("Find x.", PlainTokenizer()) == f"{SYSTEM_PROMPT}\n\nFind x. {COT_INSTRUCTION}\n"
    assert format_prompt("Find x.") == format_prompt("Find x.", PlainTokenizer())
    assert format_prompt("12+34", style="compact") == "12+34\n"


def test_compact_prompt_is_short_for_the_toy_model():
    tokenizer = build_tokenizer()
    text = format_prompt("1234*56", tokenizer, style="compact")
    assert text == "<|im_start|>user\n1234*56<|im_end|>\n<|im_start|>assistant\n"
    assert len(tokenizer.encode(text)) < 40
    with pytest.raises(ValueError, match="style"):
        format_prompt("1+1", tokenizer, style="verbose")


# --- the arithmetic task ---------------------------------------------------------------------


def test_same_seed_same_problems_other_seed_other_problems():
    seed = random.randrange(2**31)
    first, second = ArithmeticTask(seed).sample(200), ArithmeticTask(seed).sample(200)
    assert first == second, f"seed {seed}"
    assert ArithmeticTask(seed + 1).sample(200) != first


def test_gold_answers_and_every_solution_step_are_correct():
    problems = ArithmeticTask(random.randrange(2**31)).sample(2000)
    for p in problems:
        assert p.answer == str(evaluate(p.problem)), p
        *steps, last = p.solution.split("\n")
        assert BOXED.fullmatch(last) and BOXED.fullmatch(last).group(1) == p.answer, p
        for step in steps:
            left, right = step.split("=")
            assert evaluate(left) == int(right), (p.problem, step)
        assert int(p.answer) >= 0


def test_boxed_gold_verifies_against_the_worked_solution():
    from math_verify import parse, verify

    for p in ArithmeticTask(random.randrange(2**31)).sample(25):
        assert verify(parse(f"\\boxed{{{p.answer}}}"), parse(p.solution)), p
        assert not verify(parse(f"\\boxed{{{int(p.answer) + 1}}}"), parse(p.solution)), p


def test_levels_span_clearly_different_difficulties():
    problems = ArithmeticTask(random.randrange(2**31)).sample(3000)
    by_level = {level: [p for p in problems if p.level == level] for level in LEVELS}
    assert all(len(group) > 400 for group in by_level.values())
    mean_solution = [statistics.mean(len(p.solution) for p in by_level[lv]) for lv in LEVELS]
    mean_answer_digits = [statistics.mean(len(p.answer) for p in by_level[lv]) for lv in LEVELS]
    assert mean_solution == sorted(mean_solution) and mean_solution[-1] > 2.5 * mean_solution[0]
    assert mean_answer_digits == sorted(mean_answer_digits)
    assert max(int(p.answer) for p in by_level[1]) <= 18
    level_one_operands = [int(x) for p in by_level[1] for x in re.split(r"[+\-*]", p.problem)]
    assert max(level_one_operands) <= 9
    assert statistics.median(int(p.answer) for p in by_level[5]) >= 100
    # Carries and borrows both occur, so digit-wise copying cannot solve level 2.
    assert any("+1=" in p.solution for p in by_level[2])
    assert any("+10=" in p.solution for p in by_level[2])


def test_task_rejects_unknown_levels():
    with pytest.raises(ValueError, match="levels"):
        ArithmeticTask(0, levels=(1, 7))


def test_split_is_disjoint_unique_and_in_row_format():
    seed = random.randrange(2**31)
    train, held_out = make_split(600, 150, seed=seed)
    assert (len(train), len(held_out)) == (600, 150)
    train_problems = [row["problem"] for row in train]
    eval_problems = [row["problem"] for row in held_out]
    assert len(set(train_problems)) == 600 and len(set(eval_problems)) == 150
    assert not set(train_problems) & set(eval_problems)
    assert [row["index"] for row in train] == list(range(600))
    assert set(train[0]) == {"index", "line", "problem", "answer", "level", "solution"}
    assert {row["level"] for row in held_out} == set(LEVELS)
    assert make_split(600, 150, seed=seed) == (train, held_out)
    assert make_split(10, 150, seed=seed)[1] == held_out  # eval does not depend on num_train


def test_split_rows_load_back_through_load_prompts(tmp_path):
    train, _ = make_split(50, 0, seed=random.randrange(2**31))
    assert load_prompts(write_jsonl(train, tmp_path / "train.jsonl")) == train


def test_split_stops_when_levels_run_out_of_distinct_problems():
    train, held_out = make_split(100, 50, levels=(1,))  # 155 distinct one-digit problems
    assert not {r["problem"] for r in train} & {r["problem"] for r in held_out}
    with pytest.raises(ValueError, match="fewer than 200 distinct"):
        make_split(150, 50, levels=(1,))


def test_split_follows_level_weights():
    seed = random.randrange(2**31)
    print(f"seed={seed}")
    train, held = make_split(600, 100, seed=seed, levels=(2, 3, 5), weights=(1.0, 0.0, 3.0))
    levels = Counter(r["level"] for r in train + held)
    assert set(levels) == {2, 5} and levels[5] > 2 * levels[2]
    assert not {r["problem"] for r in train} & {r["problem"] for r in held}
    assert len({r["problem"] for r in train}) == 600
    with pytest.raises(ValueError, match="weights"):
        make_split(10, 10, levels=(2, 3), weights=(1.0,))


# ------------------------------------------------------------------------- slips


def test_solve_reproduces_every_generator_and_rejects_other_text():
    task = ArithmeticTask(random.randrange(2**31))
    for level in LEVELS:
        for _ in range(100):
            problem = task.sample_level(level)
            assert solve(problem.problem, level) == problem
    for bad in ("3-7", "1+2*3", "12/4", "x+1", "5+6-12"):
        with pytest.raises(ValueError):
            solve(bad)


def test_misread_changes_digits_by_one_and_keeps_the_shape():
    rng = random.Random(random.randrange(2**31))
    assert misread("123*45+6", rng, 0.0) == "123*45+6"
    for _ in range(500):
        expression = ArithmeticTask(rng.randrange(2**31)).sample(1)[0].problem
        seen = misread(expression, rng, 0.5)
        assert len(seen) == len(expression)
        for a, b in zip(re.split(r"[+*-]", expression), re.split(r"[+*-]", seen)):
            assert len(a) == len(b) and (len(b) == 1 or b[0] != "0")
            assert all(abs(int(x) - int(y)) <= 1 for x, y in zip(a, b))


def test_slipped_solutions_are_consistent_work_on_a_misread_problem():
    seed = random.randrange(2**31)
    print(f"seed={seed}")
    rate = 0.15
    train, _ = make_split(3000, 0, seed=seed, levels=(2, 3))
    slipped = with_slips(train, rate, seed=seed)
    assert with_slips(train, 0.0, seed=seed) == train
    changed, expected = 0, 0.0
    for clean, row in zip(train, slipped):
        assert {k: v for k, v in row.items() if k != "solution"} == {k: v for k, v in clean.items() if k != "solution"}
        digits = sum(c.isdigit() for c in clean["problem"])
        expected += 1 - (1 - rate) ** digits
        if row["solution"] != clean["solution"]:
            changed += 1
            misread_problem = next(variant for variant, solution in _operand_variants(clean["problem"])
                                   if solution == row["solution"])
            assert misread_problem != clean["problem"]
    # a misread that would go below zero is read right, and +-1 at a digit's edge is skipped: a bit fewer
    assert 0.7 * expected < changed <= expected + 4 * expected**0.5
    with pytest.raises(ValueError, match="slip rate"):
        with_slips(train, 1.5, seed=seed)


def _operand_variants(expression: str):
    """(variant, its worked solution) for every expression whose digits differ from `expression`'s by
    at most one each (and that solve() accepts): the misreads that could have produced a slip."""
    positions = [i for i, c in enumerate(expression) if c.isdigit()]
    for deltas in itertools.product((-1, 0, 1), repeat=len(positions)):
        chars = list(expression)
        for i, d in zip(positions, deltas):
            chars[i] = str(int(chars[i]) + d) if 0 <= int(chars[i]) + d <= 9 else chars[i]
        variant = "".join(chars)
        try:
            yield variant, solve(variant).solution
        except ValueError:
            continue
