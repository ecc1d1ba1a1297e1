"""Weights & Biases for a run (`log.wandb=true`): the same scalars as TensorBoard, the resolved
config, and the accuracy plot. `wandb` is an optional extra (pip install 'gvm[wandb]'); offline
runs (WANDB_MODE=offline, no network) write to <run>/wandb/ for `wandb sync` later.

A resumed run continues the same W&B run (its id is kept in <run>/wandb_run_id). W&B cannot drop
steps it already holds: iterations redone after a resume are logged again at their step, which
W&B keeps only where it had none.
"""
from __future__ import annotations

import secrets
from pathlib import Path

RUN_ID_FILE = "wandb_run_id"


class WandbLog:
    """Rank 0's W&B run (see the module docstring)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, tags: tuple[str, ...], config: dict) -> None:
        try:
            import wandb
        except ImportError as error:
            raise ImportError("log.wandb=true needs the wandb package: pip install 'gvm[wandb]' (or wandb)") from error
        self._wandb = wandb
        id_file = Path(run_dir) / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run = wandb.init(project=project, name=name, tags=list(tags), config=config, dir=str(run_dir),
                              id=run_id, resume="allow")
        id_file.write_text(run_id + "\n")

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def image(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()
