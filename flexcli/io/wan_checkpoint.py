"""Read Wan 2.1 transformer checkpoints from local files; write the original layout (issue #14).

Accepted paths (auto-detected, safetensors only, nothing downloads):
* the original release folder (Wan-AI/Wan2.1-T2V-*): `config.json` with `"_class_name": "WanModel"` beside
  `diffusion_pytorch_model.safetensors`, or shards `diffusion_pytorch_model-0000i-of-0000n.safetensors` listed in
  `diffusion_pytorch_model.safetensors.index.json`;
* a diffusers `WanTransformer3DModel` folder (`config.json` + single or sharded safetensors);
* a diffusers pipeline folder (`model_index.json`; its `transformer/` is read);
* a single `.safetensors` file or a `.safetensors.index.json` in either layout.
Tensors come back under diffusers names with the config inferred from them (see `wan_layout`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flexcli.errors import FlexcliError
from flexcli.io import wan_layout as wl

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
_WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline", "WanVideoToVideoPipeline", "WanVACEPipeline")
_FIX = "pass a Wan 2.1 transformer: the release folder, a diffusers transformer/ folder or a Wan pipeline folder"


@dataclass
class WanCheckpoint:
    """A Wan transformer as read: diffusers-named tensors, the diffusers config and where each value came from."""

    state_dict: dict[str, torch.Tensor]
    config: dict
    layout: str  # "original" | "diffusers"
    path: Path
    sources: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlexcliError(f"{path} is not readable JSON ({type(e).__name__})", "re-export the checkpoint") from e
    if not isinstance(value, dict):
        raise FlexcliError(f"{path} is not a JSON object", "re-export the checkpoint")
    return value


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers and truncated data
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlexcliError(f"{path} is not a readable safetensors file ({reason})",
                           "check that the file is complete") from e


def _read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FlexcliError(f"{index_path} has no weight_map", "re-export the sharded checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (index_path.parent / shard).is_file():
            raise FlexcliError(f"shard {shard} listed in {index_path.name} is missing",
                               "copy every shard into the folder")
        tensors.update(_read_safetensors(index_path.parent / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise FlexcliError(f"{missing[0]} is listed in {index_path.name} but in none of its shards",
                           "re-export the sharded checkpoint")
    return tensors


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / INDEX_NAME).is_file():
        return _read_sharded(folder / INDEX_NAME)
    if (folder / WEIGHTS_NAME).is_file():
        return _read_safetensors(folder / WEIGHTS_NAME)
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if len(found) == 1:
        return _read_safetensors(folder / found[0])
    what = f"{len(found)} safetensors files and no {INDEX_NAME}" if found else "no safetensors weights"
    raise FlexcliError(f"{folder} has {what}", _FIX)


def _transformer_folder(path: Path) -> Path:
    """A pipeline folder -> its transformer/ (after checking it is a Wan pipeline); other folders unchanged."""
    if not (path / "model_index.json").is_file():
        return path
    index = _read_json(path / "model_index.json")
    kind = index.get("_class_name", "?")
    transformer = index.get("transformer")
    if kind not in _WAN_PIPELINES and not (isinstance(transformer, list) and "Wan" in str(transformer[-1])):
        raise FlexcliError(f"{path} is a {kind} folder, not a Wan pipeline", _FIX)
    if not (path / "transformer").is_dir():
        raise FlexcliError(f"the pipeline folder {path} has no transformer/ folder", _FIX)
    return path / "transformer"


def _from_tensors(sd: dict, config_json: dict | None, path: Path) -> WanCheckpoint:
    kind = (config_json or {}).get("_class_name")
    source = f"{path.name}/config.json" if path.is_dir() else "config.json"
    if kind not in (None, "WanModel", "WanTransformer3DModel"):
        raise FlexcliError(f"{path} holds a {kind}, not a Wan transformer", _FIX)
    sd = wl.strip_prefix(sd)
    if wl.is_diffusers(sd) and kind != "WanModel":
        hints = wl.hints_from_diffusers_config(config_json or {}, source)
        layout = "diffusers"
    elif wl.is_original(sd) and kind != "WanTransformer3DModel":
        hints = wl.hints_from_original_config(config_json or {}, source)
        sd, layout = wl.original_to_diffusers(sd), "original"
    else:
        raise FlexcliError(f"{path} does not hold Wan transformer weights (no patch_embedding with a time "
                           "projection, or tensors that contradict its config.json)", _FIX)
    config, sources = wl.infer_config(sd, hints)
    return WanCheckpoint(sd, config, layout, path, sources)


def read_wan_checkpoint(path: str | Path) -> WanCheckpoint:
    """Read a Wan 2.1 transformer from any accepted local path; one-line FlexcliError on bad input."""
    path = Path(path)
    if not path.exists():
        raise FlexcliError(f"Wan checkpoint {path} not found", "check the path")
    if path.is_dir():
        folder = _transformer_folder(path)
        config_json = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
        if config_json and config_json.get("_class_name") not in (None, "WanModel", "WanTransformer3DModel"):
            raise FlexcliError(f"{folder} holds a {config_json['_class_name']}, not a Wan transformer", _FIX)
        return _from_tensors(_read_weights(folder), config_json, folder)
    if path.name.endswith(".index.json"):
        sd = _read_sharded(path)
    elif path.suffix == ".safetensors":
        sd = _read_safetensors(path)
    else:
        raise FlexcliError(f"{path} is not a safetensors file", "pass Wan weights as .safetensors (or their folder)")
    config_file = path.parent / "config.json"
    return _from_tensors(sd, _read_json(config_file) if config_file.is_file() else None, path)


# --------------------------------------------------------------------------------------------------
def _shards(sd: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(sd):
        nbytes = sd[key].numel() * sd[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = sd[key].contiguous()
        size += nbytes
    return shards


def save_original(ckpt: WanCheckpoint, folder: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Write `ckpt` in the original release layout: config.json (WanModel) + safetensors, sharded with an
    index json like the 14B release when `max_shard_bytes` is given."""
    from safetensors.torch import save_file

    from flexcli.io.atomic import atomic_dir

    folder = Path(folder)
    sd = wl.diffusers_to_original(ckpt.state_dict)
    shards = _shards(sd, max_shard_bytes) if max_shard_bytes else [{k: v.contiguous() for k, v in sd.items()}]
    with atomic_dir(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(wl.original_config(ckpt.config), indent=2))
        if len(shards) == 1:
            save_file(shards[0], str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.numel() * v.element_size() for v in sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return folder


def to_diffusers_model(ckpt: WanCheckpoint):
    """A diffusers `WanTransformer3DModel` holding the checkpoint's tensors (strict load), in eval mode."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_config({k: v for k, v in ckpt.config.items() if k != "text_len"})
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval()
