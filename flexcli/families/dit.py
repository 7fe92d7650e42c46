"""The class-conditional DiT family (Peebles & Xie): model, layouts and compute terms."""
from __future__ import annotations

import math

from flexcli.families.base import Family, FamilyCost
from flexcli.io import dit_layout
from flexcli.models.configs import DiTConfig
from flexcli.models.dit import DiT


def _terms(cfg: DiTConfig, p: tuple, T: int) -> dict:
    D, H, C, Co = cfg.hidden_size, cfg.mlp_hidden, cfg.in_channels, cfg.out_channels
    return {"patch_embed": T * C * math.prod(p) * D, "timestep_mlp": 256 * D + D * D,
            "adaLN": cfg.depth * D * 6 * D + D * 2 * D, "qkv": cfg.depth * T * D * 3 * D,
            "attention": _attention(cfg, T), "attn_proj": cfg.depth * T * D * D,
            "mlp": cfg.depth * 2 * T * D * H, "de_embed": T * D * math.prod(p) * Co}


def _attention(cfg: DiTConfig, T: int) -> int:
    return cfg.depth * 2 * T * T * cfg.hidden_size


COST = FamilyCost(
    terms=_terms,
    lora_dims=lambda c: [(c.hidden_size, 3 * c.hidden_size), (c.hidden_size, c.hidden_size),
                         (c.hidden_size, c.mlp_hidden), (c.mlp_hidden, c.hidden_size)],
    attention=_attention,
    io_dims=lambda c: (c.hidden_size, c.in_channels, c.out_channels),
    spatial=lambda c: (c.input_size, c.input_size))

FAMILY = Family(name="dit", model=DiT, config=DiTConfig, claims=dit_layout.claims, read=dit_layout.read_dit,
                cost=COST, conditioning="class")
