"""avg@k and pass@k of a model on math benchmarks, with the project's Verifier.

    python -m gvm.eval model=runs/default/final data=/path/math500.jsonl k=8
    python -m gvm.eval model=/path/Qwen2.5-Math-1.5B data=../shared/data/eval k=8 temperature=0.6

`data` is a file in any format `gvm.data.load_prompts` reads (the five benchmark files, a
saved split of the built-in task), a folder (every *.jsonl in it, one row of results each) or
several of these separated by commas. Per benchmark: avg@k = mean over problems of the fraction
of its k samples that are correct; pass@k = fraction of problems with at least one correct
sample (k samples drawn, so this is the plain estimate, not the unbiased one from n > k).
`evaluate` is the same function the training loop runs every `eval.every` iterations.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm
from transformers import AutoTokenizer

from gvm.config import check_model_folder
from gvm.config_build import ConfigError, build, parse_override, set_dotted
from gvm.distributed import add_launcher_args
from gvm.data import ANSWER_KEY, PROBLEM_KEY, PROMPT_STYLES, load_prompts
from gvm.engines.base import SamplingConfig
from gvm.engines.factory import AUTO, ENGINE_NAMES, checkpoint_dtype, context_length, model_stop_ids, resolve_engine
from gvm.prompts import prompt_budget, to_prompts
from gvm.rollouts import Rollouts
from gvm.verify import Verifier, VerifierConfig

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    name: str
    num_prompts: int
    k: int
    avg_at_k: float
    pass_at_k: float
    per_prompt: list[float] = field(repr=False, default_factory=list)  # fraction correct of each prompt
    too_long: int = 0            # prompts over the prompt budget: not generated, counted wrong

    @property
    def accuracy(self) -> float:
        """avg@k: with k = 1 and greedy decoding, the plain held-out accuracy."""
        return self.avg_at_k

    def summary(self) -> dict:
        return {"accuracy": self.avg_at_k, f"avg@{self.k}": self.avg_at_k, f"pass@{self.k}": self.pass_at_k,
                "num_prompts": self.num_prompts, "k": self.k, "too_long": self.too_long}


def evaluate(rollouts, prompts, *, k: int, sampling: SamplingConfig, name: str = "eval") -> EvalResult:
    """Generate k completions per prompt with `rollouts` (a gvm.rollouts.Rollouts), verify them,
    and return avg@k and pass@k. A prompt marked too_long (over the prompt budget, which would
    crash the engine) is not generated and counts as unanswered. Collective when rollouts span
    several ranks."""
    if not prompts:
        raise ValueError(f"{name}: no evaluation prompts")
    fitting = [p for p in prompts if not p.too_long]
    batch = rollouts.run(fitting, k, sampling)
    accepted = iter(batch.accepted_per_prompt())      # reward >= the verifier's accept threshold
    counts = [0 if p.too_long else next(accepted) for p in prompts]
    per_prompt = np.array([c / k for c in counts], dtype=np.float64)
    solved = np.array([c > 0 for c in counts], dtype=np.float64)
    return EvalResult(name, len(prompts), k, float(per_prompt.mean()), float(solved.mean()), per_prompt.tolist(),
                      too_long=len(prompts) - len(fitting))


def merged(results: list[EvalResult], name: str) -> EvalResult:
    """One result from results over disjoint chunks of one benchmark (weighted by prompts)."""
    per_prompt = [x for r in results for x in r.per_prompt]
    k = results[0].k
    solved = sum(r.pass_at_k * r.num_prompts for r in results)
    return EvalResult(name, len(per_prompt), k, float(np.mean(per_prompt)), solved / len(per_prompt), per_prompt,
                      too_long=sum(r.too_long for r in results))


# ---------------------------------------------------------------------------------------------
# Command line

# The paper's Table 1 (arXiv 2505.02391): benchmark columns in this order, then their average.
TABLE_ORDER = ("math500", "minerva_math", "olympiad_bench", "aime24", "amc23")
TABLE_NAMES = {"math500": "MATH500", "minerva_math": "Minerva Math", "olympiad_bench": "Olympiad Bench",
               "aime24": "AIME24", "amc23": "AMC23"}
CHUNK_PROMPTS = 256   # prompts per evaluate() call: the progress bar moves at least this often


@dataclass(frozen=True)
class EvalCliConfig:
    """`python -m gvm.eval key=value ...`"""
    model: str = ""                      # Hugging Face folder (config.json + tokenizer)
    data: str = ""                       # file, folder of *.jsonl, or comma-separated list
    k: int = 8                           # samples per problem
    temperature: float = 0.6             # 0: greedy (then k copies of one decode)
    top_p: float = 1.0
    max_tokens: int = 3072               # the paper's evaluation length
    max_prompt_tokens: int = 4096        # longer prompts are not generated (counted wrong); the model's context
                                         # minus max_tokens lowers it further
    prompt_style: str = "cot"            # "cot" (Qwen2.5-Math) or "compact" (built-in task)
    engine: str = AUTO                   # "auto": vLLM when it imports, else transformers
    limit: int | None = None             # the first rows of each benchmark only (a quick look)
    problem_key: str = PROBLEM_KEY
    answer_key: str = ANSWER_KEY
    reward: str | None = None            # verifier.reward ("math", "exact", module:function); None: the verifier's
    seed: int = 0
    out: str = ""                        # write the results as JSON here ("" = do not)
    progress: bool = True                # a progress bar over the prompts
    vllm: dict = field(default_factory=dict)
    hf: dict = field(default_factory=dict)
    verifier: VerifierConfig = VerifierConfig()

    def __post_init__(self) -> None:
        def need(ok, key, allowed):
            if not ok:
                raise ConfigError(f"gvm.eval key {key}={getattr(self, key)!r}: {allowed}")
        need(bool(self.model), "model", "give model=/path/to/hf_folder")
        need(bool(self.data), "data", "give data=file.jsonl (or a folder, or a,b,c)")
        need(self.k >= 1, "k", "must be >= 1")
        need(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")
        need(0 < self.top_p <= 1, "top_p", "must lie in (0, 1]")
        need(self.max_tokens >= 1, "max_tokens", "must be >= 1")
        need(self.max_prompt_tokens >= 1, "max_prompt_tokens", "must be >= 1")
        need(self.prompt_style in PROMPT_STYLES, "prompt_style", f"must be one of {tuple(PROMPT_STYLES)}")
        need(self.engine in ENGINE_NAMES, "engine", f"must be one of {ENGINE_NAMES}")
        need(self.limit is None or self.limit >= 1, "limit", "must be >= 1 or null")
        if self.reward is not None:
            try:
                replace(self.verifier, reward=self.reward)
            except ValueError as error:
                raise ConfigError(f"gvm.eval key reward={self.reward!r}: {error}") from None

    @property
    def verifier_config(self) -> VerifierConfig:
        return self.verifier if self.reward is None else replace(self.verifier, reward=self.reward)


def data_files(spec: str) -> list[Path]:
    """Files named by `data`: a file, a folder (its *.jsonl, sorted), or a comma-separated list."""
    files: list[Path] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise ConfigError(f"gvm.eval key data={part!r}: the folder holds no *.jsonl file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"gvm.eval key data={part!r}: no such file or folder")
    return files


def table(results: list[EvalResult], k: int, model: str) -> str:
    """The paper's Table 1 layout: one column per benchmark (its order first), then the average;
    avg@k and pass@k rows, in percent."""
    order = sorted(results, key=lambda r: (TABLE_ORDER.index(r.name) if r.name in TABLE_ORDER else len(TABLE_ORDER),
                                           r.name))
    heads = [TABLE_NAMES.get(r.name, r.name) for r in order] + ["Average"]
    lines = [f"| {model} | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for label, value in ((f"avg@{k}", lambda r: r.avg_at_k), (f"pass@{k}", lambda r: r.pass_at_k)):
        cells = [100 * value(r) for r in order]
        lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {np.mean(cells):.2f} |")
    return "\n".join(lines)


def run_cli(cfg: EvalCliConfig) -> list[EvalResult]:
    """Evaluate cfg.model on every file of cfg.data; prints the table, writes cfg.out if set."""
    check_model_folder(cfg.model, "model")
    files = data_files(cfg.data)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    sets = []
    budget = prompt_budget(cfg.max_prompt_tokens, context_length(cfg.model, cfg.vllm.get("max_model_len")),
                           cfg.max_tokens)
    for path in files:  # read and check every file before the engine starts
        rows = load_prompts(path, cfg.problem_key, cfg.answer_key)[: cfg.limit]
        sets.append((path.stem, to_prompts(rows, tokenizer, cfg.prompt_style, max_tokens=budget, name=str(path),
                                           keep_too_long=True)))
    spec = resolve_engine(cfg.engine, cfg.vllm, cfg.hf, seed=cfg.seed, dtype=checkpoint_dtype(cfg.model))
    rollouts = Rollouts(spec.build(cfg.model), Verifier(cfg.verifier_config), stop_token_ids=model_stop_ids(cfg.model))
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    results = []
    bar = tqdm(total=sum(len(p) for _, p in sets), unit="prompt", disable=not cfg.progress, dynamic_ncols=True)
    try:
        for name, prompts in sets:
            start = time.perf_counter()
            bar.set_description(name)
            parts = []
            for offset in range(0, len(prompts), CHUNK_PROMPTS):
                chunk = prompts[offset:offset + CHUNK_PROMPTS]
                parts.append(evaluate(rollouts, chunk, k=cfg.k, sampling=sampling, name=name))
                bar.update(len(chunk))
            result = merged(parts, name)
            results.append(result)
            unanswered = f"  {result.too_long} too long (counted wrong)" if result.too_long else ""
            bar.write(f"{name:>16}  n={result.num_prompts:<5} avg@{cfg.k}={result.avg_at_k:.4f}  "
                      f"pass@{cfg.k}={result.pass_at_k:.4f}  ({time.perf_counter() - start:.1f} s){unanswered}")
    finally:
        bar.close()
        rollouts.close()
    print(table(results, cfg.k, Path(cfg.model).name or cfg.model), flush=True)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        average = {f"avg@{cfg.k}": float(np.mean([r.avg_at_k for r in results])),
                   f"pass@{cfg.k}": float(np.mean([r.pass_at_k for r in results]))}
        Path(cfg.out).write_text(json.dumps({"config": asdict(cfg), "results": [
            {"name": r.name, **r.summary()} for r in results], "average": average}, indent=2))
    return results


def main(argv: list[str] | None = None) -> list[EvalResult]:
    parser = add_launcher_args(argparse.ArgumentParser(
        prog="python -m gvm.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. model=/path data=math500.jsonl k=8")
    args = parser.parse_args(argv)
    tree: dict = {}
    for text in args.overrides:
        set_dotted(tree, *parse_override(text, shortcuts={}))
    cfg = build(EvalCliConfig, tree)
    return run_cli(cfg)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
