"""Read DiT checkpoints in any supported layout; write flexcli checkpoints (safetensors + metadata).

Layouts read:
* "original": facebookresearch/DiT state dicts, as `.pt`/`.pth` (torch.load(weights_only=True)) or
  `.safetensors` with the same keys; train.py checkpoints `{"model", "ema", "opt", "args"}` (EMA by default).
* "diffusers": a DiTTransformer2DModel folder (config.json + diffusion_pytorch_model.safetensors) or its
  safetensors file.
* "flexcli": a flexified (or plain) checkpoint written by flexcli: original keys plus `flex.*`/LoRA keys,
  with the configuration in the safetensors metadata under "flexcli".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flexcli.version import __version__
from flexcli.errors import FlexcliError
from flexcli.io import diffusers_layout as dl
from flexcli.io.atomic import atomic_path
from flexcli.models.configs import DiTConfig, heads_for
from flexcli.models.posembed import sincos_2d

METADATA_KEY = "flexcli"
_SAFETENSORS_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_REQUIRED = ("x_embedder.proj.weight", "final_layer.linear.weight", "y_embedder.embedding_table.weight",
             "t_embedder.mlp.0.weight", "blocks.0.attn.qkv.weight")


@dataclass
class Checkpoint:
    """A checkpoint as read: tensors in original-layout names, the config and where each value came from."""

    state_dict: dict[str, torch.Tensor]
    config: DiTConfig
    layout: str
    path: Path
    inferred: dict[str, str] = field(default_factory=dict)  # config field -> source of its value
    flex: dict | None = None  # the flex description for flexified checkpoints
    metadata: dict = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
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


def _read_torch(path: Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
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


def _read_json(text: str, what: str, path: Path) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FlexcliError(f"{what} of {path} is not valid JSON ({e.msg})", "re-export the checkpoint") from e
    if not isinstance(value, dict):
        raise FlexcliError(f"{what} of {path} is not a JSON object", "re-export the checkpoint")
    return value


def _sniff(path: Path) -> str:
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
def infer_config(sd: dict[str, torch.Tensor], hints: dict | None = None) -> tuple[DiTConfig, dict[str, str]]:
    """Infer a DiTConfig from original-layout tensors; `hints` (config.json, metadata) fill what tensors lack."""
    hints = hints or {}
    inferred: dict[str, str] = {}
    w = sd["x_embedder.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise FlexcliError(f"x_embedder.proj.weight has shape {tuple(w.shape)}, not a square 2-D patch kernel",
                           "pass a 2-D DiT checkpoint")
    hidden, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    inferred.update(hidden_size="tensors", in_channels="tensors", patch_size="tensors", depth="tensors")
    out = sd["final_layer.linear.weight"].shape[0] // (p * p)
    if out not in (in_ch, 2 * in_ch):
        raise FlexcliError(f"final_layer.linear has {out} output channels per pixel for {in_ch} input channels",
                           "pass a DiT checkpoint (out_channels must be in_channels or 2*in_channels)")
    learn_sigma = out == 2 * in_ch
    inferred["learn_sigma"] = "tensors"
    mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    inferred["mlp_ratio"] = "tensors"
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    dropout = hints.get("class_dropout_prob", 0.1)
    num_classes = rows - 1 if dropout > 0 else rows
    inferred["num_classes"] = "tensors (last row = null class)" if dropout > 0 else "tensors"
    if "pos_embed" in sd:
        grid = math.isqrt(sd["pos_embed"].shape[1])
        if grid * grid != sd["pos_embed"].shape[1]:
            raise FlexcliError("pos_embed does not describe a square token grid", "pass a square-latent DiT")
        input_size, inferred["input_size"] = grid * p, "tensors (pos_embed)"
    elif "input_size" in hints:
        input_size, inferred["input_size"] = int(hints["input_size"]), hints.get("_source", "config")
    else:
        input_size, inferred["input_size"] = 32, "assumed (256px DiT); the checkpoint does not store it"
    if "num_heads" in hints:
        heads, inferred["num_heads"] = int(hints["num_heads"]), hints.get("_source", "config")
    else:
        heads, how = heads_for(depth, hidden)
        inferred["num_heads"] = how
    cfg = DiTConfig(input_size=input_size, patch_size=p, in_channels=in_ch, hidden_size=hidden, depth=depth,
                    num_heads=heads, mlp_ratio=mlp_ratio, class_dropout_prob=dropout, num_classes=num_classes,
                    learn_sigma=learn_sigma)
    if input_size % p:
        raise FlexcliError(f"latent size {input_size} is not divisible by the patch size {p}", "check the checkpoint")
    return cfg, inferred


def _check_dit(sd: dict, path: Path) -> None:
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        raise FlexcliError(f"{path} does not hold a DiT state dict (missing {', '.join(missing[:3])})",
                           "pass an original DiT checkpoint or a diffusers DiTTransformer2DModel folder")


def _diffusers(sd: dict, config_json: dict | None, path: Path) -> tuple[dict, DiTConfig, dict]:
    ours = dl.to_original(sd)
    hints = {"_source": "config.json"}
    if config_json:
        if "num_attention_heads" in config_json:
            hints["num_heads"] = config_json["num_attention_heads"]
        if "sample_size" in config_json:
            hints["input_size"] = config_json["sample_size"]
    _check_dit(ours, path)
    cfg, inferred = infer_config(ours, hints)
    grid = cfg.input_size // cfg.patch_size
    coords = np.arange(grid, dtype=np.float64)
    ours["pos_embed"] = torch.from_numpy(sincos_2d(cfg.hidden_size, coords, coords)).unsqueeze(0)
    return ours, cfg, inferred


def read_checkpoint(path: str | Path, use_ema: bool = True) -> Checkpoint:
    """Read any supported layout; raises FlexcliError with a one-line message on bad input."""
    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"checkpoint {path} not found", "check the path")
    if path.is_dir():
        files = [path / n for n in _SAFETENSORS_NAMES if (path / n).exists()]
        if not files:
            raise FlexcliError(f"{path} is a folder without diffusion_pytorch_model.safetensors",
                               "pass a diffusers DiTTransformer2DModel folder or a checkpoint file")
        sd, _ = _read_safetensors(files[0])
        cfg_file = path / "config.json"
        config_json = _read_json(cfg_file.read_text(), "config.json", path) if cfg_file.exists() else None
        if not dl.is_diffusers_dit(sd):
            raise FlexcliError(f"{files[0]} is not a DiTTransformer2DModel", "pass a DiT model folder")
        sd, cfg, inferred = _diffusers(sd, config_json, path)
        return Checkpoint(sd, cfg, "diffusers", path, inferred)

    kind = _sniff(path)
    if kind == "unknown":
        raise FlexcliError(f"{path} is neither a safetensors file nor a PyTorch checkpoint",
                           "pass a DiT checkpoint (.safetensors/.pt) or a diffusers model folder")
    if kind == "torch":
        sd, source = _read_torch(path, use_ema)
        _check_dit(sd, path)
        cfg, inferred = infer_config(sd)
        return Checkpoint(sd, cfg, "original", path, inferred, metadata={"source": source})

    sd, metadata = _read_safetensors(path)
    if METADATA_KEY in metadata:
        meta = _read_json(metadata[METADATA_KEY], "the flexcli metadata", path)
        if not isinstance(meta.get("config"), dict):
            raise FlexcliError(f"the flexcli metadata of {path} has no config", "re-export the checkpoint")
        cfg = DiTConfig.from_dict(meta["config"])
        return Checkpoint(sd, cfg, "flexcli", path, {k: "metadata" for k in meta["config"]},
                          flex=meta.get("flex"), metadata=meta)
    if dl.is_diffusers_dit(sd):
        cfg_file = path.parent / "config.json"
        config_json = _read_json(cfg_file.read_text(), "config.json", path) if cfg_file.exists() else None
        sd, cfg, inferred = _diffusers(sd, config_json, path)
        return Checkpoint(sd, cfg, "diffusers", path, inferred)
    _check_dit(sd, path)
    cfg, inferred = infer_config(sd)
    return Checkpoint(sd, cfg, "original", path, inferred)


# --------------------------------------------------------------------------------------------------
def checkpoint_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's persistent tensors under checkpoint names (peft's `.base_layer` wrapper removed)."""
    return {k.replace(".base_layer.", "."): v.detach().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write a flexcli checkpoint (one safetensors file) atomically, with config and flex info in metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": "flexcli.dit", "format_version": 1, "family": model.family, "flexcli_version": __version__,
            "config": model.config.to_dict(), "flex": model.flex.describe() if model.flex is not None else None}
    meta.update(extra or {})
    with atomic_path(path) as tmp:
        save_file(checkpoint_state_dict(model), str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def save_diffusers(model: torch.nn.Module, folder: str | Path) -> Path:
    """Write a plain DiT as a diffusers DiTTransformer2DModel folder (config.json + safetensors)."""
    from flexcli.io.atomic import atomic_dir
    from safetensors.torch import save_file

    if model.flex is not None:
        raise ValueError("only plain DiTs can be written in the diffusers layout")
    folder = Path(folder)
    sd = dl.from_original(checkpoint_state_dict(model), model.config.depth)
    with atomic_dir(folder) as tmp:
        save_file(sd, str(tmp / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(dl.diffusers_config(model.config), indent=2))
    return folder
