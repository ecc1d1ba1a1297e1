"""One fixed trainer scenario, run by tests/test_trainer_multirank.py twice: under
`torchrun --standalone --nproc_per_node 2` (this file as a script, ZeRO-3 over gloo) and in the
test process on one rank (`run_scenario` imported). Rank 0 writes what the test compares:
results.json (losses, per-sample norms, log-probs, statistics-only norms), weights.pt (the
updated weights) and an HF folder from save_hf."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gvm import distributed as gdist
from gvm.packing import Sample
from gvm.engines.weight_sync import iter_gathered_weights
from gvm.trainer import PolicyTrainer, TrainerConfig


def load_samples(path: Path) -> list[Sample]:
    return [Sample(**row) for row in json.loads(path.read_text())]


def run_scenario(model_dir: str, samples_file: Path, out_dir: Path) -> None:
    samples = load_samples(samples_file)
    trainer = PolicyTrainer(TrainerConfig(model_path=model_dir, dtype="float32", zero_stage=3, lr=1e-3,
                                          micro_batch_tokens=40,
                                          grad_norm_params="both", algorithm="grpo", kl_coef=0.05,
                                          attention="grouped",  # ranks make different numbers of body calls
                                          clip_low=0.2, clip_high=0.28,
                                          # k_proj.bias has a zero gradient up to rounding noise (softmax is
                                          # shift-invariant); a larger eps keeps Adam from blowing that noise up
                                          # to +-lr steps that differ between reduction orders.
                                          adam_eps=1e-5))
    results: dict = {"world_size": gdist.world_size()}
    results["logprobs"] = [lp.tolist() for lp in trainer.logprobs(samples)]
    steps = []
    for kind in ("raft", "raft++", "grpo"):  # raft++/grpo: old_logp and ref_logp filled by the trainer
        metrics = trainer.train_step(samples, kind)
        steps.append({"loss": metrics["loss"], "grad_norm": metrics["grad_norm"], "clip_frac": metrics["clip_frac"],
                      "embed": sorted(metrics["grad_norms_embed"].items()),
                      "head": sorted(metrics["grad_norms_head"].items()),
                      "exact": sorted(metrics["grad_norms_exact"].items())})
    results["steps"] = steps
    results["grad_norms"] = sorted(trainer.grad_norms(samples).items())
    weights = {name: tensor.clone() for name, tensor in iter_gathered_weights(trainer.engine.module)}
    trainer.save_hf(out_dir / "hf")
    if gdist.rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out_dir / "weights.pt")
        (out_dir / "results.json").write_text(json.dumps(results))
    gdist.barrier()


def main() -> None:
    parser = gdist.add_launcher_args(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--model", required=True)
    parser.add_argument("--samples", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # two ranks share the CI machine's two cores
    try:
        run_scenario(args.model, args.samples, args.out)
    except BaseException:
        gdist.shutdown()
        raise
    gdist.exit_after_success()


if __name__ == "__main__":
    main()
