"""Wan 2.1 transformer state dicts: the original release's key names <-> diffusers' `WanTransformer3DModel` names,
and the model configuration inferred from the tensors (issue #14).

The canonical in-memory layout is diffusers'. The original layout is Wan-Video/Wan2.1 `wan/modules/model.py`
(`WanModel`); the mapping matches diffusers' `scripts/convert_wan_to_diffusers.py` and
`loaders/single_file_utils.convert_wan_transformer_to_diffusers`, including one trap: the original block calls its
norms in the order norm1 (self-attn), norm3 (cross-attn, affine when cross_attn_norm), norm2 (FFN, no weights),
while diffusers names them norm1, norm2 (cross-attn), norm3 (FFN). So original `norm3` is diffusers `norm2`; the
FFN norm has no tensors in either layout.
"""
from __future__ import annotations

import re

import torch

from flexcli.errors import FlexcliError
from flexcli.models.wan_config import KNOWN_SIZES, WAN_EPS, WAN_HEAD_DIM, WAN_ROPE_MAX_SEQ_LEN, WAN_TEXT_LEN

# (original name, diffusers name) of whole modules outside the blocks.
_TOP = [
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.head", "proj_out"),
]
# (original name, diffusers name) of modules inside block N.
_BLOCK = [("norm3", "norm2"), ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2")]
for _orig, _ours in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    _BLOCK += [(f"{_orig}.{c}", f"{_ours}.to_{c}") for c in "qkv"]
    _BLOCK += [(f"{_orig}.o", f"{_ours}.to_out.0"), (f"{_orig}.norm_q", f"{_ours}.norm_q"),
               (f"{_orig}.norm_k", f"{_ours}.norm_k")]
_PARAMS = ("weight", "bias")
# Bare parameters (no .weight suffix).
_TOP_PARAMS = [("head.modulation", "scale_shift_table")]
_BLOCK_PARAMS = [("modulation", "scale_shift_table")]
# Prefixes that repackaged single-file checkpoints put before the original names (diffusers strips the first too).
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# Keys of image-conditioning parts (I2V/FLF2V): flexcli reads text-to-video checkpoints only.
_IMAGE_MARKERS = ("img_emb.", "k_img", "v_img", "norm_k_img", "image_embedder", "add_k_proj", "add_v_proj",
                  "norm_added_k")



def _pairs(n_layers: int) -> list[tuple[str, str]]:
    """Every (original key, diffusers key) pair a text-to-video Wan 2.1 checkpoint may hold."""
    pairs = [(f"{o}.{s}", f"{d}.{s}") for o, d in _TOP for s in _PARAMS] + list(_TOP_PARAMS)
    for n in range(n_layers):
        pairs += [(f"blocks.{n}.{o}.{s}", f"blocks.{n}.{d}.{s}") for o, d in _BLOCK for s in _PARAMS]
        pairs += [(f"blocks.{n}.{o}", f"blocks.{n}.{d}") for o, d in _BLOCK_PARAMS]
    return pairs


def count_layers(keys) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a repackaging prefix (e.g. ComfyUI's `model.diffusion_model.`) when every key has it."""
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def is_original(keys) -> bool:
    keys = set(keys)
    return "patch_embedding.weight" in keys and "time_projection.1.weight" in keys


def is_diffusers(keys) -> bool:
    keys = set(keys)
    return "patch_embedding.weight" in keys and "condition_embedder.time_proj.weight" in keys


def _rename(sd: dict[str, torch.Tensor], mapping: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    image = sorted(k for k in sd if any(m in k for m in _IMAGE_MARKERS))
    if image:
        raise FlexcliError(f"the checkpoint has image-conditioning weights ({image[0]}): an image-to-video Wan model",
                           "pass a text-to-video Wan 2.1 checkpoint (T2V-1.3B or T2V-14B)")
    unknown = sorted(k for k in sd if k not in mapping)
    if unknown:
        raise FlexcliError(f"unexpected key {unknown[0]} in a {what} Wan checkpoint ({len(unknown)} unknown)",
                           "pass an unmodified Wan 2.1 text-to-video checkpoint")
    return {mapping[k]: v for k, v in sd.items()}


def original_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan 2.1 keys -> diffusers `WanTransformer3DModel` keys (tensors are shared, not copied)."""
    sd = strip_prefix(sd)
    return _rename(sd, dict(_pairs(count_layers(sd))), "original-layout")


def diffusers_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers keys -> original Wan 2.1 keys (the exact inverse of `original_to_diffusers`)."""
    return _rename(sd, {d: o for o, d in _pairs(count_layers(sd))}, "diffusers-layout")


# --------------------------------------------------------------------------------------------------
def _require(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise FlexcliError(f"the Wan checkpoint lacks {key}", "pass a complete Wan 2.1 transformer checkpoint")
    return sd[key]


def _heads(inner: int, layers: int, hints: dict) -> tuple[int, str]:
    if "num_attention_heads" in hints:
        return int(hints["num_attention_heads"]), hints["_source"]
    if (inner, layers) in KNOWN_SIZES:
        name, heads = KNOWN_SIZES[(inner, layers)]
        return heads, f"known config {name}"
    if inner % WAN_HEAD_DIM == 0:
        return inner // WAN_HEAD_DIM, f"assumed head_dim {WAN_HEAD_DIM} (as in every Wan 2.1 release)"
    raise FlexcliError(f"cannot tell the attention heads of a Wan model of width {inner} (not in the tensors)",
                       "keep the config.json beside the weights")


def infer_config(sd: dict[str, torch.Tensor], hints: dict | None = None) -> tuple[dict, dict[str, str]]:
    """diffusers `WanTransformer3DModel` config from diffusers-layout tensors; `hints` (config.json values under
    diffusers names, plus "_source") fill what tensors lack. Returns (config, source of each value)."""
    hints = hints or {}
    conv = _require(sd, "patch_embedding.weight")  # (inner, C_in, p_t, p_h, p_w)
    if conv.dim() != 5:
        raise FlexcliError(f"patch_embedding.weight has shape {tuple(conv.shape)}, not a 3-D patch kernel",
                           "pass a Wan (video) transformer checkpoint")
    inner, in_channels, patch = int(conv.shape[0]), int(conv.shape[1]), tuple(int(p) for p in conv.shape[2:])
    layers = count_layers(sd)
    out_rows = int(_require(sd, "proj_out.weight").shape[0])  # out_channels * prod(patch)
    cells = patch[0] * patch[1] * patch[2]
    if layers == 0 or out_rows % cells:
        raise FlexcliError("the Wan checkpoint has no blocks or a head that does not match its patch size",
                           "pass a complete Wan 2.1 transformer checkpoint")
    if "blocks.0.attn1.norm_q.weight" not in sd:
        raise FlexcliError("the Wan checkpoint has no query/key RMSNorm (qk_norm off), which diffusers' "
                           "WanTransformer3DModel cannot represent", "pass a Wan 2.1 checkpoint")
    heads, heads_source = _heads(inner, layers, hints)
    if inner % heads or (inner // heads) % 2:
        raise FlexcliError(f"{heads} heads do not split width {inner} into even head dims",
                           "check num_attention_heads in config.json")
    config = {
        "patch_size": list(patch), "num_attention_heads": heads, "attention_head_dim": inner // heads,
        "in_channels": in_channels, "out_channels": out_rows // cells,
        "text_dim": int(_require(sd, "condition_embedder.text_embedder.linear_1.weight").shape[1]),
        "freq_dim": int(_require(sd, "condition_embedder.time_embedder.linear_1.weight").shape[1]),
        "ffn_dim": int(_require(sd, "blocks.0.ffn.net.0.proj.weight").shape[0]),
        "num_layers": layers, "cross_attn_norm": "blocks.0.norm2.weight" in sd,
        "qk_norm": "rms_norm_across_heads", "image_dim": None, "added_kv_proj_dim": None,
        "pos_embed_seq_len": None,
    }
    sources = {k: "tensors" for k in config}
    sources["num_attention_heads"] = sources["attention_head_dim"] = heads_source
    sources["qk_norm"] = "tensors (norm_q over all heads, one weight of the full width)"
    sources["image_dim"] = sources["added_kv_proj_dim"] = "tensors (no image-conditioning keys: text-to-video)"
    sources["pos_embed_seq_len"] = "tensors (no image position embedding)"
    for name, default in (("eps", WAN_EPS), ("rope_max_seq_len", WAN_ROPE_MAX_SEQ_LEN), ("text_len", WAN_TEXT_LEN)):
        if name in hints:
            config[name], sources[name] = hints[name], hints["_source"]
        else:
            config[name], sources[name] = default, "assumed (Wan 2.1 default; not in the tensors)"
    _check_hints(config, hints)
    return config, sources


def _check_hints(config: dict, hints: dict) -> None:
    """A config.json that contradicts the tensors means the folder is inconsistent: say which value."""
    for name in ("patch_size", "in_channels", "out_channels", "text_dim", "freq_dim", "ffn_dim", "num_layers",
                 "cross_attn_norm"):
        if name in hints and hints[name] is not None and _norm(hints[name]) != _norm(config[name]):
            raise FlexcliError(f"{hints['_source']} says {name}={hints[name]} but the tensors say {config[name]}",
                               "fix or remove that config.json")


def _norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def hints_from_diffusers_config(cfg: dict, source: str) -> dict:
    names = ("patch_size", "num_attention_heads", "in_channels", "out_channels", "text_dim", "freq_dim",
             "ffn_dim", "num_layers", "cross_attn_norm", "eps", "rope_max_seq_len")
    return {"_source": source, **{k: cfg[k] for k in names if k in cfg}}


def hints_from_original_config(cfg: dict, source: str) -> dict:
    """Original `WanModel` config.json names -> diffusers names (patch_size, text_dim, cross_attn_norm and
    qk_norm are in WanModel's ignore_for_config, so its config.json never has them)."""
    names = {"num_heads": "num_attention_heads", "in_dim": "in_channels", "out_dim": "out_channels",
             "freq_dim": "freq_dim", "ffn_dim": "ffn_dim", "num_layers": "num_layers", "eps": "eps",
             "text_len": "text_len"}
    return {"_source": source, **{ours: cfg[theirs] for theirs, ours in names.items() if theirs in cfg}}


def original_config(config: dict) -> dict:
    """The config.json of the original release (`WanModel`) for a diffusers config."""
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "t2v",
            "dim": config["num_attention_heads"] * config["attention_head_dim"], "eps": config["eps"],
            "ffn_dim": config["ffn_dim"], "freq_dim": config["freq_dim"], "in_dim": config["in_channels"],
            "num_heads": config["num_attention_heads"], "num_layers": config["num_layers"],
            "out_dim": config["out_channels"], "text_len": config.get("text_len", WAN_TEXT_LEN)}
