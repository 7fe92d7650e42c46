"""Tiny random PixArt transformers (diffusers) and a reference forward in the ORIGINAL PixArt layout.

`original_forward` transcribes PixArt-alpha's `PixArt.forward` / `PixArtMS.forward` (diffusion/model/nets/
PixArt.py, PixArtMS.py, PixArt_blocks.py) on original-named tensors, with plain attention instead of xformers:
the caption mask drops padded tokens exactly (the release packs captions with a BlockDiagonalMask).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def tiny_pixart(sample_size: int = 8, heads: int = 2, head_dim: int = 8, layers: int = 2, caption_channels: int = 16,
                seed: int = 0, **overrides):
    """A diffusers PixArtTransformer2DModel with every weight random (normal, std 0.05)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=heads * head_dim, sample_size=sample_size, patch_size=2, caption_channels=caption_channels,
        **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def _timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos first (PixArt_blocks.TimestepEmbedder)


def _mlp(sd, pre, x, act):
    return F.linear(act(F.linear(x, sd[f"{pre}.0.weight"], sd[f"{pre}.0.bias"])), sd[f"{pre}.2.weight"],
                    sd[f"{pre}.2.bias"])


def _attention(q, k, v, keep=None):
    """q (B, N, H, d), k/v (B, L, H, d), keep (B, L) bool -> (B, N, H*d)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=None if keep is None else keep[:, None, None, :])
    return out.transpose(1, 2).flatten(2)


def original_forward(sd: dict, x, t, y, mask, heads: int, hw=None, ar=None):
    """PixArt(-MS) forward on original keys. x (B, C, H, W), t (B,), y (B, L, caption_channels), mask (B, L)."""
    gelu = lambda z: F.gelu(z, approximate="tanh")  # noqa: E731
    w = sd["x_embedder.proj.weight"]
    p, dim = w.shape[-1], w.shape[0]
    b, _, h, wd = x.shape
    tokens = F.conv2d(x, w, sd["x_embedder.proj.bias"], stride=p).flatten(2).transpose(1, 2) + sd["pos_embed"]
    temb = _mlp(sd, "t_embedder.mlp", _timestep_embedding(t), F.silu)  # (B, D)
    if hw is not None:  # PixArtMS micro-conditions: SizeEmbedder over each of (h, w), and the aspect ratio
        size = _mlp(sd, "csize_embedder.mlp", _timestep_embedding(hw.flatten()), F.silu).reshape(b, -1)
        ratio = _mlp(sd, "ar_embedder.mlp", _timestep_embedding(ar.flatten()), F.silu).reshape(b, -1)
        temb = temb + torch.cat([size, ratio], dim=1)
    t0 = F.linear(F.silu(temb), sd["t_block.1.weight"], sd["t_block.1.bias"])  # (B, 6D)
    cap = F.linear(gelu(F.linear(y, sd["y_embedder.y_proj.fc1.weight"], sd["y_embedder.y_proj.fc1.bias"])),
                   sd["y_embedder.y_proj.fc2.weight"], sd["y_embedder.y_proj.fc2.bias"])  # (B, L, D)
    keep = mask.bool()
    ln = lambda z: F.layer_norm(z, (dim,), eps=1e-6)  # noqa: E731
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n_blocks):
        pre = f"blocks.{i}"
        mods = (sd[f"{pre}.scale_shift_table"][None] + t0.reshape(b, 6, -1)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        modulated = ln(tokens) * (1 + scale_msa) + shift_msa
        qkv = F.linear(modulated, sd[f"{pre}.attn.qkv.weight"], sd[f"{pre}.attn.qkv.bias"])
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).unbind(2)
        attn = F.linear(_attention(q, k, v), sd[f"{pre}.attn.proj.weight"], sd[f"{pre}.attn.proj.bias"])
        tokens = tokens + gate_msa * attn
        q = F.linear(tokens, sd[f"{pre}.cross_attn.q_linear.weight"], sd[f"{pre}.cross_attn.q_linear.bias"])
        kv = F.linear(cap, sd[f"{pre}.cross_attn.kv_linear.weight"], sd[f"{pre}.cross_attn.kv_linear.bias"])
        k, v = kv.view(b, -1, 2, heads, dim // heads).unbind(2)
        cross = _attention(q.view(b, -1, heads, dim // heads), k, v, keep)
        tokens = tokens + F.linear(cross, sd[f"{pre}.cross_attn.proj.weight"], sd[f"{pre}.cross_attn.proj.bias"])
        hidden = ln(tokens) * (1 + scale_mlp) + shift_mlp
        hidden = F.linear(gelu(F.linear(hidden, sd[f"{pre}.mlp.fc1.weight"], sd[f"{pre}.mlp.fc1.bias"])),
                          sd[f"{pre}.mlp.fc2.weight"], sd[f"{pre}.mlp.fc2.bias"])
        tokens = tokens + gate_mlp * hidden
    shift, scale = (sd["final_layer.scale_shift_table"][None] + temb[:, None]).chunk(2, dim=1)
    out = F.linear(ln(tokens) * (1 + scale) + shift, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    c = out.shape[-1] // (p * p)
    out = out.reshape(b, h // p, wd // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, c, h, wd)
