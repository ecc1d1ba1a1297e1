"""What the training loop carries from one iteration to the next, and the checkpoints that keep it:
whole or absent, never deleted unless asked.

A checkpoint is a folder `<run>/checkpoints/iter<NNNNNN>/` holding the trainer's DeepSpeed
checkpoint (weights, Adam state, LR schedule, every rank's RNG states; PolicyTrainer.save_checkpoint),
every rank's engine sampling stream, `loop_state.json` (the next iteration, samples and seconds so
far, the world size, the prompt stream's position, the per-prompt statistics, the replay buffer, the resolved config)
and `MANIFEST.json` (every file with its size). It is written under `iter<N>.partial/`, flushed,
and renamed when complete; `checkpoints/latest` (the newest tag) is written after that, atomically.
A folder without a manifest that matches its files is not a checkpoint. The newest complete one
is what `resume=true` continues from; `checkpoint_keep` complete ones are kept, older ones removed.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gvm import distributed as gdist
from gvm.config_build import ConfigError
from gvm.failpoints import failpoint

log = logging.getLogger("gvm.train")

CHECKPOINTS = "checkpoints"
LOOP_STATE = "loop_state.json"
MANIFEST = "MANIFEST.json"
LATEST = "latest"
PARTIAL = ".partial"
DAMAGED = ".damaged"
ENGINE_RNG_FILE = "engine_rng_rank{rank}.pt"
TAG_RE = re.compile(r"^iter(\d+)$")


@dataclass
class LoopState:
    iteration: int = 0            # the next iteration to run (0-based)
    samples_generated: int = 0    # every sample the engine generated, pilot included
    seconds: float = 0.0          # wall time of the RL loop, without evaluation and checkpoints
    wall_seconds: float = 0.0     # wall time of the whole run before this launch
    world_size: int = 1           # ranks of the launch that wrote it (ZeRO cannot re-partition)
    prompts_drawn: int = 0        # the prompt stream's position (gvm.prompts.PromptStream)
    stats: dict = field(default_factory=dict)   # gvm.stats.PromptStats.state_dict()
    replay: list = field(default_factory=list)  # gvm.replay.ReplayBuffer.state_dict()
    config: dict = field(default_factory=dict)  # the resolved RunConfig that wrote it (to_dict)


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def tag_of(iteration: int) -> str:
    return f"iter{iteration:06d}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old content or the new, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)


def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def check_complete(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (None when it is): the problem, naming the file."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return f"{manifest_path} is missing (the checkpoint was not finished)"
    try:
        listed = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{manifest_path} is damaged ({error})"
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} holds {path.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
    if LOOP_STATE not in listed:
        return f"{folder / LOOP_STATE} is not in the manifest"
    return None


def list_checkpoints(run_dir: Path) -> tuple[list[Path], list[str]]:
    """(complete checkpoints, oldest first; the reasons the other checkpoint folders are not)."""
    root = checkpoint_root(run_dir)
    complete, problems = [], []
    if not root.is_dir():
        return complete, problems
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        if folder.name.endswith(PARTIAL):
            problems.append(f"{folder} was being written when the run stopped")
            continue
        if not TAG_RE.match(folder.name):
            continue
        reason = check_complete(folder)
        (problems.append(reason) if reason else complete.append(folder))
    complete.sort(key=lambda f: int(TAG_RE.match(f.name).group(1)))
    return complete, problems


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, saying which and what it passed over."""
    complete, problems = list_checkpoints(run_dir)
    for problem in problems:
        log.warning("not a complete checkpoint, passed over (nothing is deleted): %s", problem)
    latest = checkpoint_root(run_dir) / LATEST
    if complete and latest.is_file():
        named = latest.read_text(errors="replace").strip()
        if named != complete[-1].name:
            log.warning("%s names %r; the newest complete checkpoint is %s", latest, named, complete[-1].name)
    return complete[-1] if complete else None


def peek_iteration(folder: Path) -> int:
    """The iteration a checkpoint continues from, without loading it (to cut the logs back first)."""
    return int(json.loads((folder / LOOP_STATE).read_text())["iteration"])


def save_checkpoint(trainer, rollouts, run_dir: Path, state: LoopState, keep: int) -> Path:
    """The checkpoint of `state` (see the module docstring). Collective."""
    root = checkpoint_root(run_dir)
    tag = tag_of(state.iteration)
    partial, final = root / (tag + PARTIAL), root / tag
    if final.is_dir() and check_complete(final) is None:
        return final             # this iteration is saved already (a resume that ran no further)
    if gdist.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)     # a partial folder is never a checkpoint
    gdist.barrier()
    trainer.save_checkpoint(root, tag=partial.name, save_latest=False)
    torch.save(rollouts.engine.sampling_state(), partial / ENGINE_RNG_FILE.format(rank=gdist.rank()))
    gdist.barrier()
    failpoint("checkpoint:trainer")
    if gdist.rank() == 0:
        (partial / LOOP_STATE).write_text(json.dumps(asdict(state)))
        for path in partial.rglob("*"):
            if path.is_file():
                _fsync(path)
        _write_atomic(partial / MANIFEST, json.dumps(_manifest(partial), indent=1))
        failpoint("checkpoint:state")
        if final.exists():      # a damaged one of the same iteration (resumed from before it): keep it aside
            aside = _free_name(root, tag + DAMAGED)
            os.replace(final, aside)
            log.warning("moved the damaged %s aside to %s (nothing is deleted)", final, aside)
        os.replace(partial, final)
        failpoint("checkpoint:visible")
        _write_atomic(root / LATEST, tag + "\n")
        _prune(run_dir, keep)
    gdist.barrier()
    return final


def _free_name(root: Path, name: str) -> Path:
    candidate, number = root / name, 1
    while candidate.exists():
        number += 1
        candidate = root / f"{name}{number}"
    return candidate


def _prune(run_dir: Path, keep: int) -> None:
    """Remove all but the newest `keep` complete checkpoints (checkpoint_keep; 0 keeps all)."""
    if keep <= 0:
        return
    complete, _ = list_checkpoints(run_dir)
    for folder in complete[:-keep]:
        shutil.rmtree(folder)
        log.info("removed %s (checkpoint_keep=%d)", folder, keep)


def load_checkpoint(trainer, rollouts, run_dir: Path, folder: Path) -> LoopState:
    """Restore the trainer and the engine's sampling stream from `folder`; return its loop state.
    Collective."""
    try:
        state = LoopState(**json.loads((folder / LOOP_STATE).read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise ConfigError(f"config key resume=true: {folder / LOOP_STATE} is damaged ({error}); move {folder} "
                          f"aside to resume from the checkpoint before it") from None
    if state.world_size != gdist.world_size():
        raise ConfigError(f"config key resume=true: {folder} was written by {state.world_size} ranks, this "
                          f"launch has {gdist.world_size()}; ZeRO's optimizer state cannot be re-partitioned, "
                          f"so launch with the same number of ranks")
    try:
        trainer.load_checkpoint(checkpoint_root(run_dir), tag=folder.name)
        rollouts.engine.load_sampling_state(
            torch.load(folder / ENGINE_RNG_FILE.format(rank=gdist.rank()), weights_only=False))
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as error:
        raise ConfigError(f"config key resume=true: {folder} could not be loaded ({type(error).__name__}: {error}); "
                          f"move it aside to resume from the checkpoint before it") from None
    return state
