"""Key mapping between the original DiT layout and diffusers' DiTTransformer2DModel (dit-facts §3.2)."""
from __future__ import annotations

import re

import torch

from flexcli.models.configs import DiTConfig

# (original suffix, diffusers suffix) inside block N.
_BLOCK_MAP = [
    ("adaLN_modulation.1", "norm1.linear"),
    ("attn.proj", "attn1.to_out.0"),
    ("mlp.fc1", "ff.net.0.proj"),
    ("mlp.fc2", "ff.net.2"),
]
_TOP_MAP = [
    ("x_embedder.proj", "pos_embed.proj"),
    ("final_layer.adaLN_modulation.1", "proj_out_1"),
    ("final_layer.linear", "proj_out_2"),
]
_EMB = "transformer_blocks.{n}.norm1.emb"
_EMB_MAP = [
    ("t_embedder.mlp.0", "timestep_embedder.linear_1"),
    ("t_embedder.mlp.2", "timestep_embedder.linear_2"),
    ("y_embedder.embedding_table", "class_embedder.embedding_table"),
]


def is_diffusers_dit(keys) -> bool:
    keys = set(keys)
    return "pos_embed.proj.weight" in keys and "transformer_blocks.0.norm1.linear.weight" in keys


def diffusers_depth(keys) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(r"transformer_blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers -> original keys. The t/y embedders are copied in every block: block 0's copy is taken.
    `pos_embed` is not in diffusers' state dict; the caller recomputes it."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_MAP:
        for s in ("weight", "bias"):
            out[f"{ours}.{s}"] = sd[f"{theirs}.{s}"]
    for ours, theirs in _EMB_MAP:
        for s in ("weight", "bias"):
            key = f"{_EMB.format(n=0)}.{theirs}.{s}"
            if key in sd:
                out[f"{ours}.{s}"] = sd[key]
    for n in range(diffusers_depth(sd)):
        pre = f"transformer_blocks.{n}"
        for ours, theirs in _BLOCK_MAP:
            for s in ("weight", "bias"):
                out[f"blocks.{n}.{ours}.{s}"] = sd[f"{pre}.{theirs}.{s}"]
        for s in ("weight", "bias"):
            out[f"blocks.{n}.attn.qkv.{s}"] = torch.cat([sd[f"{pre}.attn1.to_{c}.{s}"] for c in "qkv"], dim=0)
    return out


def from_original(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """original -> diffusers keys (the t/y embedders are duplicated into every block, as diffusers expects)."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _TOP_MAP:
        for s in ("weight", "bias"):
            out[f"{theirs}.{s}"] = sd[f"{ours}.{s}"]
    for n in range(depth):
        pre = f"transformer_blocks.{n}"
        for ours, theirs in _EMB_MAP:
            for s in ("weight", "bias"):
                if f"{ours}.{s}" in sd:
                    out[f"{_EMB.format(n=n)}.{theirs}.{s}"] = sd[f"{ours}.{s}"].clone()
        for ours, theirs in _BLOCK_MAP:
            for s in ("weight", "bias"):
                out[f"{pre}.{theirs}.{s}"] = sd[f"blocks.{n}.{ours}.{s}"]
        for s in ("weight", "bias"):
            q, k, v = torch.chunk(sd[f"blocks.{n}.attn.qkv.{s}"], 3, dim=0)
            for c, tensor in zip("qkv", (q, k, v)):
                out[f"{pre}.attn1.to_{c}.{s}"] = tensor.contiguous()
    return out


def diffusers_config(cfg: DiTConfig) -> dict:
    """config.json for DiTTransformer2DModel with this architecture."""
    return {
        "_class_name": "DiTTransformer2DModel",
        "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "num_layers": cfg.depth,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "attention_bias": True,
        "sample_size": cfg.input_size,
        "patch_size": cfg.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": cfg.num_classes,
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-5,
    }
