"""The quickstart job: a seeded tiny DiT checkpoint, flexified, described and exported.

It stands in for the built-in default model until one is trained (it has random weights).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from flexcli.api import describe, export_loras, flexify_checkpoint
from flexcli.io.atomic import atomic_path, writable_folder
from flexcli.models.configs import named_config
from flexcli.models.dit import DiT


def tiny_checkpoint(path: Path, name: str = "DiT-Tiny/2", seed: int = 0) -> Path:
    """Write a seeded random DiT in the original layout (.safetensors, official key names)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = DiT(named_config(name))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return path


def run_quickstart(out: Path, weak_patches=(4, 8), force: bool = False) -> dict[str, Path]:
    out = Path(out)
    writable_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "dit-tiny-2.safetensors"
    if force or not base.exists():
        tiny_checkpoint(base)
    flex, _, _ = flexify_checkpoint(base, list(weak_patches), out / "dit-tiny-2-flex.safetensors", force=True)
    info = out / "info.json"
    with atomic_path(info) as tmp:
        tmp.write_text(json.dumps(describe(flex), indent=2))
    adapters = out / "peft-adapters"
    export_loras(flex, adapters, force=True)
    return {"checkpoint": base, "flexified": flex, "info": info, "peft_adapters": adapters}
