"""PixArt transformer configuration, under diffusers' `PixArtTransformer2DModel` parameter names.

Values a config can leave open are resolved here exactly as diffusers resolves them (diffusers 0.42
`pixart_transformer_2d.py`):
* `interpolation_scale`: None -> max(sample_size // 64, 1), i.e. 1 at 256/512 px, 2 at 1024 px. The original
  PixArt-alpha code calls the same number `lewei_scale` (configs: 1.0 at 256 and 512 px, 2.0 for 1024-MS).
  diffusers' PixArt-Sigma converter writes it explicitly (256: 0.5, 512: 1, 1024: 2, 2048: 4).
* `use_additional_conditions`: None -> True only when sample_size == 128 (the 1024-px alpha model).
* base size of the position grid: sample_size // patch_size (diffusers `PatchEmbed.base_size`; the original
  `PixArt.base_size = input_size // patch_size`).

The sin-cos table (both codebases): for a grid of h x w tokens,
    rows = arange(h) / (h / base_size) / interpolation_scale,  cols = arange(w) / (w / base_size) / interpolation_scale
with dims [0, D/2) encoding the column and [D/2, D) the row, each half [sin(pos*w_k), cos(pos*w_k)],
w_k = 1 / 10000^(k / (D/4)).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from flexcli.models.posembed import sincos_2d

# diffusers' fixed choices for PixArt (the converters pass exactly these).
FIXED = {
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "attention_type": "default",
    "dropout": 0.0,
    "upcast_attention": False,
}
PIXART_MAX_LENGTH = {"alpha": 120, "sigma": 300}  # tokens: PixArt-alpha T5 limit; PixArt-Sigma pipeline default


def default_interpolation_scale(sample_size: int) -> float:
    """diffusers' rule when the config leaves interpolation_scale None."""
    return float(max(sample_size // 64, 1))


@dataclass(frozen=True)
class PixArtConfig:
    """A fully resolved PixArt transformer config (official diffusers names)."""

    num_attention_heads: int
    attention_head_dim: int
    in_channels: int
    out_channels: int
    num_layers: int
    sample_size: int
    patch_size: int
    caption_channels: int
    cross_attention_dim: int
    interpolation_scale: float
    use_additional_conditions: bool
    attention_bias: bool = True
    model_max_length: int = 120  # caption tokens (the original y_embedding rows); not a diffusers field

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def base_size(self) -> int:
        return self.sample_size // self.patch_size

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    def to_diffusers(self) -> dict:
        """Keyword arguments that build diffusers.PixArtTransformer2DModel with exactly this config."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model_max_length"}
        out.update(FIXED)
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PixArtConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def pixart_pos_table(cfg: PixArtConfig, grid_h: int | None = None, grid_w: int | None = None) -> torch.Tensor:
    """The sin-cos table (1, grid_h * grid_w, inner_dim) the model adds to its tokens (float32).

    Defaults to the native grid (sample_size // patch_size). Other grids use diffusers' PatchEmbed rule:
    positions scaled by base_size / grid and divided by interpolation_scale.
    """
    grid_h = grid_h or cfg.base_size
    grid_w = grid_w or cfg.base_size
    # float32 positions as in both implementations (np.float32 / torch.float32 arange), sin-cos in float64
    scale = np.float32(cfg.interpolation_scale)
    rows = np.arange(grid_h, dtype=np.float32) / np.float32(grid_h / cfg.base_size) / scale
    cols = np.arange(grid_w, dtype=np.float32) / np.float32(grid_w / cfg.base_size) / scale
    table = sincos_2d(cfg.inner_dim, rows.astype(np.float64), cols.astype(np.float64))
    return torch.from_numpy(table).unsqueeze(0)


def assumed_heads(inner_dim: int) -> tuple[int, int, str]:
    """(heads, head_dim, how) when nothing states the head count: PixArt-XL's 72-d heads, else 64-d ones."""
    for head_dim in (72, 64):
        if inner_dim % head_dim == 0:
            return inner_dim // head_dim, head_dim, f"assumed (head_dim {head_dim}, as PixArt-XL uses 72)"
    return 1, inner_dim, "assumed (1 head: the width is not a multiple of 64 or 72)"
