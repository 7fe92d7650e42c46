"""Text-to-image PixArt-alpha/-Sigma (and the Emu class) with diffusers' parameter names: the second family on
the flex core.

`forward(x, t, cond, patch_size=None)` (from `FlexModel`), with `cond` a `TextCondition` (caption embeddings
(N, L, caption_channels) and their key mask), runs at the pretrained patch size or, once flexified, at any weak
size. Its parts:
* tokenize:    `pos_embed.proj` (the patch-embedding conv) and PixArt's sin-cos table (`interpolation_scale`,
               base size sample_size // patch), or a learned table (Emu class); weak sizes take the table at
               their tokens' centres (closed form, or bilinear interpolation of a learned table);
* condition:   diffusers' `AdaLayerNormSingle` (timestep, and the 1024-px micro-conditions) gives t0 (6D) and the
               embedded timestep; diffusers' `PixArtAlphaTextProjection` projects the caption;
* blocks:      `flexcli.models.pixart_blocks` (self-attention, masked cross-attention, feed-forward);
* de-tokenize: `norm_out` modulated by `scale_shift_table + embedded timestep`, then `proj_out`.
diffusers' size-independent modules are reused as they are; only what the patch size touches is flexcli's.

The learned null caption (`y_embedding`, original layout only) is a frozen buffer of the model when the
checkpoint has one (`config.null_caption`): classifier-free guidance then contrasts the prompt with it, masked
with the prompt's own mask, as PixArt's original inference does. Otherwise (diffusers layouts) the negative
prompt is encoded by the text encoder, as diffusers' pipeline does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn

from flexcli.flex.conditions import TextCondition
from flexcli.flex.core import FlexModel, FlexSpec
from flexcli.flex.layers import LayerNorm
from flexcli.flex.packing import Spans
from flexcli.flex.resize import interpolate_table, patch_centres, patch_key
from flexcli.models.pixart_blocks import PixArtBlock, caption_bias
from flexcli.models.pixart_config import PixArtConfig, pixart_pos_table, pixart_positions

SELF_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


@dataclass(frozen=True)
class PixArtCondition(TextCondition):
    """A `TextCondition` with the 1024-px alpha model's micro-conditions: resolution (N, 2) in pixels (h, w) and
    aspect ratio (N, 1) = h / w. Without them such a model uses its native square size."""

    resolution: torch.Tensor | None = None
    aspect_ratio: torch.Tensor | None = None

    @staticmethod
    def cat(conds: list) -> TextCondition:
        """Stack along the batch; the micro-conditions are kept when every part has them."""
        out = TextCondition.cat(conds)
        if all(getattr(c, "resolution", None) is not None for c in conds):
            return PixArtCondition(out.embeds, out.mask, torch.cat([c.resolution for c in conds]),
                                   torch.cat([c.aspect_ratio for c in conds]))
        return out

    def to(self, device) -> "PixArtCondition":
        move = (lambda v: None if v is None else v.to(device))  # noqa: E731
        return PixArtCondition(self.embeds.to(device), self.mask.to(device), move(self.resolution),
                               move(self.aspect_ratio))


class Conditioning(NamedTuple):
    """What `PixArt.condition` hands to the blocks and the head, for one run of tokens."""

    t0: torch.Tensor  # (N, 6D): adaLN-single's modulation vector
    embedded_timestep: torch.Tensor  # (N, D): the final layer's modulation input
    caption: torch.Tensor  # (N, L, D) projected caption tokens
    mask: torch.Tensor  # (N, L) 1 keep, 0 padding


class PatchEmbed(nn.Module):
    """diffusers' PatchEmbed parameters: the conv `proj`; a learned table `pos_embed` for the Emu class."""

    def __init__(self, cfg: PixArtConfig):
        super().__init__()
        p, D = cfg.patch_size, cfg.inner_dim
        self.proj = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p, bias=True)
        if cfg.pos_embed_type == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.base_size ** 2, D))
            nn.init.normal_(self.pos_embed, std=0.02)


class PixArt(FlexModel):
    family = "pixart"
    flex_spec = FlexSpec(tokenizer="pos_embed.proj", detokenizer="proj_out", lora_targets=SELF_ATTENTION + FEED_FORWARD,
                         norms=("norm1", "norm2", "norm_out"), optional_lora_targets={"cross_attn": CROSS_ATTENTION})

    def __init__(self, config: PixArtConfig):
        super().__init__()
        from diffusers.models.embeddings import PixArtAlphaTextProjection
        from diffusers.models.normalization import AdaLayerNormSingle

        self.config = cfg = config
        D = cfg.inner_dim
        self.pos_embed = PatchEmbed(cfg)
        self.transformer_blocks = nn.ModuleList([
            PixArtBlock(D, cfg.num_attention_heads, cfg.attention_head_dim, cfg.cross_attention_dim,
                        cfg.attention_bias, cfg.qk_norm) for _ in range(cfg.num_layers)])
        self.norm_out = LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, D) / D**0.5)
        self.proj_out = nn.Linear(D, cfg.patch_size ** 2 * cfg.out_channels)
        self.adaln_single = AdaLayerNormSingle(D, use_additional_conditions=cfg.use_additional_conditions)
        self.caption_projection = PixArtAlphaTextProjection(in_features=cfg.caption_channels, hidden_size=D)
        if cfg.null_caption:
            self.register_buffer("y_embedding", torch.randn(cfg.model_max_length, cfg.caption_channels) / 10 ** 0.5)
        else:
            self.y_embedding = None
        if cfg.pos_embed_type == "sincos":
            self.register_buffer("pos_table", pixart_pos_table(cfg), persistent=False)
        self.flex = None

    def initialize_weights(self) -> None:
        """PixArt-alpha's initialisation (`PixArt.initialize_weights`), for training from scratch (checkpoints
        overwrite it): xavier linears with zero biases, N(0, 0.02) timestep / adaLN-single / caption MLPs, and the
        cross-attention outputs and the final projection zeroed."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        w = self.pos_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.pos_embed.proj.bias, 0)
        emb = self.adaln_single.emb.timestep_embedder
        for lin in (emb.linear_1, emb.linear_2, self.adaln_single.linear, self.caption_projection.linear_1,
                    self.caption_projection.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.transformer_blocks:
            nn.init.constant_(block.attn2.to_out[0].weight, 0)
            nn.init.constant_(block.attn2.to_out[0].bias, 0)
        nn.init.constant_(self.proj_out.weight, 0)
        nn.init.constant_(self.proj_out.bias, 0)

    # -- the family's parts (flexcli.flex.core.FlexModel) ---------------------------------------------------
    @property
    def base_patch(self) -> tuple[int, int]:
        return (self.config.patch_size, self.config.patch_size)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.in_channels, self.config.sample_size, self.config.sample_size)

    @property
    def text_width(self) -> int:
        return self.config.caption_channels

    def positions(self, patch: tuple, grid: tuple) -> torch.Tensor:
        """The native grid's table (pretrained size) or the one flexify computed (weak sizes); other grids
        (PixArt runs at other resolutions and aspect ratios) follow diffusers' rule, evaluated at token centres."""
        cfg = self.config
        native = tuple(g * p for g, p in zip(grid, patch)) == (cfg.sample_size, cfg.sample_size)
        if native:
            if patch != self.base_patch:
                return getattr(self.flex, f"pos_{patch_key(patch)}")
            return self.pos_table if cfg.pos_embed_type == "sincos" else self.pos_embed.pos_embed
        if cfg.pos_embed_type == "learned":
            raise ValueError(f"learned positions need the {cfg.sample_size}x{cfg.sample_size} latent")
        if patch == self.base_patch:
            return pixart_pos_table(cfg, *grid).to(self.pos_table.device)
        base_grid = tuple(g * p // p0 for g, p, p0 in zip(grid, patch, self.base_patch))
        rows, cols = patch_centres(grid, patch, self.base_patch)
        return pixart_positions(cfg, rows, cols, base_grid).to(self.pos_table.device)

    def weak_positions(self, patch: tuple) -> torch.Tensor:
        """The table at each weak token's centre in the pretrained grid (1, T_p, D)."""
        cfg, base = self.config, self.config.base_size
        grid = (cfg.sample_size // patch[0], cfg.sample_size // patch[1])
        rows, cols = patch_centres(grid, patch, self.base_patch)
        if cfg.pos_embed_type == "sincos":
            return pixart_positions(cfg, rows, cols, (base, base))
        table = self.pos_embed.pos_embed[0].detach().cpu()
        return interpolate_table(table, (base, base), [rows, cols]).unsqueeze(0)

    def condition(self, t: torch.Tensor, cond: TextCondition) -> Conditioning:
        """t (N,) timesteps 0..999, cond: caption embeddings (N, L, caption_channels) and mask (N, L)."""
        dtype = self.pos_embed.proj.weight.dtype
        n = cond.embeds.shape[0]
        added = self._micro_conditions(cond, n, t.device) if self.config.use_additional_conditions else None
        t0, embedded = self.adaln_single(t, added, batch_size=n, hidden_dtype=dtype)
        caption = self.caption_projection(cond.embeds.to(dtype))
        return Conditioning(t0, embedded, caption, cond.mask)

    def _micro_conditions(self, cond: TextCondition, n: int, device) -> dict:
        res, ar = getattr(cond, "resolution", None), getattr(cond, "aspect_ratio", None)
        side = float(self.config.sample_size * 8)
        if res is None:
            res = torch.tensor([[side, side]], device=device).expand(n, 2)
        if ar is None:
            ar = torch.ones(n, 1, device=device)
        return {"resolution": res, "aspect_ratio": ar}

    def run_blocks(self, h: torch.Tensor, conds: list[Conditioning], spans: Spans) -> torch.Tensor:
        t0 = spans.per_token([c.t0 for c in conds])  # (N, 1 or T, 6D)
        caption = torch.cat([c.caption for c in conds], dim=1) if spans.packed else conds[0].caption
        caption_spans = Spans(spans.sizes, tuple(c.caption.shape[1] for c in conds))
        cross = caption_bias([c.mask for c in conds], spans, caption_spans, h.dtype)
        self_mask = spans.mask(h.device)
        for block in self.transformer_blocks:
            h = block(h, t0, spans, caption, caption_spans, self_mask, cross)  # (N, T, D)
        return h

    def head(self, h: torch.Tensor, conds: list[Conditioning], spans: Spans) -> torch.Tensor:
        mods = [(self.scale_shift_table[None] + c.embedded_timestep[:, None]).flatten(1) for c in conds]
        shift, scale = spans.per_token(mods).chunk(2, dim=-1)  # (N, 1 or T, D) each
        return self.norm_out(h, spans) * (1 + scale) + shift

    # -- text conditioning -----------------------------------------------------------------------------------
    @property
    def text_length(self) -> int:
        """Caption tokens per prompt (the text encoder's max_length; PixArt-alpha's T5: 120)."""
        return self.config.model_max_length

    def learned_null_caption(self) -> torch.Tensor | None:
        """The learned null caption (L, caption_channels) (`y_embedding`), or None (diffusers layouts)."""
        return self.y_embedding


def random_pixart(cfg: PixArtConfig, seed: int = 0, std: float = 0.05) -> PixArt:
    """A PixArt with every weight random (normal, `std`), for tests and profiling."""
    torch.manual_seed(seed)
    model = PixArt(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
        if model.y_embedding is not None:
            model.y_embedding.normal_(0, 1)
    return model.eval()
