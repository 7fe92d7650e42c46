"""`flexcli distill --resume` checks its settings (#17): a changed seed, data, batch size or model is an error
unless `--allow-changes` is given; every change made on resume is recorded in config.yaml (`changes`) as
what was actually used, with the first step it applied to."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from flexcli.errors import FlexcliError
from flexcli.train.config import DistillConfig, read_config
from flexcli.train.state import DataOrder

GUARDED = ("seed", "data", "data_limit", "vae", "batch_size")  # and the input checkpoint ("model")
NOT_SETTINGS = ("changes", "recipe")


def _changes(saved: DistillConfig, cfg: DistillConfig, state: dict, sha: str, data: dict) -> dict:
    out = {f.name: (getattr(saved, f.name), getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
           if f.name not in NOT_SETTINGS and getattr(saved, f.name) != getattr(cfg, f.name)}
    if state.get("source_sha256") != sha:
        out["model"] = (state.get("source_sha256"), sha)
    known = state.get("data")
    if known is not None and known != data and "data" not in out:
        out["data"] = (f"{known.get('source')} ({known.get('count')} examples)",
                       f"{data.get('source')} ({data.get('count')} examples)")
    return out


def check_resume(config_path: Path, cfg: DistillConfig, state: dict, sha: str, data: dict, checkpoint: Path,
                 allow_changes: bool) -> tuple[DistillConfig, dict]:
    """(the config to continue with, its changes {setting: (before, now)}); config.changes records them."""
    saved = read_config(config_path)
    changes = _changes(saved, cfg, state, sha, data)
    guarded = [k for k in changes if k in GUARDED + ("model",)]
    if guarded and not allow_changes:
        k = guarded[0]
        if k == "model":
            raise FlexcliError(f"--resume: {checkpoint} is not the checkpoint this run started from",
                               "pass the same input checkpoint as the interrupted run, or --allow-changes to "
                               "continue from the new one")
        before, now = changes[k]
        raise FlexcliError(f"--resume: {k} changed from {before} to {now} since the run started",
                           f"drop the new {k} to continue the run as it was, or pass --allow-changes to continue "
                           "with it (recorded in config.yaml)")
    step = int(state["step"]) + 1
    record = [{"step": step, "setting": k, "from": _plain(a), "to": _plain(b)} for k, (a, b) in changes.items()]
    return dataclasses.replace(cfg, changes=(saved.changes or []) + record or None), changes


def _plain(value):
    return value[:12] if isinstance(value, str) and len(value) == 64 else value  # a SHA-256: its prefix


def apply_changes(trainer, changes: dict) -> None:
    """Make the allowed changes take effect from here: a new seed re-seeds the generator; new data gets a
    fresh data order (a new batch size and model need nothing more)."""
    if "seed" in changes:
        trainer.gen.manual_seed(int(changes["seed"][1]))
    if {"data", "data_limit", "vae"} & set(changes) or trainer.order.n != len(trainer.data):
        trainer.order = DataOrder(len(trainer.data), trainer.gen)
