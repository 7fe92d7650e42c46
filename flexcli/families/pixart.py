"""The text-to-image PixArt family (PixArt-alpha/-Sigma, and the Emu class): model, layouts and compute terms.

Layouts (`flexcli.io.pixart_layout.read_pixart`, auto-detected): the original release (`.pth`/`.safetensors`),
diffusers `PixArtTransformer2DModel` folders and pipeline folders (alpha or Sigma). The learned null caption
(`y_embedding`, original layout only) becomes a frozen buffer of the model (`config.null_caption`), so it
travels with flexified checkpoints and classifier-free guidance can use it; diffusers layouts have none and
guide with the encoded negative prompt.

Cost (MACs per sample, T image tokens, L = model_max_length caption tokens, D width, D_c cross_attention_dim):
tokenizer T C p^2 D; timestep MLP 256 D + D^2 (+ the micro-condition MLPs of the 1024-px model); adaLN-single's
one linear D 6D (shared by all blocks); caption projection L (C_cap D + D^2); per block self-attention q/k/v/out
4 T D^2 and 2 T^2 D, cross-attention q/out 2 T D^2, k/v 2 L D_c D and 2 T L D, feed-forward 8 T D^2;
de-tokenizer T D p^2 C_out.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from flexcli.families.base import Family, FamilyCost
from flexcli.io.checkpoint import Checkpoint
from flexcli.models.pixart import PixArt
from flexcli.models.pixart_config import PixArtConfig

_CLASSES = ("PixArtTransformer2DModel", "PixArtAlphaPipeline", "PixArtSigmaPipeline")


def claims(keys: set[str], config_json: dict | None) -> bool:
    """PixArt tensors (diffusers or original names), or a config.json / model_index.json naming a PixArt class."""
    if config_json and config_json.get("_class_name") in _CLASSES:
        return True
    return bool(keys) and ("adaln_single.linear.weight" in keys or "t_block.1.weight" in keys
                           or "y_embedder.y_proj.fc1.weight" in keys)


def read(path: str | Path, use_ema: bool = True) -> Checkpoint:
    """Any PixArt layout as a `Checkpoint` of diffusers-named tensors (+ `y_embedding` when the release has it)."""
    from flexcli.io.pixart_layout import read_pixart

    ckpt = read_pixart(path)
    sd, cfg, sources = dict(ckpt.state_dict), ckpt.config, dict(ckpt.sources)
    if ckpt.null_caption is not None:
        sd["y_embedding"] = ckpt.null_caption
        cfg = dataclasses.replace(cfg, null_caption=True)
        sources["null_caption"] = "tensors (y_embedding)"
    meta = {**ckpt.metadata, "null_caption": ckpt.null_caption_source, "pos_embed": ckpt.pos_embed}
    return Checkpoint(sd, cfg, ckpt.layout, Path(path), sources, metadata=meta, family="pixart")


# ------------------------------------------------------------------------------------------------ cost
def _micro(cfg: PixArtConfig) -> int:
    s = cfg.inner_dim // 3  # resolution (h and w) and aspect ratio: three 256 -> s -> s MLP rows
    return 3 * (256 * s + s * s) if cfg.use_additional_conditions else 0


def cross_attention(cfg: PixArtConfig, T: int, captions: int = 1) -> int:
    """Q K^T and A V of cross-attention over `captions` captions of model_max_length tokens (all blocks)."""
    return cfg.num_layers * 2 * T * captions * cfg.model_max_length * cfg.inner_dim


def _terms(cfg: PixArtConfig, p: tuple, T: int) -> dict:
    D, C, Co, n, L = cfg.inner_dim, cfg.in_channels, cfg.out_channels, cfg.num_layers, cfg.model_max_length
    return {"patch_embed": T * C * math.prod(p) * D, "timestep_mlp": 256 * D + D * D + _micro(cfg),
            "adaLN_single": D * 6 * D, "caption_projection": L * (cfg.caption_channels * D + D * D),
            "qkv": n * T * D * 3 * D, "attention": _attention(cfg, T), "attn_proj": n * T * D * D,
            "cross_q_out": n * 2 * T * D * D, "cross_kv": n * 2 * L * cfg.cross_attention_dim * D,
            "cross_attention": cross_attention(cfg, T), "mlp": n * 2 * T * D * 4 * D,
            "de_embed": T * D * math.prod(p) * Co}


def _attention(cfg: PixArtConfig, T: int) -> int:
    return cfg.num_layers * 2 * T * T * cfg.inner_dim


def _lora_macs(cfg: PixArtConfig, T: int, targets: tuple) -> int:
    """MACs per unit of LoRA rank of one forward pass: d_in + d_out per token per adapted linear; attn2's k and v
    (opt-in with --lora-cross-attn) see the L caption tokens, every other target the T image tokens."""
    D, Dc, L = cfg.inner_dim, cfg.cross_attention_dim, cfg.model_max_length
    dims = {"attn1.to_q": (D, D, T), "attn1.to_k": (D, D, T), "attn1.to_v": (D, D, T), "attn1.to_out.0": (D, D, T),
            "attn2.to_q": (D, D, T), "attn2.to_k": (Dc, D, L), "attn2.to_v": (Dc, D, L), "attn2.to_out.0": (D, D, T),
            "ff.net.0.proj": (D, 4 * D, T), "ff.net.2": (4 * D, D, T)}
    return cfg.num_layers * sum(n * (i + o) for i, o, n in (dims[t] for t in targets))


COST = FamilyCost(
    terms=_terms,
    lora_dims=lambda c: [(c.inner_dim, c.inner_dim)] * 4 + [(c.inner_dim, 4 * c.inner_dim), (4 * c.inner_dim, c.inner_dim)],
    attention=_attention,
    io_dims=lambda c: (c.inner_dim, c.in_channels, c.out_channels),
    spatial=lambda c: (c.sample_size, c.sample_size),
    lora_macs=_lora_macs,
    packed_cross_attention=lambda c, T, segments: cross_attention(c, T, segments))

FAMILY = Family(name="pixart", model=PixArt, config=PixArtConfig, claims=claims, read=read, cost=COST,
                conditioning="text")
