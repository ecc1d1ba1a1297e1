"""The run folder: what a launch finds there and what it may do with it. Nothing a run wrote is
deleted unless the user asks (`overwrite=true`), and a resume never mixes two runs.

- Empty or new folder: a fresh run.
- `overwrite=true`: everything an earlier run left there is deleted first (listed in the log).
- `resume=true`: continue from the newest complete checkpoint (gvm.loop_state), after checking that
  the settings that decide what the run is match the ones it was written with (RESUMABLE_KEYS may
  change: the length, logging, evaluation and checkpoint cadence). With no checkpoint yet, a
  folder holding only the earlier launch's set-up (config.yaml, base model, a finished warm start,
  the data splits) is reused; one holding its logs or model stops with what it found.
- Neither, on a folder an earlier run used: stop, say what is there and the three ways on.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from gvm import distributed as gdist
from gvm.config import RunConfig, resume_differences
from gvm.config_build import ConfigError
from gvm.loop_state import LOOP_STATE, list_checkpoints, newest_checkpoint

log = logging.getLogger("gvm.train")

# What a run writes into its folder; the first group is its results, the second its set-up.
RESULTS = ("metrics.jsonl", "allocations.jsonl", "summary.json", "accuracy.png", "tb", "checkpoints", "final")
SETUP = ("config.yaml", "base_model", "warmstart", "data", "wandb", "wandb_run_id")


@dataclass(frozen=True)
class Launch:
    run_dir: Path
    resume_from: Path | None     # the checkpoint to continue from (None: the RL loop starts at iteration 0)
    found: tuple[str, ...]       # what an earlier launch left in the folder


def plan_launch(cfg: RunConfig) -> Launch:
    """What this launch does with its folder (reads only; every rank computes the same)."""
    run_dir = cfg.run_dir
    found = tuple(name for name in (*RESULTS, *SETUP) if (run_dir / name).exists())
    if cfg.overwrite or not found:
        return Launch(run_dir, None, found)
    if not cfg.resume:
        raise ConfigError(f"the run folder {run_dir} holds an earlier run ({', '.join(found)}); give resume=true to "
                          f"continue it, overwrite=true to delete it and start afresh, or another name=")
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is not None:
        _check_same_run(cfg, json.loads((checkpoint / LOOP_STATE).read_text()).get("config", {}), checkpoint)
        return Launch(run_dir, checkpoint, found)
    results = [name for name in found if name in RESULTS and not (name == "checkpoints" and not _any_files(run_dir / name))]
    _, problems = list_checkpoints(run_dir)
    if results:
        raise ConfigError(f"config key resume=true: {run_dir} holds no complete checkpoint to continue from "
                          f"({'; '.join(problems) or 'none was written'}), but it holds {', '.join(results)} of an "
                          f"earlier run; nothing was deleted. overwrite=true deletes them and starts afresh")
    if (run_dir / "config.yaml").is_file():
        _check_same_run(cfg, yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, run_dir / "config.yaml")
    return Launch(run_dir, None, found)


def _any_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*"))


def _check_same_run(cfg: RunConfig, saved: dict, source: Path) -> None:
    allowed, refused = resume_differences(cfg, saved)
    if refused:
        raise ConfigError(f"config key resume=true: these settings differ from the run in {source}, which they "
                          f"define (give them as it ran, or start another run with name=): " + "; ".join(refused))
    for line in allowed:
        log.info("resume changes %s", line)


def apply_launch(cfg: RunConfig, launch: Launch) -> None:
    """Rank 0 clears the folder when asked (overwrite=true), then writes config.yaml (what this launch
    runs). Collective: every rank has planned (read the folder) before rank 0 changes it, or a slower
    rank would find this launch's own config.yaml and call the folder used."""
    gdist.barrier()
    if gdist.rank() == 0:
        if cfg.overwrite and launch.found:
            log.warning("overwrite=true: deleting %s from %s", ", ".join(launch.found), launch.run_dir)
            for name in launch.found:
                path = launch.run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        launch.run_dir.mkdir(parents=True, exist_ok=True)
        (launch.run_dir / "config.yaml").write_text(cfg.to_yaml())
    gdist.barrier()
