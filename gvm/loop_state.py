"""What the training loop carries from one iteration to the next, and the checkpoints that keep it.

A checkpoint is the trainer's DeepSpeed checkpoint (weights, Adam state, LR schedule, RNG states;
`PolicyTrainer.save_checkpoint`) under `<run>/checkpoints/<tag>/`, plus `loop_state.json` beside
it: the next iteration, the samples and seconds so far, the world size that wrote it, and the
per-prompt statistics. `resume=true` continues from the newest one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gvm import distributed as gdist
from gvm.config_build import ConfigError

LOOP_STATE = "loop_state.json"
CHECKPOINTS = "checkpoints"


@dataclass
class LoopState:
    iteration: int = 0            # the next iteration to run (0-based)
    samples_generated: int = 0    # every sample the engine generated, pilot included
    seconds: float = 0.0          # wall time of the RL loop, without evaluation and checkpoints
    world_size: int = 1           # ranks of the launch that wrote it (ZeRO cannot re-partition)
    prompts_drawn: int = 0        # the prompt stream's position (gvm.prompts.PromptStream)
    stats: dict = field(default_factory=dict)   # gvm.stats.PromptStats.state_dict()


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder of the newest checkpoint with its loop state, or None."""
    latest = checkpoint_root(run_dir) / "latest"
    if not latest.is_file():
        return None
    tag_dir = checkpoint_root(run_dir) / latest.read_text().strip()
    return tag_dir if (tag_dir / LOOP_STATE).is_file() else None


def save_checkpoint(trainer, run_dir: Path, state: LoopState) -> Path:
    """The trainer's checkpoint and the loop state beside it. Collective."""
    tag_dir = trainer.save_checkpoint(checkpoint_root(run_dir))
    if gdist.rank() == 0:
        (tag_dir / LOOP_STATE).write_text(json.dumps(asdict(state)))
    gdist.barrier()
    return tag_dir


def load_checkpoint(trainer, run_dir: Path, tag_dir: Path) -> LoopState:
    """Restore the trainer from `tag_dir` and return the loop state saved with it. Collective."""
    state = LoopState(**json.loads((tag_dir / LOOP_STATE).read_text()))
    if state.world_size != gdist.world_size():
        raise ConfigError(f"config key resume=true: {tag_dir} was written by {state.world_size} ranks, this "
                          f"launch has {gdist.world_size()}; ZeRO's optimizer state cannot be re-partitioned, "
                          f"so launch with the same number of ranks")
    trainer.load_checkpoint(checkpoint_root(run_dir), tag=tag_dir.name)
    return state
