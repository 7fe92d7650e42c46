"""PixArt's transformer block (diffusers `BasicTransformerBlock(norm_type="ada_norm_single")`) on the flex core.

Parameter names are diffusers' (`attn1.to_q`, `attn2.to_out.0`, `ff.net.0.proj`, `ff.net.2`, `scale_shift_table`),
so a diffusers `PixArtTransformer2DModel` state dict loads as is. The linears are the flex core's `Linear` (LoRA
targets) and the two block norms its `LayerNorm` (per-size affines in shared mode); each takes the token spans.
One attention function serves both attentions: self-attention with the spans' block-diagonal mask (None for a
plain pass), cross-attention with the caption key bias (diffusers' `(1 - mask) * -10000`), which in a packed
pass also keeps each run of image tokens on its own caption (`Spans.cross_mask`).

Block (x: image tokens, c: projected caption, t0: adaLN-single's 6D vector, S: the block's scale_shift_table):
    shift1, scale1, gate1, shift2, scale2, gate2 = S + t0
    x = x + gate1 * attn1(norm1(x) * (1 + scale1) + shift1)
    x = x + attn2(x, c)                                   # no norm, no gate (PixArt)
    x = x + gate2 * ff(norm2(x) * (1 + scale2) + shift2)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex.layers import LayerNorm, Linear
from flexcli.flex.packing import Spans

CAPTION_DROP = -10000.0  # diffusers' bias on padded caption tokens


def _qk_norm(kind: str | None, head_dim: int) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "layer_norm":
        return nn.LayerNorm(head_dim, eps=1e-6)
    return nn.RMSNorm(head_dim, eps=1e-6)


class Attention(nn.Module):
    """Multi-head attention with diffusers' names: to_q, to_k, to_v, to_out.0, optional norm_q / norm_k."""

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None, bias: bool = True,
                 qk_norm: str | None = None):
        super().__init__()
        inner, kv_dim = heads * head_dim, kv_dim or dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = Linear(dim, inner, bias=bias)
        self.to_k = Linear(kv_dim, inner, bias=bias)
        self.to_v = Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([Linear(inner, dim, bias=True)])
        self.norm_q, self.norm_k = _qk_norm(qk_norm, head_dim), _qk_norm(qk_norm, head_dim)

    def _heads(self, x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
        x = x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (N, heads, T, head_dim)
        return x if norm is None else norm(x)

    def forward(self, x: torch.Tensor, spans: Spans, context: torch.Tensor | None = None,
                context_spans: Spans | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, T, D) queries; keys/values from `context` (N, L, C) (its own spans) or x; mask: bool (True =
        attend) or an additive bias, broadcastable to (N, heads, T, L)."""
        kv, kv_spans = (x, spans) if context is None else (context, context_spans)
        q = self._heads(self.to_q(x, spans), self.norm_q)
        k = self._heads(self.to_k(kv, kv_spans), self.norm_k)
        v = self._heads(self.to_v(kv, kv_spans), None)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).flatten(2), spans)


class GELUProj(nn.Module):
    """diffusers' `GELU(approximate="tanh")` activation module: a linear `proj`, then the tanh GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = Linear(dim, hidden)

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        return F.gelu(self.proj(x, spans), approximate="tanh")


class FeedForward(nn.Module):
    """diffusers' FeedForward(activation_fn="gelu-approximate"): net.0.proj -> GELU(tanh) -> net.2 (x4)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, mult * dim), nn.Identity(), Linear(mult * dim, dim)])

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        return self.net[2](self.net[0](x, spans), spans)


class PixArtBlock(nn.Module):
    """One adaLN-single transformer block: self-attention, cross-attention to the caption, feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_dim: int, bias: bool = True,
                 qk_norm: str | None = None):
        super().__init__()
        self.norm1 = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = Attention(dim, heads, head_dim, bias=bias, qk_norm=qk_norm)
        self.attn2 = Attention(dim, heads, head_dim, kv_dim=cross_dim, bias=bias, qk_norm=qk_norm)
        self.norm2 = LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t0: torch.Tensor, spans: Spans, caption: torch.Tensor, caption_spans: Spans,
                self_mask: torch.Tensor | None, cross_mask: torch.Tensor) -> torch.Tensor:
        """x (N, T, D); t0 (N, 1 or T, 6D) per token; caption (N, L, D) with its spans and key mask."""
        mods = self.scale_shift_table + t0.unflatten(-1, (6, -1))  # (N, 1 or T, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(-2)
        h = self.norm1(x, spans) * (1 + scale_msa) + shift_msa
        x = x + gate_msa * self.attn1(h, spans, mask=self_mask)
        x = x + self.attn2(x, spans, caption, caption_spans, mask=cross_mask)
        h = self.norm2(x, spans) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * self.ff(h, spans)


def caption_bias(masks: list[torch.Tensor], spans: Spans, caption_spans: Spans, dtype: torch.dtype) -> torch.Tensor:
    """The cross-attention bias (N, 1, 1 or T, L): diffusers' (1 - mask) * -10000 on padded caption tokens and,
    in a packed pass, -inf between a run of image tokens and the other runs' captions."""
    keep = torch.cat(masks, dim=1).to(dtype)  # (N, L)
    bias = ((1 - keep) * CAPTION_DROP)[:, None, None, :]
    pair = spans.cross_mask(caption_spans, keep.device)  # None for one run
    if pair is None:
        return bias
    return bias.masked_fill(~pair[None, None], float("-inf"))
