"""Checkpoint files, whatever the family: safe reading (safetensors, `torch.load(weights_only=True)`), the
`Checkpoint` every family's reader returns, and flexcli's own format.

"flexcli" layout: one safetensors file with the model's tensors under the family's own names plus what flexify
added (`flex.*`, LoRAs, per-size norms), and the configuration in the metadata under "flexcli" (family, config,
flex description, provenance). Each family's reader (`flexcli.families`) handles its release layouts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from flexcli.version import __version__
from flexcli.errors import FlexcliError
from flexcli.io.atomic import atomic_path

METADATA_KEY = "flexcli"
SAFETENSORS_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


@dataclass
class Checkpoint:
    """A checkpoint as read: tensors under the family's model names, the config and where each value came from."""

    state_dict: dict[str, torch.Tensor]
    config: Any  # the family's config dataclass
    layout: str  # "original", "diffusers" or "flexcli"
    path: Path
    inferred: dict[str, str] = field(default_factory=dict)  # config field -> source of its value
    flex: dict | None = None  # the flex description for flexified checkpoints
    metadata: dict = field(default_factory=dict)
    family: str = "dit"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for bad headers and truncated data
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlexcliError(f"{path} is not a readable safetensors file ({reason})",
                           "check that the file is complete (re-download or re-export it)") from e
    return tensors, metadata


def read_torch_state(path: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # train.py stores its args
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0] if str(e) else type(e).__name__
        raise FlexcliError(f"{path} cannot be loaded as a weights-only PyTorch checkpoint ({reason})",
                           "pass a DiT state dict (.pt/.safetensors) or a diffusers model folder") from e
    source = "state dict"
    if isinstance(obj, dict) and ("ema" in obj or "model" in obj):
        key = "ema" if (use_ema and "ema" in obj) else "model"
        if key not in obj:
            raise FlexcliError(f"{path} has no '{key}' weights", "drop --no-ema or pass another checkpoint")
        obj, source = obj[key], f"train.py checkpoint, '{key}' weights"
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj, source = obj["state_dict"], "'state_dict' entry"
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FlexcliError(f"{path} does not hold a state dict of tensors",
                           "pass a DiT state dict (.pt/.safetensors) or a diffusers model folder")
    return obj, source


def read_json(text: str, what: str, path: Path) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FlexcliError(f"{what} of {path} is not valid JSON ({e.msg})", "re-export the checkpoint") from e
    if not isinstance(value, dict):
        raise FlexcliError(f"{what} of {path} is not a JSON object", "re-export the checkpoint")
    return value


def sniff(path: Path) -> str:
    """Tell safetensors (8-byte little-endian header length, then a JSON header) from torch files."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if path.suffix == ".safetensors":
        return "safetensors"  # let safetensors report what is wrong with it
    return "unknown"


# --------------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------------
def checkpoint_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent tensors under checkpoint names (peft's `.base_layer` wrapper removed)."""
    return {k.replace(".base_layer.", "."): v.detach().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write a flexcli checkpoint (one safetensors file) atomically, with config and flex info in metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": f"flexcli.{model.family}", "format_version": 1, "family": model.family, "flexcli_version": __version__,
            "config": model.config.to_dict(), "flex": model.flex.describe() if model.flex is not None else None}
    meta.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(checkpoint_state_dict(model), str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def read_flexcli(path: Path, metadata: dict, tensors: dict, config_cls) -> Checkpoint:
    """A checkpoint in flexcli's own format (its family's config class given)."""
    meta = read_json(metadata[METADATA_KEY], "the flexcli metadata", path)
    if not isinstance(meta.get("config"), dict):
        raise FlexcliError(f"the flexcli metadata of {path} has no config", "re-export the checkpoint")
    return Checkpoint(tensors, config_cls.from_dict(meta["config"]), "flexcli", path,
                      {k: "metadata" for k in meta["config"]}, flex=meta.get("flex"), metadata=meta,
                      family=meta.get("family", "dit"))


def safetensors_metadata(path: Path) -> dict:
    """The metadata of a safetensors file, read from its header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error type for bad headers and truncated data
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlexcliError(f"{path} is not a readable safetensors file ({reason})",
                           "check that the file is complete (re-download or re-export it)") from e


def safetensors_keys(path: Path) -> set[str]:
    """The tensor names of a safetensors file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())
