"""The Wan 2.1 text-to-video family (issue #14): model, layouts (original release and diffusers, both
auto-detected) and compute terms, with cross-attention over the text tokens and the time/text embedders."""
from __future__ import annotations

import math

from flexcli.families.base import Family, FamilyCost
from flexcli.io import wan_layout
from flexcli.io.checkpoint import Checkpoint
from flexcli.models.wan import Wan
from flexcli.models.wan_config import WanConfig

# The latent `flexcli info` and `forward_cost` use when none is given: 480x832 at 77 frames (20 latent frames),
# the 480p clip nearest Wan's default 81 frames that every FlexiDiT video size ((1,2,2), (2,2,2), (1,4,4)) tiles.
# A config's own `latent_size` (the built-in pixel-space Wan-FMNIST: (4, 32, 32)) replaces it.
DEFAULT_LATENT = (20, 60, 104)


def claims(keys: set, config_json: dict | None) -> bool:
    """Wan tensors in either layout (a repackaging prefix allowed), or a config.json naming a Wan class."""
    if config_json is not None and config_json.get("_class_name") in ("WanModel", "WanTransformer3DModel"):
        return True
    stripped = set(wan_layout.strip_prefix(dict.fromkeys(keys)))
    return wan_layout.is_original(stripped) or wan_layout.is_diffusers(stripped)


def read(path, use_ema: bool = True) -> Checkpoint:
    """Any Wan 2.1 text-to-video checkpoint (see `flexcli.io.wan_checkpoint`) as a flexcli `Checkpoint`."""
    from flexcli.io.wan_checkpoint import read_wan_checkpoint

    ckpt = read_wan_checkpoint(path)
    return Checkpoint(ckpt.state_dict, WanConfig.from_dict(ckpt.config), ckpt.layout, ckpt.path,
                      dict(ckpt.sources), family="wan")


def _terms(cfg: WanConfig, p: tuple, T: int) -> dict:
    D, F, C, Co, L, n = cfg.hidden_size, cfg.ffn_dim, cfg.in_channels, cfg.out_channels, cfg.text_len, cfg.depth
    return {"patch_embed": T * C * math.prod(p) * D,
            "time_embed": cfg.freq_dim * D + D * D + D * 6 * D,  # time_embedder MLP and time_proj (6 modulations)
            "text_embed": L * (cfg.text_dim * D + D * D),  # the text projection of the L text tokens
            "self_qkvo": n * 4 * T * D * D, "attention": _attention(cfg, T),
            "cross_q_out": n * 2 * T * D * D, "cross_kv": n * 2 * L * D * D,
            "cross_attention": _cross(cfg, T, 1),
            "ffn": n * 2 * T * D * F, "de_embed": T * D * math.prod(p) * Co}


def _attention(cfg: WanConfig, T: int) -> int:
    return cfg.depth * 2 * T * T * cfg.hidden_size


def _cross(cfg: WanConfig, T: int, segments: int) -> int:
    """Q K^T and A V of the cross-attention: T queries over the L text tokens of each of `segments` texts (a
    packed row computed densely attends over every segment's text, masked)."""
    return cfg.depth * 2 * T * segments * cfg.text_len * cfg.hidden_size


def _lora_macs(cfg: WanConfig, T: int, targets: tuple) -> int:
    """MACs per unit of LoRA rank: d_in + d_out per token per adapted linear; attn2's k and v (opt-in with
    --lora-cross-attn) see the text_len text tokens, every other target the T video tokens."""
    D, F, L = cfg.hidden_size, cfg.ffn_dim, cfg.text_len
    tokens = {"attn2.to_k": L, "attn2.to_v": L}
    dims = {"ffn.net.0.proj": (D, F), "ffn.net.2": (F, D)}
    return cfg.depth * sum(tokens.get(t, T) * sum(dims.get(t, (D, D))) for t in targets)


COST = FamilyCost(
    terms=_terms,
    lora_dims=lambda c: [(c.hidden_size, c.hidden_size)] * 4 + [(c.hidden_size, c.ffn_dim), (c.ffn_dim, c.hidden_size)],
    attention=_attention,
    io_dims=lambda c: (c.hidden_size, c.in_channels, c.out_channels),
    spatial=lambda c: c.latent_size or DEFAULT_LATENT,
    lora_macs=_lora_macs,
    packed_cross_attention=_cross)

FAMILY = Family(name="wan", model=Wan, config=WanConfig, claims=claims, read=read, cost=COST, conditioning="text",
                process="flow")
