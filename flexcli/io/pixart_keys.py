"""Key mapping between the original PixArt release and diffusers' PixArtTransformer2DModel.

Mirrors diffusers' `scripts/convert_pixart_alpha_to_diffusers.py` / `convert_pixart_sigma_to_diffusers.py`:
the fused self-attention `attn.qkv` is chunked in 3 along dim 0 (q, k, v), the fused cross-attention
`cross_attn.kv_linear` in 2 (k, v). Two original tensors have no diffusers counterpart and travel beside the
state dict: `y_embedder.y_embedding` (the learned null caption, (model_max_length, caption_channels)) and
`pos_embed` (the fixed sin-cos table, (1, tokens, D), recomputed by diffusers).
"""
from __future__ import annotations

import re

import torch

# original -> diffusers, whole-model tensors (each with .weight and .bias)
TOP_LINEAR = [
    ("x_embedder.proj", "pos_embed.proj"),
    ("y_embedder.y_proj.fc1", "caption_projection.linear_1"),
    ("y_embedder.y_proj.fc2", "caption_projection.linear_2"),
    ("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
    ("t_block.1", "adaln_single.linear"),
    ("final_layer.linear", "proj_out"),
]
# 1024-px micro-conditions (PixArtMS csize_embedder / ar_embedder)
MICRO_LINEAR = [
    ("csize_embedder.mlp.0", "adaln_single.emb.resolution_embedder.linear_1"),
    ("csize_embedder.mlp.2", "adaln_single.emb.resolution_embedder.linear_2"),
    ("ar_embedder.mlp.0", "adaln_single.emb.aspect_ratio_embedder.linear_1"),
    ("ar_embedder.mlp.2", "adaln_single.emb.aspect_ratio_embedder.linear_2"),
]
TOP_PARAM = [("final_layer.scale_shift_table", "scale_shift_table")]
# inside block N: blocks.N.<orig> <-> transformer_blocks.N.<diffusers>
BLOCK_LINEAR = [
    ("attn.proj", "attn1.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
    ("cross_attn.q_linear", "attn2.to_q"),
    ("cross_attn.proj", "attn2.to_out.0"),
]
BLOCK_FUSED = [("attn.qkv", "attn1", ("to_q", "to_k", "to_v")), ("cross_attn.kv_linear", "attn2", ("to_k", "to_v"))]
NULL_CAPTION = "y_embedder.y_embedding"
POS_EMBED = "pos_embed"
_PARTS = ("weight", "bias")


def block_count(keys, prefix: str) -> int:
    """Number of blocks under `prefix.N.` (0 when none)."""
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _move(src: dict, dst: dict, a: str, b: str, parts=_PARTS) -> None:
    for part in parts:
        key = f"{a}.{part}" if part else a
        if key in src:
            dst[f"{b}.{part}" if part else b] = src.pop(key)


def original_to_diffusers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Original keys -> (diffusers state dict, extras {"y_embedding", "pos_embed"} present in the input).

    Raises KeyError naming the keys nothing maps (e.g. qk-norm or windowed-attention variants)."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    for a, b in TOP_LINEAR + MICRO_LINEAR:
        _move(src, out, a, b)
    for a, b in TOP_PARAM:
        _move(src, out, a, b, parts=("",))
    for n in range(block_count(src, "blocks")):
        pre, dpre = f"blocks.{n}", f"transformer_blocks.{n}"
        _move(src, out, f"{pre}.scale_shift_table", f"{dpre}.scale_shift_table", parts=("",))
        for a, b in BLOCK_LINEAR:
            _move(src, out, f"{pre}.{a}", f"{dpre}.{b}")
        for fused, attn, names in BLOCK_FUSED:
            for part in _PARTS:
                key = f"{pre}.{fused}.{part}"
                if key in src:
                    for name, piece in zip(names, torch.chunk(src.pop(key), len(names), dim=0)):
                        out[f"{dpre}.{attn}.{name}.{part}"] = piece.contiguous()
    extras = {}
    if NULL_CAPTION in src:
        extras["y_embedding"] = src.pop(NULL_CAPTION)
    if POS_EMBED in src:
        extras["pos_embed"] = src.pop(POS_EMBED)
    if src:
        raise KeyError(sorted(src))
    return out, extras


def diffusers_to_original(sd: dict[str, torch.Tensor], y_embedding: torch.Tensor | None = None,
                          pos_embed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """diffusers keys -> original keys (q/k/v and k/v concatenated back); extras added when given.

    Raises KeyError naming the diffusers keys nothing maps."""
    src = dict(sd)
    out: dict[str, torch.Tensor] = {}
    for a, b in TOP_LINEAR + MICRO_LINEAR:
        _move(src, out, b, a)
    for a, b in TOP_PARAM:
        _move(src, out, b, a, parts=("",))
    for n in range(block_count(src, "transformer_blocks")):
        pre, dpre = f"blocks.{n}", f"transformer_blocks.{n}"
        _move(src, out, f"{dpre}.scale_shift_table", f"{pre}.scale_shift_table", parts=("",))
        for a, b in BLOCK_LINEAR:
            _move(src, out, f"{dpre}.{b}", f"{pre}.{a}")
        for fused, attn, names in BLOCK_FUSED:
            for part in _PARTS:
                keys = [f"{dpre}.{attn}.{name}.{part}" for name in names]
                if all(k in src for k in keys):
                    out[f"{pre}.{fused}.{part}"] = torch.cat([src.pop(k) for k in keys], dim=0)
    if src:
        raise KeyError(sorted(src))
    if y_embedding is not None:
        out[NULL_CAPTION] = y_embedding
    if pos_embed is not None:
        out[POS_EMBED] = pos_embed
    return out
