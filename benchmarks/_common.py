"""What every benchmark scenario shares: provenance columns and an atomic CSV write."""
from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess
from pathlib import Path

import torch

from flexcli.version import __version__
from flexcli.models.configs import named_config
from flexcli.models.dit import DiT


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def provenance() -> dict:
    """Columns that say which code and stack produced a row."""
    return {"torch": torch.__version__, "flexcli": __version__, "git_sha": git_sha(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def write_csv(rows: list[dict], path: Path) -> Path:
    """One row per measurement; written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def random_dit(model: str, input_size: int, seed: int = 0, std: float = 0.02) -> DiT:
    """A named-config DiT with every trainable weight drawn at random (DiT's init zeroes adaLN and the output)."""
    torch.manual_seed(seed)
    dit = DiT(named_config(model, input_size=input_size, num_classes=1000)).eval()
    with torch.no_grad():
        for p in dit.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return dit
