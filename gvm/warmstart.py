"""Supervised warm start: a few hundred steps of fine-tuning on worked solutions, so that the
built-in model's acceptance rates spread across (0, 1) before RL starts.

A randomly initialised model never writes `\\boxed{<right number>}`: every p_i is 0 and neither
RAFT nor GVM has anything to work with. After the warm start the easy levels of the arithmetic
task are mostly solved and the hard ones rarely, which is the regime GVM is for.

It runs on the same `PolicyTrainer` as RL (RAFT's loss with advantage 1 is the token-mean
negative log-likelihood of the response), so it uses every rank, and it writes an ordinary
Hugging Face folder that the RL trainer and the rollout engine load.
"""
from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gvm import distributed as gdist
from gvm.config_build import require
from gvm.packing import Sample
from gvm.prompts import encode_prompt
from gvm.trainer import PolicyTrainer
from gvm.trainer_config import TrainerConfig

DONE_FILE = "WARMSTART_DONE"  # written last: a folder without it is an interrupted warm start
BATCH_STREAM = 7               # RNG stream of the batch draws: key [seed, 7], apart from the RL loop's


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised fine-tuning on worked solutions before RL (the run config's section `warmstart`),
    so that acceptance rates spread over (0, 1) instead of all being 0 (a random model never boxes
    the right number)."""
    steps: int | None = None             # optimizer steps; None: 600 for the built-in task + model, else 0
                                         # (300 left acceptance near 0.1: RL cannot outpace that much missing SFT)
    batch_size: int = 32                 # solutions per step
    lr: float = 5e-3                     # high: the tiny model starts from random weights
    min_lr_ratio: float = 0.1            # the cosine ends at lr * min_lr_ratio (5e-4)
    warmup_steps: int = 20
    solution_key: str = "solution"       # rows must hold a worked solution ending in \boxed{}

    def __post_init__(self) -> None:
        require(self.steps is None or self.steps >= 0, "warmstart.steps", self.steps, "must be >= 0 or null (auto)")
        require(self.batch_size >= 1, "warmstart.batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0, "warmstart.lr", self.lr, "must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "warmstart.min_lr_ratio", self.min_lr_ratio, "must lie in [0, 1]")
        require(self.warmup_steps >= 0, "warmstart.warmup_steps", self.warmup_steps, "must be >= 0")


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn: `<|im_end|>` with a ChatML template, else EOS."""
    if getattr(tokenizer, "chat_template", None):
        token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id is not None:
            return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the warm start cannot teach the model to stop")
    return tokenizer.eos_token_id


def solution_samples(rows: list[dict], tokenizer: Any, style: str, solution_key: str) -> list[Sample]:
    """One Sample per row with a worked solution: the formatted prompt, then the solution and the
    end-of-turn token as the response (advantage 1: plain likelihood)."""
    stop = end_of_turn_id(tokenizer)
    samples = []
    for i, row in enumerate(rows):
        solution = row.get(solution_key)
        if not isinstance(solution, str) or not solution.strip():
            continue
        response = list(tokenizer.encode(solution, add_special_tokens=False)) + [stop]
        samples.append(Sample(sample_id=i, prompt_ids=encode_prompt(row["problem"], tokenizer, style),
                              response_ids=response, advantage=1.0))
    return samples


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE_FILE).is_file()


def warm_start(trainer_config: TrainerConfig, settings: WarmStartConfig, rows: list[dict], tokenizer: Any,
               out_dir: Path, *, steps: int, style: str, seed: int, progress: bool = False) -> tuple[Path, list[float]]:
    """Fine-tune `trainer_config.model_path` on the rows' solutions for `steps` optimizer steps
    (cosine from `settings.lr` after a linear warm-up) and save it to `out_dir`. Returns the folder
    and the loss per step. Collective: every rank calls it with the same arguments."""
    samples = solution_samples(rows, tokenizer, style, settings.solution_key)
    if not samples:
        raise ValueError(f"warmstart.steps={steps} needs training rows with a worked solution in "
                         f"{settings.solution_key!r}; none has one (set warmstart.steps=0 or warmstart.solution_key)")
    config = dataclasses.replace(
        trainer_config, lr=settings.lr, lr_schedule="cosine", warmup_steps=min(settings.warmup_steps, steps - 1),
        total_steps=steps, min_lr_ratio=settings.min_lr_ratio, algorithm="raft", grad_norm_params="none",
        kl_coef=0.0, optimizer_steps_per_call=1)
    trainer = PolicyTrainer(config, tokenizer)
    rng = np.random.default_rng([seed, BATCH_STREAM])  # same on every rank: all ranks pass the same batch
    losses = []
    bar = _progress(steps, progress)
    for _ in range(steps):
        batch = [samples[i] for i in rng.choice(len(samples), size=min(settings.batch_size, len(samples)),
                                                 replace=False)]
        metrics = trainer.train_step(batch, "raft")
        losses.append(metrics["loss"])
        if bar is not None:
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    out_dir = Path(out_dir)
    trainer.save_hf(out_dir)
    if gdist.rank() == 0:
        (out_dir / DONE_FILE).write_text(f"steps={steps} final_loss={losses[-1]:.4f}\n")
    gdist.barrier()
    del trainer
    gc.collect()
    return out_dir, losses


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, desc="warm start", unit="step", dynamic_ncols=True)
