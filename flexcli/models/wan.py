"""Wan 2.1 text-to-video transformer with diffusers' `WanTransformer3DModel` parameter names: the third family
on the flex core (issue #14).

`forward(x, t, cond, patch_size=None)` (from `FlexModel`): x (N, C, F, H, W) latents, t (N,) flow-matching
timesteps (sigma x 1000), cond a `TextCondition` of umT5 embeddings (N, L, 4096) and their mask. Wan supplies:
* tokenize:    `patch_embedding` (Conv3d, kernel = stride = (1, 2, 2)); no additive positions (rotary);
* condition:   diffusers' `WanTimeTextImageEmbedding` (sinusoidal timestep -> temb -> 6 modulation vectors;
               the text projection), reused as is;
* blocks:      self-attention with QK RMSNorm across heads and 3-D rotary positions, cross-attention to the
               text, FFN; per-block `scale_shift_table` modulation. Rotary angles come from each token's centre
               in the pretrained token grid (`flexcli.models.wan_rope`): fractional for larger patches;
* de-tokenize: `norm_out` modulated by the output `scale_shift_table`, then `proj_out`.
The LoRA targets (paper §3.2) are the self-attention projections and the FFN; the cross-attention is frozen
and has no LoRA (paper Fig. 5) unless flexify opts in (`--lora-cross-attn`, the group "cross_attn").

Text mask. Wan (original and diffusers) trims the umT5 output to the prompt's length, zero-pads it to 512
tokens and passes NO mask: the padded keys are `text_embedder(0)`, attended to. `condition` does the same
with a `TextCondition`: embeddings at masked positions are zeroed, the text is zero-padded to `text_len` (512)
tokens and every key is attended to, so an all-ones mask is exactly diffusers' computation. `text_key_mask = True` instead drops the masked keys (a key-padding
mask), which equals running diffusers on the trimmed text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex.conditions import TextCondition
from flexcli.flex.core import FlexModel, FlexSpec
from flexcli.flex.layers import LayerNorm, Linear
from flexcli.flex.packing import Spans
from flexcli.models.wan_config import WanConfig
from flexcli.models.wan_rope import grid_positions, rotary_at_positions


@dataclass
class WanCond:
    """One segment's conditioning: temb (N, D), the 6 block modulations (N, 6, D), the embedded text (N, L, D)
    and its key mask (N, L) bool, or None when every key is attended to."""

    temb: torch.Tensor
    timestep_proj: torch.Tensor
    text: torch.Tensor
    key_mask: torch.Tensor | None


class FP32LayerNorm(LayerNorm):
    """diffusers' FP32LayerNorm (computed in float32, cast back), as a flex LayerNorm (per-size in shared mode)."""

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, T, heads, d) rotated by interleaved pairs (diffusers' WanAttnProcessor arithmetic)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask) -> torch.Tensor:
    """(N, T, heads, d) queries over (N, L, heads, d) keys -> (N, T, heads * d), as diffusers' native backend."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2, 3).type_as(q)


class _Attention(nn.Module):
    """Wan's attention projections under diffusers' names: q/k/v/out, RMSNorm across heads on q and k."""

    def __init__(self, dim: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = Linear(dim, dim), Linear(dim, dim), Linear(dim, dim)
        self.to_out = nn.ModuleList([Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)
        self.norm_k = nn.RMSNorm(dim, eps=eps, elementwise_affine=True)


class SelfAttention(_Attention):
    """attn1: q/k/v/out are LoRA targets; RMSNorm on q and k, then the rotary embedding."""

    def forward(self, x: torch.Tensor, rotary: tuple, spans: Spans) -> torch.Tensor:
        q = self.norm_q(self.to_q(x, spans)).unflatten(2, (self.heads, -1))
        k = self.norm_k(self.to_k(x, spans)).unflatten(2, (self.heads, -1))
        v = self.to_v(x, spans).unflatten(2, (self.heads, -1))
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        return self.to_out[0](_attend(q, k, v, self.heads, spans.mask(x.device)), spans)


class CrossAttention(_Attention):
    """attn2: queries from the video tokens, keys and values from the embedded text (its own spans: one run of
    text per run of video tokens). Frozen without LoRA by default (paper Fig. 5); `--lora-cross-attn` opts in."""

    def forward(self, x: torch.Tensor, spans: Spans, text: torch.Tensor, text_spans: Spans,
                mask: torch.Tensor | None) -> torch.Tensor:
        q = self.norm_q(self.to_q(x, spans)).unflatten(2, (self.heads, -1))
        k = self.norm_k(self.to_k(text, text_spans)).unflatten(2, (self.heads, -1))
        v = self.to_v(text, text_spans).unflatten(2, (self.heads, -1))
        return self.to_out[0](_attend(q, k, v, self.heads, mask), spans)


class GELUProj(nn.Module):
    """diffusers' GELU(approximate="tanh") layer: `proj` then the activation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        return F.gelu(self.proj(x, spans), approximate="tanh")


class FeedForward(nn.Module):
    """ffn.net = [GELU proj, Dropout, Linear]: both linears are LoRA targets."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, inner), nn.Dropout(0.0), Linear(inner, dim)])

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        return self.net[2](self.net[0](x, spans), spans)


class WanBlock(nn.Module):
    """diffusers' WanTransformerBlock: modulated self-attention, cross-attention, modulated FFN."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = FP32LayerNorm(D, eps=cfg.eps, elementwise_affine=False)
        self.attn1 = SelfAttention(D, cfg.num_attention_heads, cfg.eps)
        self.attn2 = CrossAttention(D, cfg.num_attention_heads, cfg.eps)
        self.norm2 = FP32LayerNorm(D, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(D, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(D, eps=cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, D) / D**0.5)

    def forward(self, h: torch.Tensor, conds: list[WanCond], text: tuple, rotary: tuple,
                spans: Spans) -> torch.Tensor:
        """h (N, T, D); text = (embedded text (N, L, D), its spans, the cross-attention mask or None)."""
        mods = spans.per_token([(self.scale_shift_table + c.timestep_proj.float()).flatten(1) for c in conds])
        shift, scale, gate, c_shift, c_scale, c_gate = mods.chunk(6, dim=-1)  # (N, 1 or T, D) each, float32
        x = (self.norm1(h.float(), spans) * (1 + scale) + shift).type_as(h)
        h = (h.float() + self.attn1(x, rotary, spans) * gate).type_as(h)
        x = (self.norm2(h.float(), spans) if self.norm2 is not None else h.float()).type_as(h)
        h = h + self.attn2(x, spans, *text)
        x = (self.norm3(h.float(), spans) * (1 + c_scale) + c_shift).type_as(h)
        return (h.float() + self.ffn(x, spans).float() * c_gate).type_as(h)


class Wan(FlexModel):
    family = "wan"
    flex_spec = FlexSpec(tokenizer="patch_embedding", detokenizer="proj_out",
                         lora_targets=("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                       "ffn.net.0.proj", "ffn.net.2"),
                         norms=("norm1", "norm3", "norm_out"),
                         optional_lora_targets={"cross_attn": ("attn2.to_q", "attn2.to_k", "attn2.to_v",
                                                               "attn2.to_out.0")})

    def __init__(self, config: WanConfig):
        super().__init__()
        from diffusers.models.transformers.transformer_wan import WanTimeTextImageEmbedding

        self.config = config
        D = config.hidden_size
        self.text_key_mask = False  # True: drop masked text keys instead of attending to zeroed ones (see above)
        self.patch_embedding = nn.Conv3d(config.in_channels, D, kernel_size=config.patch_size,
                                         stride=config.patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(dim=D, time_freq_dim=config.freq_dim,
                                                            time_proj_dim=6 * D, text_embed_dim=config.text_dim)
        self.blocks = nn.ModuleList([WanBlock(config) for _ in range(config.num_layers)])
        self.norm_out = FP32LayerNorm(D, eps=config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(D, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, D) / D**0.5)
        self.flex = None

    def initialize_weights(self) -> None:
        """Wan 2.1's initialisation (`WanModel.init_weights`), for training from scratch (checkpoints overwrite
        it): xavier linears with zero biases, xavier patch embedding, N(0, 0.02) time and text embedders, and the
        output projection's weight zeroed. The modulation tables keep their randn / sqrt(D) start."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.data.flatten(1))
        for embedder in (self.condition_embedder.time_embedder, self.condition_embedder.text_embedder):
            for module in embedder.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.proj_out.weight)

    # -- the family's parts (flexcli.flex.core.FlexModel) ---------------------------------------------------
    @property
    def base_patch(self) -> tuple[int, int, int]:
        return tuple(self.config.patch_size)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def text_width(self) -> int:
        """The umT5 embedding width the text projection takes (4096)."""
        return self.config.text_dim

    @property
    def text_length(self) -> int:
        """Tokens per prompt (512): the tokenizer pads to it, the cross-attention sees it."""
        return self.config.text_len

    text_preprocess = "none"  # prompts are encoded as written (Wan's pipelines do not lower-case them)

    def learned_null_caption(self) -> None:
        return None  # guidance contrasts with the encoded negative prompt ("" by default, as diffusers)

    def positions(self, patch: tuple, grid: tuple) -> None:
        return None  # rotary: the blocks place each run's tokens at their patch centres

    def condition(self, t: torch.Tensor, cond: TextCondition) -> WanCond:
        """t (N,) timesteps, cond the umT5 embeddings (N, L, text_dim) and mask (N, L) -> WanCond."""
        if not isinstance(cond, TextCondition):
            raise TypeError("Wan is conditioned on text: pass a flexcli.flex.core.TextCondition")
        embeds, keep = cond.embeds, cond.mask.to(cond.embeds.device).bool()
        pad = self.config.text_len - embeds.shape[1]
        if pad > 0:  # as the pipelines: zero-padded to text_len tokens
            embeds, keep = F.pad(embeds, (0, 0, 0, pad)), F.pad(keep, (0, pad))
        embeds = torch.where(keep[..., None], embeds, torch.zeros((), dtype=embeds.dtype, device=embeds.device))
        dtype = self.patch_embedding.weight.dtype
        temb, proj, text, _ = self.condition_embedder(t, embeds.to(dtype))
        key_mask = keep if self.text_key_mask and not bool(keep.all()) else None
        return WanCond(temb, proj.unflatten(1, (6, -1)), text, key_mask)

    def rotary(self, spans: Spans, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, T, 1, head_dim): every run's tokens at their centres in the pretrained grid."""
        if len(spans.grids) != len(spans.lengths):
            raise ValueError("Wan needs the token grid of every run (Spans.grids)")
        parts = [rotary_at_positions(*grid_positions(g, p, self.base_patch), self.config.attention_head_dim)
                 for g, p in zip(spans.grids, spans.sizes)]
        return tuple(torch.cat([part[i] for part in parts], dim=1).to(device) for i in (0, 1))

    def text_keys(self, conds: list[WanCond], spans: Spans, device) -> tuple:
        """(text, its spans, mask): one run's text (N, L, D), or the runs' texts side by side with a mask that
        pairs query run i with text run i; combined with the key-padding masks where they are used."""
        text = conds[0].text if len(conds) == 1 else torch.cat([c.text for c in conds], dim=1)
        text_spans = Spans(spans.sizes, tuple(c.text.shape[1] for c in conds))
        pairing = spans.cross_mask(text_spans, device)
        if all(c.key_mask is None for c in conds):
            return text, text_spans, pairing
        keys = torch.cat([c.key_mask if c.key_mask is not None else torch.ones(c.text.shape[:2], dtype=torch.bool,
                                                                                 device=device) for c in conds], 1)
        mask = keys[:, None, None, :]  # (N, 1, 1, L): attend to the kept keys
        return text, text_spans, mask if pairing is None else mask & pairing[None, None]

    def run_blocks(self, h: torch.Tensor, conds: list[WanCond], spans: Spans) -> torch.Tensor:
        rotary = self.rotary(spans, h.device)
        text = self.text_keys(conds, spans, h.device)
        for block in self.blocks:
            h = block(h, conds, text, rotary, spans)  # (N, T, D)
        return h

    def head(self, h: torch.Tensor, conds: list[WanCond], spans: Spans) -> torch.Tensor:
        mods = spans.per_token([(self.scale_shift_table + c.temb[:, None]).flatten(1) for c in conds])
        shift, scale = mods.chunk(2, dim=-1)
        return (self.norm_out(h.float(), spans) * (1 + scale) + shift).type_as(h)
