"""The model families flexcli knows, and reading any of their checkpoints.

Adding a family means writing its model (`flexcli/models/<family>.py`, a `FlexModel`) and one small adapter
here (`flexcli/families/<family>.py`: its `Family` entry: config, layouts reader, compute terms), then listing
it below.
"""
from __future__ import annotations

from pathlib import Path

from flexcli.errors import FlexcliError
from flexcli.families import dit, pixart, wan
from flexcli.families.base import Family, FamilyCost
from flexcli.io.checkpoint import (METADATA_KEY, SAFETENSORS_NAMES, Checkpoint, read_flexcli, read_json,
                                   read_safetensors, safetensors_keys, safetensors_metadata, sniff)

FAMILIES: dict[str, Family] = {f.name: f for f in (dit.FAMILY, pixart.FAMILY, wan.FAMILY)}
DEFAULT = "dit"  # tried last: its reader's errors say what a checkpoint must hold

__all__ = ["FAMILIES", "Family", "FamilyCost", "family", "family_of", "read_checkpoint"]


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise FlexcliError(f"unknown model family '{name}'", f"flexcli knows: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(obj) -> Family:
    """The family of a model or of a config."""
    for f in FAMILIES.values():
        if isinstance(obj, (f.model, f.config)):
            return f
    raise TypeError(f"{type(obj).__name__} belongs to no known family")


def _peek(path: Path) -> tuple[set[str] | None, dict | None]:
    """(tensor names, config.json) of a file or model folder, from headers only (a PyTorch file: memory-mapped);
    a pipeline folder without transformer/ gives its model_index.json, so that its family can explain."""
    if path.is_dir():
        folder = path / "transformer" if (path / "transformer").is_dir() else path
        config = folder / "config.json"
        if not config.is_file() and (path / "model_index.json").is_file():
            config = path / "model_index.json"
        config_json = read_json(config.read_text(), config.name, folder) if config.is_file() else None
        files = [folder / n for n in SAFETENSORS_NAMES if (folder / n).is_file()] or sorted(folder.glob("*.safetensors"))
        return (safetensors_keys(files[0]) if files else None), config_json
    if sniff(path) == "safetensors":
        return safetensors_keys(path), None
    if sniff(path) == "torch":
        return torch_keys(path), None
    return None, None


def torch_keys(path: Path) -> set[str] | None:
    """The tensor names of a PyTorch state dict file (also under "state_dict", "ema" or "model"), memory-mapped
    so no tensor is read; None when it cannot be read that way (the family readers then explain)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) format, or not weights-only: let the readers say what is wrong
        return None
    for key in ("state_dict", "ema", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return set(obj) if isinstance(obj, dict) else None


def read_checkpoint(path: str | Path, use_ema: bool = True) -> Checkpoint:
    """Read a checkpoint of any known family and layout; one-line FlexcliError on bad input."""
    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"checkpoint {path} not found", "check the path")
    if path.is_file() and sniff(path) == "safetensors":
        metadata = safetensors_metadata(path)
        if METADATA_KEY in metadata:
            tensors, _ = read_safetensors(path)
            name = read_json(metadata[METADATA_KEY], "the flexcli metadata", path).get("family", DEFAULT)
            return read_flexcli(path, metadata, tensors, family(name).config)
    keys, config_json = _peek(path)
    for f in FAMILIES.values():
        if f.name != DEFAULT and (keys is not None or config_json is not None) and f.claims(keys or set(), config_json):
            return f.read(path, use_ema=use_ema)
    return FAMILIES[DEFAULT].read(path, use_ema=use_ema)
