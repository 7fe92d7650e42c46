"""The class-conditional DiT's checkpoint layouts (the first family's reader).

* "original": facebookresearch/DiT state dicts, as `.pt`/`.pth` (torch.load(weights_only=True)) or
  `.safetensors` with the same keys; train.py checkpoints `{"model", "ema", "opt", "args"}` (EMA by default).
* "diffusers": a DiTTransformer2DModel folder (config.json + diffusion_pytorch_model.safetensors) or its
  safetensors file.
The config is inferred from the tensors (and config.json), with the source of every value.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from flexcli.errors import FlexcliError
from flexcli.io import diffusers_layout as dl
from flexcli.io.checkpoint import (SAFETENSORS_NAMES, Checkpoint, checkpoint_state_dict, read_json, read_safetensors,
                                   read_torch_state, sniff)
from flexcli.models.configs import DiTConfig, heads_for
from flexcli.models.posembed import sincos_2d

REQUIRED = ("x_embedder.proj.weight", "final_layer.linear.weight", "y_embedder.embedding_table.weight",
            "t_embedder.mlp.0.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight")


def claims(keys: set[str], config_json: dict | None) -> bool:
    """Whether tensors with these names are a DiT (original or diffusers names)."""
    return "x_embedder.proj.weight" in keys or dl.is_diffusers_dit(keys)


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
    missing = [k for k in REQUIRED if k not in sd]
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


def read_dit(path: str | Path, use_ema: bool = True) -> Checkpoint:
    """Read any supported layout; raises FlexcliError with a one-line message on bad input."""
    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"checkpoint {path} not found", "check the path")
    if path.is_dir():
        files = [path / n for n in SAFETENSORS_NAMES if (path / n).exists()]
        if not files:
            raise FlexcliError(f"{path} is a folder without diffusion_pytorch_model.safetensors",
                               "pass a diffusers DiTTransformer2DModel folder or a checkpoint file")
        sd, _ = read_safetensors(files[0])
        cfg_file = path / "config.json"
        config_json = read_json(cfg_file.read_text(), "config.json", path) if cfg_file.exists() else None
        if not dl.is_diffusers_dit(sd):
            raise FlexcliError(f"{files[0]} is not a DiTTransformer2DModel", "pass a DiT model folder")
        sd, cfg, inferred = _diffusers(sd, config_json, path)
        return Checkpoint(sd, cfg, "diffusers", path, inferred)

    kind = sniff(path)
    if kind == "unknown":
        raise FlexcliError(f"{path} is neither a safetensors file nor a PyTorch checkpoint",
                           "pass a DiT checkpoint (.safetensors/.pt) or a diffusers model folder")
    if kind == "torch":
        sd, source = read_torch_state(path, use_ema)
        _check_dit(sd, path)
        cfg, inferred = infer_config(sd)
        return Checkpoint(sd, cfg, "original", path, inferred, metadata={"source": source})

    sd, _ = read_safetensors(path)
    if dl.is_diffusers_dit(sd):
        cfg_file = path.parent / "config.json"
        config_json = read_json(cfg_file.read_text(), "config.json", path) if cfg_file.exists() else None
        sd, cfg, inferred = _diffusers(sd, config_json, path)
        return Checkpoint(sd, cfg, "diffusers", path, inferred)
    _check_dit(sd, path)
    cfg, inferred = infer_config(sd)
    return Checkpoint(sd, cfg, "original", path, inferred)


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
