"""The mechanism itself, without training noise: how far each sampler's gradient estimate falls from
the true gradient, at fixed policies, on a fixed prompt batch, at the same generated samples.

    python benchmarks/bench_variance.py --models warm=runs/x/warmstart/final,rl=runs/x/final
    python benchmarks/bench_variance.py --models warm=... --algorithms grpo --reps 16

For each policy and algorithm: a reference gradient from `--reference-mult` x the budget of
uniform samples; then for each sampler, `--reps` independent draws of the same budget (pilot and
dropped samples counted), each turned into two gradient estimates of all the model's parameters:

    per-prompt   sum_i mean_j A_ij grad log pi(y_ij | x_i)       the estimator V(n) describes
                 (RAFT: the mean over prompt i's accepted samples; GRPO: A_ij / n_i)
    token-mean   sum_ij A_ij sum_t grad log pi(y_ijt) / tokens   the loss the trainer applies

and the mean squared distance to the reference's same estimator, as a ratio to uniform's with a
bootstrap 95 % interval over draws, beside the mean R_pred the sampler predicted. uniform2x (twice
the samples) is the control: its ratio must come out near 0.5. The reference's own noise adds
about 1 / reference-mult of uniform's distance to every sampler alike.

Samplers (gvm.samplers, fresh statistics each draw): uniform, uniform2x, gvm-paper (pilot thrown
away, unsolved skipped, no cap), gvm (pilot kept, the run defaults), gvm-both (the same with G_i
from embedding + LM head instead of the embedding alone), ours (adaptive, first visit: a pilot),
ours-revisit (adaptive with one earlier visit of n samples per prompt in its history: no pilot).
A name ending in -iw is that sampler with `sampler.reweight=true`: each sample's loss weight
n_bar / n_i (gvm.stages.allocation_weights) undoes the allocation's re-weighting of the token mean, so
that estimator targets the same gradient as uniform's (the per-prompt one is left as it is).
DAPO is left out: it replaces prompts of the batch with others, so its estimate is of another
gradient; the convergence benchmark measures it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REWEIGHTED, RESULTS_DIR, append_results, machine_name, reweighted  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from gvm import distributed as gdist  # noqa: E402
from gvm.algorithms import get_algorithm  # noqa: E402
from gvm.allocation import predicted_variance_ratio  # noqa: E402
from gvm.colocation import Colocation  # noqa: E402
from gvm.config import load_config  # noqa: E402
from gvm.engines.factory import model_stop_ids, resolve_engine  # noqa: E402
from gvm.prompts import Prompt, PromptStream, load_rows, to_prompts  # noqa: E402
from gvm.rollouts import Rollouts  # noqa: E402
from gvm.run_log import PhaseTimer  # noqa: E402
from gvm.samplers import SamplerContext, make_sampler, outcome_counts  # noqa: E402
from gvm.stages import make_samples  # noqa: E402
from gvm.stats import PromptStats  # noqa: E402
from gvm.trainer import PolicyTrainer  # noqa: E402
from gvm.verify import Verifier  # noqa: E402

BASE_SAMPLERS = ("uniform", "uniform2x", "gvm-paper", "gvm", "gvm-both", "ours", "ours-revisit")
SAMPLERS = BASE_SAMPLERS + tuple(name + REWEIGHTED for name in ("gvm-paper", "gvm", "ours", "ours-revisit"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="name=HF folder, comma-separated (the policies to measure at)")
    p.add_argument("--algorithms", default="raft++,grpo")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--prompts", type=int, default=32, help="the fixed prompt batch")
    p.add_argument("--per-prompt", type=int, default=8, help="n: the budget is n x prompts samples")
    p.add_argument("--pilot", type=int, default=2)
    p.add_argument("--reps", type=int, default=16)
    p.add_argument("--reference-mult", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="")
    p.add_argument("--extra", nargs="*", default=["task.slip_rate=0"], help="run-config overrides (the task)")
    args = p.parse_args(argv)
    unknown = set(args.samplers.split(",")) - set(SAMPLERS)
    if unknown:
        p.error(f"unknown --samplers {sorted(unknown)}; choose from {list(SAMPLERS)}")
    if "uniform" not in args.samplers.split(","):
        p.error("--samplers must include uniform (every ratio is to uniform's distance)")
    return args


def sampler_overrides(name: str, n: int, m: int, pilot: int) -> list[str]:
    return reweighted(name, lambda base: _base_overrides(base, n, m, pilot))


def _base_overrides(name: str, n: int, m: int, pilot: int) -> list[str]:
    return {
        "uniform": ["sampler.kind=uniform", f"sampler.n_per_prompt={n}"],
        "uniform2x": ["sampler.kind=uniform", f"sampler.n_per_prompt={2 * n}"],
        "gvm-paper": ["sampler.kind=gvm", f"sampler.pilot_n={pilot}", f"sampler.budget={(n - pilot) * m}",
                      "sampler.reuse_pilot_samples=false", "sampler.zero_accept=skip", "sampler.max_per_prompt=null"],
        "gvm": ["sampler.kind=gvm", f"sampler.pilot_n={pilot}", f"sampler.budget={(n - pilot) * m}"],
        "gvm-both": ["sampler.kind=gvm", f"sampler.pilot_n={pilot}", f"sampler.budget={(n - pilot) * m}",
                     "trainer.grad_norm_params=both"],
        "ours": ["sampler.kind=adaptive", f"sampler.pilot_n={pilot}", f"sampler.budget={n * m}"],
        "ours-revisit": ["sampler.kind=adaptive", f"sampler.pilot_n={pilot}", f"sampler.budget={n * m}"],
    }[name]


class FixedBatch(PromptStream):
    """The same prompts at every draw (a stream whose every `take` is the batch)."""

    def take(self, count: int) -> list[Prompt]:
        if count != len(self.prompts):
            raise ValueError(f"the fixed batch holds {len(self.prompts)} prompts, asked for {count}")
        self.position += count
        return list(self.prompts)


def flat_gradient(model, samples, weights, per_token: bool) -> torch.Tensor:
    """Gradient of sum_s weights[s] * sum_t log pi(y_st) (per_token: divided by all the tokens), as
    one flat float64 vector over all parameters (the estimates are sums of these)."""
    model.zero_grad(set_to_none=True)
    tokens = sum(len(s.response_ids) for s in samples)
    for start in range(0, len(samples), 64):
        chunk, w = samples[start:start + 64], weights[start:start + 64]
        width = max(len(s.prompt_ids) + len(s.response_ids) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.float32)
        for row, s in enumerate(chunk):
            seq = list(s.prompt_ids) + list(s.response_ids)
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, len(s.prompt_ids):len(seq)] = 1.0            # response tokens (predicted from the left)
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        loss = (torch.tensor(w, dtype=torch.float32)[:, None] * token_logp).sum()
        (loss / tokens if per_token else loss).backward()
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters() if p.grad is not None])


def estimates(model, collected, algorithm, tag: str, reweight: bool = False) -> dict[str, torch.Tensor]:
    """The per-prompt and token-mean estimates of one draw (`reweight`: the trainer's loss weights
    in the token mean; the per-prompt mean needs none)."""
    data = make_samples(collected.batch, algorithm, tag, baseline=collected.baseline, reweight=reweight)
    if not data.samples:
        size = sum(p.numel() for p in model.parameters())
        return {"per-prompt": torch.zeros(size, dtype=torch.float64), "token-mean": torch.zeros(size, dtype=torch.float64)}
    advantages = [float(s.advantage) for s in data.samples]
    trained = np.bincount(data.owners, minlength=len(collected.batch.prompts))
    per_prompt = [a / w / trained[o] for a, w, o in zip(advantages, data.weights, data.owners)]
    return {"per-prompt": flat_gradient(model, data.samples, per_prompt, per_token=False),
            "token-mean": flat_gradient(model, data.samples, advantages, per_token=True)}


def ratio_interval(values: list[float], base: list[float], rounds: int = 5000, seed: int = 0) -> tuple:
    """mean(values) / mean(base) and a bootstrap 95 % interval (draws resampled independently)."""
    rng = random.Random(seed)
    point = statistics.mean(values) / statistics.mean(base)
    boots = sorted(statistics.mean(rng.choices(values, k=len(values))) / statistics.mean(rng.choices(base, k=len(base)))
                   for _ in range(rounds))
    return point, boots[int(0.025 * rounds)], boots[int(0.975 * rounds)]


def measure(args, model_name: str, model_dir: str, algorithm_name: str, prompts, rollouts, trainer) -> dict:
    n, m = args.per_prompt, args.prompts
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    algorithm = get_algorithm(algorithm_name)
    timer = PhaseTimer()
    swap = Colocation(trainer, rollouts, timer)

    def sampler_for(name: str, stats: PromptStats):
        cfg = load_config(None, [*args.extra, f"model={model_dir}", f"algorithm={algorithm_name}",
                                 f"data.prompts_per_iteration={m}", *sampler_overrides(name, n, m, args.pilot)])
        trainer.config = dataclasses.replace(trainer.config, grad_norm_params=cfg.trainer.grad_norm_params)
        return make_sampler(SamplerContext(cfg=cfg, algorithm=algorithm, rollouts=rollouts, swap=swap, timer=timer,
                                           trainer=trainer, stream=FixedBatch(prompts, args.seed), stats=stats))

    # The reference: reference-mult x the budget of uniform samples, as one draw.
    start = time.perf_counter()
    big = load_config(None, [*args.extra, f"model={model_dir}", f"algorithm={algorithm_name}",
                             f"data.prompts_per_iteration={m}", "sampler.kind=uniform",
                             f"sampler.n_per_prompt={n * args.reference_mult}"])
    reference_sampler = make_sampler(SamplerContext(cfg=big, algorithm=algorithm, rollouts=rollouts, swap=swap,
                                                    timer=timer, trainer=trainer, stream=FixedBatch(prompts, args.seed),
                                                    stats=PromptStats()))
    reference = estimates(model, reference_sampler.collect(0), algorithm, "reference")
    print(f"  {model_name}/{algorithm_name}: reference from {n * args.reference_mult * m} samples "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    results = {}
    for name in args.samplers.split(","):
        distances = {"per-prompt": [], "token-mean": []}
        predicted, generated = [], []
        for rep in range(args.reps):
            stats = PromptStats()
            sampler = sampler_for(name, stats)
            if name.startswith("ours-revisit"):   # one earlier visit of n samples per prompt, in the history
                earlier = sampler_for("uniform", stats).collect(rep)
                stats.visit([p.key for p in prompts], -1, sampler.cfg.history_decay)
                stats.count_outcomes([p.key for p in earlier.batch.prompts], *outcome_counts(earlier.batch))
            collected = sampler.collect(rep)
            generated.append(collected.generated)
            if collected.estimates is not None:
                rates, grad = collected.estimates
                predicted.append(predicted_variance_ratio(grad, rates, collected.counts_used, collected.generated,
                                                          alpha=sampler.cfg.alpha, beta=sampler.cfg.beta,
                                                          objective=sampler.objective))
            else:
                predicted.append(1.0)
            for kind, value in estimates(model, collected, algorithm, f"{name}/{rep}", sampler.cfg.reweight).items():
                distances[kind].append(float((value - reference[kind]).pow(2).sum()))
            timer.pop()
        results[name] = {"distances": distances, "R_pred": statistics.mean(p for p in predicted if math.isfinite(p)),
                         "generated": statistics.mean(generated)}
        print(f"  {model_name}/{algorithm_name}/{name}: mean squared distance per-prompt "
              f"{statistics.mean(distances['per-prompt']):.4g}, token-mean {statistics.mean(distances['token-mean']):.4g}"
              f"; {statistics.mean(generated):.0f} samples; R_pred {results[name]['R_pred']:.2f}", flush=True)
    base = results["uniform"]["distances"]
    for name, r in results.items():
        r["ratio"] = {kind: ratio_interval(r["distances"][kind], base[kind]) for kind in base}
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    models = dict(item.split("=", 1) for item in args.models.split(","))
    print(f"# variance benchmark on {machine_name()}: {list(models)} x {args.algorithms} x {args.samplers}, "
          f"{args.prompts} prompts x {args.per_prompt}, {args.reps} draws", flush=True)
    gdist.init_distributed()
    out, lines = {}, []
    for model_name, model_dir in models.items():
        cfg = load_config(None, [*args.extra, f"model={model_dir}", "task.num_eval=1"])
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        train_rows, _ = load_rows(cfg)
        pool = to_prompts(train_rows, tokenizer, cfg.prompt_style, max_tokens=cfg.data.max_prompt_tokens)
        prompts = random.Random(args.seed).sample(pool, args.prompts)
        spec = resolve_engine(cfg.rollout.engine, cfg.rollout.vllm, cfg.rollout.hf, seed=args.seed, dtype="float32")
        rollouts = Rollouts(spec.build(model_dir), Verifier(cfg.verifier), stop_token_ids=model_stop_ids(model_dir))
        trainer = PolicyTrainer(dataclasses.replace(cfg.trainer, model_path=model_dir, zero_stage=0, torch_adam=True),
                                tokenizer)
        for algorithm in args.algorithms.split(","):
            result = measure(args, model_name, model_dir, algorithm, prompts, rollouts, trainer)
            out[f"{model_name}/{algorithm}"] = result
            lines += [f"### {model_name} policy, {algorithm}", "",
                      "| sampler | samples | R_pred | per-prompt MSE / uniform (95% CI) | token-mean MSE / uniform (95% CI) |",
                      "|---|---|---|---|---|"]
            for name, r in result.items():
                cells = [f"{v:.2f} ({lo:.2f}-{hi:.2f})" for v, lo, hi in (r["ratio"]["per-prompt"], r["ratio"]["token-mean"])]
                lines.append(f"| {name} | {r['generated']:.0f} | {r['R_pred']:.2f} | {cells[0]} | {cells[1]} |")
            lines.append("")
        rollouts.close()
    print("\n".join(lines))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    header = (f"Machine: {machine_name()}. `python benchmarks/bench_variance.py {' '.join(sys.argv[1:])}`; "
              f"{args.prompts} prompts x {args.per_prompt} samples, pilot {args.pilot}, {args.reps} draws per sampler, "
              f"reference {args.reference_mult}x the budget.\n\n")
    (RESULTS_DIR / f"bench_variance{args.tag}.md").write_text(header + "\n".join(lines) + "\n")
    (RESULTS_DIR / f"bench_variance{args.tag}.json").write_text(json.dumps(
        {"args": vars(args), "results": {k: {n: {kk: vv for kk, vv in r.items()} for n, r in v.items()}
                                         for k, v in out.items()}}, indent=1, default=str))
    append_results("bench_variance", [
        {"case": f"{key}/{name}{args.tag}", "metric": f"mse_ratio_{kind}", "value": r["ratio"][kind][0], "unit": "x"}
        for key, v in out.items() for name, r in v.items() for kind in ("per-prompt", "token-mean")],
        json_name=f"bench_variance{args.tag}_rows.json")
    return out


if __name__ == "__main__":
    main()
