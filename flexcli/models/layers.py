"""DiT building blocks with the official facebookresearch/DiT (and timm) parameter names.

Every block layer takes the token spans (`flexcli.flex.packing.Spans`): its linears and norms are the flex core's
`Linear`/`LayerNorm`, which flexify turns into per-size LoRAs or norms, and attention is block-diagonal over the
spans of a packed sequence. Conditioning comes as one vector per span (`conds`), expanded per token.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex.layers import LayerNorm, Linear
from flexcli.flex.packing import Spans


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: x (N, T, D), shift/scale (N, 1 or T, D)."""
    return x * (1 + scale) + shift


class PatchEmbed(nn.Module):
    """timm-style patch embedding: `proj` is a Conv2d with kernel = stride = patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (cos first, 256 dims) followed by an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding table; row `num_classes` is the null (unconditional) class when dropout is on."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """timm-style multi-head self-attention with a fused `qkv` (rows ordered q; k; v) and `proj`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x, spans).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, T, head_dim) each
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=spans.mask(x.device))
        return self.proj(x.transpose(1, 2).reshape(B, T, D), spans)


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor, spans: Spans) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x, spans)), spans)


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, conds: list[torch.Tensor], spans: Spans) -> torch.Tensor:
        """x (N, T, D); conds: one (N, D) conditioning vector per span."""
        mods = spans.per_token([self.adaLN_modulation(c) for c in conds])  # (N, 1 or T, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x, spans), shift_msa, scale_msa), spans)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x, spans), shift_mlp, scale_mlp), spans)
        return x


class FinalLayer(nn.Module):
    """Final adaLN modulation and the de-embedding `linear` (D -> p*p*out_channels)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def modulated(self, x: torch.Tensor, conds: list[torch.Tensor], spans: Spans) -> torch.Tensor:
        """Everything before the de-embedding `linear`, which depends on the patch size."""
        shift, scale = spans.per_token([self.adaLN_modulation(c) for c in conds]).chunk(2, dim=-1)
        return modulate(self.norm_final(x, spans), shift, scale)
