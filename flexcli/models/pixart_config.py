"""PixArt transformer configuration, under diffusers' `PixArtTransformer2DModel` parameter names, and the
named configs (PixArt-XL/2 at 256/512/1024 px, the paper's Emu shape, tiny ones for tests).

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

The Emu class (FlexiDiT App. B.5: "fundamentally identical" to PixArt, with QK-normalisation and learned
positional embeddings) is a config of the same family: `qk_norm` and `pos_embed_type="learned"`. These two
fields, the learned null caption and the caption dropout rate have no diffusers counterpart.
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
QK_NORMS = (None, "layer_norm", "rms_norm")
POS_EMBED_TYPES = ("sincos", "learned")
NOT_DIFFUSERS = ("model_max_length", "null_caption", "class_dropout_prob", "qk_norm", "pos_embed_type")


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
    null_caption: bool = False  # the checkpoint carries the learned null caption y_embedding (original layout)
    class_dropout_prob: float = 0.1  # PixArt's caption dropout rate in training (CFG)
    qk_norm: str | None = None  # Emu class: "layer_norm" or "rms_norm" on q and k, per head, in attn1 and attn2
    pos_embed_type: str = "sincos"  # "sincos" (PixArt) or "learned" (Emu class: a trained (1, T, D) table)

    def __post_init__(self):
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"pos_embed_type must be one of {POS_EMBED_TYPES}, got {self.pos_embed_type!r}")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    # the names the family-independent code (compute, api, profile) reads, as DiTConfig spells them
    depth = property(lambda self: self.num_layers)
    hidden_size = property(lambda self: self.inner_dim)
    num_heads = property(lambda self: self.num_attention_heads)
    input_size = property(lambda self: self.sample_size)
    mlp_hidden = property(lambda self: 4 * self.inner_dim)

    @property
    def is_diffusers(self) -> bool:
        """Whether diffusers' PixArtTransformer2DModel can hold this config (not the Emu-class variants)."""
        return self.qk_norm is None and self.pos_embed_type == "sincos"

    @property
    def base_size(self) -> int:
        return self.sample_size // self.patch_size

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    def to_diffusers(self) -> dict:
        """Keyword arguments that build diffusers.PixArtTransformer2DModel with exactly this config."""
        if not self.is_diffusers:
            raise ValueError("diffusers' PixArtTransformer2DModel has no QK-norm or learned positions (Emu class)")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in NOT_DIFFUSERS}
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


def pixart_positions(cfg: PixArtConfig, rows: np.ndarray, cols: np.ndarray, base_grid: tuple[int, int]) -> torch.Tensor:
    """The sin-cos table at fractional (row, col) coordinates of a `base_grid` of pretrained-size tokens (float64
    positions): coordinate c sits at c / (grid / base_size) / interpolation_scale, as token c does in
    `pixart_pos_table`. Token centres of larger patches (`flexcli.flex.resize.patch_centres`) -> (1, T, D)."""
    s = cfg.interpolation_scale
    r = np.asarray(rows, dtype=np.float64) / (base_grid[0] / cfg.base_size) / s
    c = np.asarray(cols, dtype=np.float64) / (base_grid[1] / cfg.base_size) / s
    return torch.from_numpy(sincos_2d(cfg.inner_dim, r, c)).unsqueeze(0)


# ------------------------------------------------------------------------------------------------ named configs
def _xl(sample_size: int, **kw) -> PixArtConfig:
    return PixArtConfig(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                        sample_size=sample_size, patch_size=2, caption_channels=4096, cross_attention_dim=1152,
                        interpolation_scale=default_interpolation_scale(sample_size),
                        use_additional_conditions=sample_size == 128, **kw)


NAMED_CONFIGS: dict[str, PixArtConfig] = {
    "PixArt-XL/2": _xl(32),  # 256 px: PixArt-XL-2-SAM-256x256, the paper's T2I Transf.
    "PixArt-XL/2-256": _xl(32),
    "PixArt-XL/2-512": _xl(64),
    "PixArt-XL/2-1024": _xl(128),  # the 1024-px alpha model: interpolation scale 2, micro-conditions
    # The paper's Emu shape (App. B.5, Fig. 9): 24 layers, width 2048 (32 x 64 heads), a 128x128 latent (4096 tokens
    # at p=2, 1024 at p=4), 120 text tokens, QK-norm and learned positions. Its text width and latent channels are
    # not published: 4096 (T5-XXL) and 4 are assumptions (they hardly move the FLOPs).
    "Emu/2": PixArtConfig(num_attention_heads=32, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=24,
                          sample_size=128, patch_size=2, caption_channels=4096, cross_attention_dim=2048,
                          interpolation_scale=2.0, use_additional_conditions=False, qk_norm="layer_norm",
                          pos_embed_type="learned"),
    # tiny, for tests and the CPU (not from any paper): MiniLM's 384-wide captions
    "PixArt-Tiny/2": PixArtConfig(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                  num_layers=2, sample_size=16, patch_size=2, caption_channels=384,
                                  cross_attention_dim=32, interpolation_scale=1.0, use_additional_conditions=False,
                                  model_max_length=16),
    # the text-to-image built-in default (issue #13): pixel-space Fashion-MNIST, 32x32x1 with patch 4 (64 tokens) as
    # DiT-FMNIST/4, depth 6, width 128 (4 x 32 heads), learned sigma, MiniLM's 384-d captions of 16 tokens, learned
    # null caption
    "PixArt-FMNIST/4": PixArtConfig(num_attention_heads=4, attention_head_dim=32, in_channels=1, out_channels=2,
                                    num_layers=6, sample_size=32, patch_size=4, caption_channels=384,
                                    cross_attention_dim=128, interpolation_scale=1.0, use_additional_conditions=False,
                                    model_max_length=16, null_caption=True),
}


def named_pixart_config(name: str, **overrides) -> PixArtConfig:
    from flexcli.errors import FlexcliError

    if name not in NAMED_CONFIGS:
        raise FlexcliError(f"unknown PixArt config '{name}'", f"choose one of: {', '.join(NAMED_CONFIGS)}")
    return dataclasses.replace(NAMED_CONFIGS[name], **overrides)
