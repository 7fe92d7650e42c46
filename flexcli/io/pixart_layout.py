"""Read PixArt transformer checkpoints in any supported layout, into diffusers' parameter names.

Layouts (auto-detected):
* "original": the PixArt-alpha/-Sigma release, a `.pth` holding {"state_dict": ...} (or a plain state dict),
  read with torch.load(weights_only=True), or a `.safetensors` file with the same keys.
* "diffusers": a `PixArtTransformer2DModel` folder (config.json + diffusion_pytorch_model.safetensors, possibly
  sharded with diffusion_pytorch_model.safetensors.index.json), a whole pipeline folder (its `transformer/` is
  read), or a single diffusers-keyed safetensors file.

The canonical in-memory layout is diffusers' (flexcli's PixArt model reuses diffusers' blocks). The config is
inferred from the tensors, then config.json; `sources` says where each value came from.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flexcli.errors import FlexcliError
from flexcli.io import pixart_keys as pk
from flexcli.io.atomic import atomic_path
from flexcli.io.checkpoint import read_json as _read_json, read_safetensors as _read_safetensors, sniff as _sniff
from flexcli.models.pixart_config import (
    PIXART_MAX_LENGTH, PixArtConfig, assumed_heads, default_interpolation_scale, pixart_pos_table)

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = "diffusion_pytorch_model.safetensors.index.json"
REQUIRED = ("pos_embed.proj.weight", "adaln_single.linear.weight", "proj_out.weight", "scale_shift_table",
            "transformer_blocks.0.scale_shift_table", "transformer_blocks.0.attn2.to_k.weight")
_USE = "pass a PixArt checkpoint: an original .pth/.safetensors or a diffusers transformer/pipeline folder"
HINTS = ("sample_size", "interpolation_scale", "num_attention_heads")  # what a caller may state (not in tensors)
_SCALES = (0.5, 1.0, 2.0, 4.0)  # interpolation (lewei) scales used by the released alpha and Sigma models


@dataclass
class PixArtCheckpoint:
    """A PixArt transformer as read: diffusers-named tensors, the resolved config and its provenance."""

    state_dict: dict[str, torch.Tensor]
    config: PixArtConfig
    layout: str  # "original" | "diffusers"
    path: Path
    sources: dict[str, str] = field(default_factory=dict)  # config field -> "tensors" / "config.json" / "assumed ..."
    null_caption: torch.Tensor | None = None  # the original y_embedding (model_max_length, caption_channels)
    pos_embed: str = "absent"  # what the original pos_embed tensor was
    metadata: dict = field(default_factory=dict)

    @property
    def null_caption_source(self) -> str:
        """How classifier-free guidance gets its unconditional caption with this checkpoint."""
        if self.null_caption is not None:
            return "learned y_embedding (original PixArt inference; masked with the prompt's own mask)"
        return "text encoder on the negative prompt ('' by default; diffusers' PixArt pipeline)"


# ------------------------------------------------------------------------------------------------ files
def _read_torch_state(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FlexcliError(f"{path} cannot be loaded as a weights-only PyTorch checkpoint ({reason[:200]})",
                           _USE) from e
    source = "state dict"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, source = obj["state_dict"], "'state_dict' entry"
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FlexcliError(f"{path} does not hold a state dict of tensors", _USE)
    return obj, source


def _read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """diffusion_pytorch_model.safetensors, or the shards its index json names."""
    if (folder / WEIGHTS).exists():
        return _read_safetensors(folder / WEIGHTS)[0]
    if not (folder / INDEX).exists():
        raise FlexcliError(f"{folder} has no {WEIGHTS} (nor a sharded {INDEX})",
                           "pass a diffusers PixArtTransformer2DModel folder saved with safetensors")
    index = _read_json((folder / INDEX).read_text(), INDEX, folder)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FlexcliError(f"{folder / INDEX} has no weight_map", "re-export the model")
    sd: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).exists():
            raise FlexcliError(f"shard {shard} named by {INDEX} is missing in {folder}", "copy the whole folder")
        sd.update(_read_safetensors(folder / shard)[0])
    missing = sorted(set(weight_map) - set(sd))
    if missing:
        raise FlexcliError(f"{folder} shards lack {len(missing)} tensors named by {INDEX} (e.g. {missing[0]})",
                           "re-export the model")
    return sd


def _model_folder(path: Path) -> tuple[Path, dict]:
    """(folder with the transformer, model_index.json or {}) for a transformer or pipeline folder."""
    index_file = path / "model_index.json"
    pipeline = _read_json(index_file.read_text(), "model_index.json", path) if index_file.exists() else {}
    if (path / "transformer").is_dir():
        return path / "transformer", pipeline
    if pipeline:
        raise FlexcliError(f"{path} is a pipeline folder without transformer/",
                           "pass a pipeline folder that includes its transformer/ subfolder")
    if (path / "config.json").exists() or (path / WEIGHTS).exists() or (path / INDEX).exists():
        return path, {}
    raise FlexcliError(f"{path} is neither a diffusers model folder nor a pipeline folder", _USE)


# ------------------------------------------------------------------------------------------------ family
def _reject_dit(keys, config_json: dict | None, path: Path) -> None:
    keys, config_json = set(keys), config_json or {}
    dit = ("y_embedder.embedding_table.weight" in keys or "blocks.0.adaLN_modulation.1.weight" in keys
           or "transformer_blocks.0.norm1.linear.weight" in keys
           or config_json.get("_class_name") == "DiTTransformer2DModel"
           or config_json.get("norm_type") == "ada_norm_zero")
    if dit:
        raise FlexcliError(f"{path} is a class-conditional DiT checkpoint, not a PixArt (text-to-image) one",
                           "use it with flexcli's DiT commands, or pass a PixArt checkpoint")


def _check_required(keys, path: Path) -> None:
    keys = set(keys)
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise FlexcliError(f"{path} does not hold a PixArt transformer (missing {', '.join(missing[:2])})", _USE)


def _to_diffusers(sd: dict, path: Path) -> tuple[dict, dict]:
    try:
        return pk.original_to_diffusers(sd)
    except KeyError as e:
        keys = e.args[0]
        raise FlexcliError(f"{path} has {len(keys)} tensors with no diffusers counterpart (e.g. {keys[0]}): "
                           "an unsupported PixArt variant", "pass a standard PixArt-alpha/-Sigma checkpoint") from e


def _is_original(keys) -> bool:
    return "x_embedder.proj.weight" in keys or "t_block.1.weight" in keys or "blocks.0.attn.qkv.weight" in keys


# ------------------------------------------------------------------------------------------------ config
def _tensor_facts(sd: dict[str, torch.Tensor], path: Path) -> dict:
    """What the tensors alone say (diffusers names)."""
    w = sd["pos_embed.proj.weight"]
    if w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise FlexcliError(f"{path}: pos_embed.proj.weight has shape {tuple(w.shape)}, not a square patch kernel",
                           _USE)
    inner, in_ch, p = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    out_ch, rest = divmod(int(sd["proj_out.weight"].shape[0]), p * p)
    ff = int(sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0])
    if rest or ff != 4 * inner:
        raise FlexcliError(f"{path}: proj_out / feed-forward shapes do not fit a PixArt transformer of width {inner}",
                           _USE)
    if "caption_projection.linear_1.weight" not in sd:
        raise FlexcliError(f"{path} has no caption_projection (caption_channels unset)",
                           "pass a PixArt transformer that projects T5 captions")
    return {
        "in_channels": in_ch, "out_channels": out_ch, "patch_size": p, "inner_dim": inner,
        "num_layers": pk.block_count(sd, "transformer_blocks"),
        "caption_channels": int(sd["caption_projection.linear_1.weight"].shape[1]),
        "cross_attention_dim": int(sd["transformer_blocks.0.attn2.to_k.weight"].shape[1]),
        "use_additional_conditions": "adaln_single.emb.resolution_embedder.linear_1.weight" in sd,
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in sd,
    }


def _match_pos_embed(pos: torch.Tensor, inner: int, patch: int) -> tuple[int | None, float | None, str]:
    """(sample_size, interpolation_scale, description) read off an original pos_embed tensor."""
    tokens = pos.shape[-2] if pos.dim() >= 2 else 0
    grid = math.isqrt(tokens)
    if pos.dim() != 3 or grid * grid != tokens or pos.shape[-1] != inner:
        return None, None, f"not a square (1, tokens, {inner}) table: shape {tuple(pos.shape)}"
    if not torch.any(pos):
        return grid * patch, None, "all zeros"
    # a table in [-1, 1] saved in half precision is off by up to half its dtype's eps (bf16: 3.9e-3)
    atol = max(1e-4, torch.finfo(pos.dtype).eps if pos.dtype.is_floating_point else 0.0)
    for scale in _SCALES:
        probe = PixArtConfig(num_attention_heads=1, attention_head_dim=inner, in_channels=1, out_channels=1,
                             num_layers=1, sample_size=grid * patch, patch_size=patch, caption_channels=1,
                             cross_attention_dim=inner, interpolation_scale=scale, use_additional_conditions=False)
        if torch.allclose(pos.float(), pixart_pos_table(probe), atol=atol):
            return grid * patch, scale, f"sin-cos (interpolation_scale {scale:g}, base_size {grid})"
    return grid * patch, None, "not a sin-cos table (ignored: flexcli recomputes positions)"


def _pick(name: str, facts: dict, cfg_json: dict, hints: dict, sources: dict, fallback=None, how: str = ""):
    """The value of `name`: caller hint > tensors (facts) > config.json > fallback; records the source.

    Tensors and config.json must agree where both state a value."""
    tensor_value = facts.get(name)
    json_value = cfg_json.get(name)
    if tensor_value is not None and json_value is not None and json_value != tensor_value:
        raise FlexcliError(f"config.json says {name}={json_value} but the tensors hold {tensor_value}",
                           "fix or remove the config.json (the tensors are authoritative)")
    for value, source in ((hints.get(name), "given"), (tensor_value, facts.get("_source", "tensors")),
                          (json_value, "config.json"), (fallback, how)):
        if value is not None:
            sources[name] = source
            return value
    raise FlexcliError(f"cannot determine {name}", "pass a config.json beside the weights")


def infer_pixart_config(sd: dict[str, torch.Tensor], config_json: dict | None = None,
                        extras: dict | None = None, pipeline: dict | None = None, hints: dict | None = None,
                        path: Path = Path("<memory>")) -> tuple[PixArtConfig, dict[str, str], str]:
    """Resolve the full config; returns (config, sources, description of the original pos_embed)."""
    cfg_json, extras, hints, sources = dict(config_json or {}), extras or {}, dict(hints or {}), {}
    unknown = set(hints) - set(HINTS)
    if unknown:
        raise ValueError(f"unsupported hints {sorted(unknown)}; allowed: {HINTS}")
    facts = _tensor_facts(sd, path)
    pos_note, pos_size, pos_scale = "absent", None, None
    if "pos_embed" in extras:
        pos_size, pos_scale, pos_note = _match_pos_embed(extras["pos_embed"], facts["inner_dim"], facts["patch_size"])
    keep = {k: facts[k] for k in ("in_channels", "out_channels", "patch_size", "num_layers", "caption_channels",
                                  "cross_attention_dim", "use_additional_conditions", "attention_bias")}
    values = {k: _pick(k, keep, cfg_json, hints, sources) for k in keep}
    size_facts = {"sample_size": pos_size, "_source": "tensors (pos_embed grid)"}
    guess = 128 if facts["use_additional_conditions"] else 32
    kind = "1024-px micro-conditioned" if guess == 128 else "256-px"
    values["sample_size"] = _pick("sample_size", size_facts, cfg_json, hints, sources, guess,
                                  f"assumed ({guess}: {kind} model; no config.json or pos_embed states it)")
    scale_facts = {"interpolation_scale": pos_scale, "_source": f"tensors (pos_embed is {pos_note})"}
    rule = default_interpolation_scale(values["sample_size"])
    rule_how = ("config.json (unset -> diffusers' rule max(sample_size // 64, 1))" if config_json is not None
                else "assumed (diffusers' rule max(sample_size // 64, 1))")
    values["interpolation_scale"] = float(_pick("interpolation_scale", scale_facts, cfg_json, hints, sources,
                                                rule, rule_how))
    heads, _, how = assumed_heads(facts["inner_dim"])
    values["num_attention_heads"] = _pick("num_attention_heads", {}, cfg_json, hints, sources, heads, how)
    values["attention_head_dim"] = facts["inner_dim"] // values["num_attention_heads"]
    sources["attention_head_dim"] = "tensors (width / heads)"
    if values["num_attention_heads"] * values["attention_head_dim"] != facts["inner_dim"]:
        raise FlexcliError(f"{values['num_attention_heads']} heads do not divide the width {facts['inner_dim']}",
                           "fix num_attention_heads in config.json")
    values["model_max_length"] = _max_length(extras, pipeline or {}, sources)
    return PixArtConfig(**values), sources, pos_note


def _max_length(extras: dict, pipeline: dict, sources: dict) -> int:
    if "y_embedding" in extras:
        sources["model_max_length"] = "tensors (y_embedding rows)"
        return int(extras["y_embedding"].shape[0])
    if pipeline.get("_class_name") == "PixArtSigmaPipeline":
        sources["model_max_length"] = "model_index.json (PixArtSigmaPipeline: 300 tokens)"
        return PIXART_MAX_LENGTH["sigma"]
    sources["model_max_length"] = "assumed (PixArt-alpha's 120-token T5 limit)"
    return PIXART_MAX_LENGTH["alpha"]


# ------------------------------------------------------------------------------------------------ read
def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    kind = _sniff(path)
    if kind == "unknown":
        raise FlexcliError(f"{path} is neither a safetensors file nor a PyTorch checkpoint", _USE)
    if kind == "torch":
        sd, source = _read_torch_state(path)
        return sd, {"source": source}
    return _read_safetensors(path)


def _from_tensors(sd: dict, path: Path, config_json: dict | None, pipeline: dict, hints: dict | None,
                  metadata: dict) -> PixArtCheckpoint:
    _reject_dit(sd, config_json, path)
    layout, extras = "diffusers", {}
    if _is_original(sd):  # the original release carries no config.json: everything comes from the tensors
        layout, config_json = "original", None
        sd, extras = _to_diffusers(sd, path)
    _check_required(sd, path)
    cfg, sources, pos_note = infer_pixart_config(sd, config_json, extras, pipeline, hints, path)
    return PixArtCheckpoint(sd, cfg, layout, path, sources, extras.get("y_embedding"), pos_note, metadata)


def read_pixart(path: str | Path, hints: dict | None = None) -> PixArtCheckpoint:
    """Read any supported PixArt layout; raises FlexcliError with a one-line message on bad input.

    `hints` (e.g. {"sample_size": 64}) override what the checkpoint does not state."""
    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"PixArt checkpoint {path} not found", "check the path")
    if path.is_dir():
        folder, pipeline = _model_folder(path)
        cfg_file = folder / "config.json"
        config_json = _read_json(cfg_file.read_text(), "config.json", folder) if cfg_file.exists() else None
        _reject_dit((), config_json, folder)  # before reading gigabytes of weights
        meta = {"pipeline": pipeline["_class_name"]} if pipeline.get("_class_name") else {}
        return _from_tensors(_read_folder_weights(folder), path, config_json, pipeline, hints, meta)
    sd, meta = _read_file(path)
    cfg_file = path.parent / "config.json"
    config_json = _read_json(cfg_file.read_text(), "config.json", path) if cfg_file.exists() else None
    return _from_tensors(sd, path, config_json, {}, hints, meta)


# ------------------------------------------------------------------------------------------------ write
def to_original_state_dict(ckpt: PixArtCheckpoint, with_pos_embed: bool = True) -> dict[str, torch.Tensor]:
    """The checkpoint under original PixArt keys (with its null caption and, by default, the sin-cos table)."""
    pos = pixart_pos_table(ckpt.config) if with_pos_embed else None
    return pk.diffusers_to_original(ckpt.state_dict, ckpt.null_caption, pos)


def save_original(ckpt: PixArtCheckpoint, path: str | Path) -> Path:
    """Write the original layout: `.safetensors`, or a `.pth` holding {"state_dict": ...} like the release."""
    path = Path(path)
    sd = {k: v.contiguous() for k, v in to_original_state_dict(ckpt).items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={"format": "pt", "flexcli": json.dumps(ckpt.config.to_dict())})
        else:
            torch.save({"state_dict": sd}, tmp)
    return path
