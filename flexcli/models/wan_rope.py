"""Wan's 3-D rotary position embedding evaluated at arbitrary, possibly fractional, token positions (issue #14).

diffusers' `WanRotaryPosEmbed` splits a head's dims into time / height / width parts, h = w = 2 * (head_dim // 6)
and t = the rest (Wan-Video/Wan2.1 splits the head_dim / 2 complex pairs the same way: c - 2 (c // 3), c // 3,
c // 3), with frequencies theta^(-2j / d_axis), theta = 10000, and looks them up in a TABLE at the integer token
indices. A flexified model's larger patches put a token at the centre of the pretrained tokens it covers, a
fractional position, so here the angles are computed from positions: at integer positions the result is
bit-identical to diffusers' table (same float64 arithmetic, cast to float32 at the end).

Output format (diffusers'): `(freqs_cos, freqs_sin)`, each (1, N, 1, head_dim) float32, every frequency
repeated twice (interleaved pairs), tokens in the patch embedding's flatten order (frame-major, then height,
then width).
"""
from __future__ import annotations

import torch

WAN_ROPE_THETA = 10000.0


def rope_axis_dims(attention_head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) shares of a head's dims, as diffusers' WanRotaryPosEmbed splits them."""
    h_dim = w_dim = 2 * (attention_head_dim // 6)
    t_dim = attention_head_dim - h_dim - w_dim
    if min(t_dim, h_dim) <= 0 or t_dim % 2 or attention_head_dim % 2:
        raise ValueError(f"attention_head_dim {attention_head_dim} cannot be split into even t/h/w rotary parts")
    return t_dim, h_dim, w_dim


def axis_frequencies(dim: int, theta: float = WAN_ROPE_THETA) -> torch.Tensor:
    """(dim / 2,) float64 inverse frequencies theta^(-2j / dim), as diffusers' get_1d_rotary_pos_embed."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def _axis_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.outer(positions.to(torch.float64), axis_frequencies(dim, theta))  # (N, dim / 2)
    cos = angles.cos().repeat_interleave(2, dim=1).float()  # (N, dim), pairs interleaved
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos, sin


def rotary_at_positions(pos_t: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor, attention_head_dim: int,
                        theta: float = WAN_ROPE_THETA) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary (cos, sin), each (1, N, 1, head_dim) float32, for N tokens at per-token positions pos_* (N,)
    in units of the pretrained token grid (integers there; fractional for patch centres)."""
    if not pos_t.shape == pos_h.shape == pos_w.shape or pos_t.dim() != 1:
        raise ValueError("pos_t, pos_h and pos_w must be 1-D and of one length (one entry per token)")
    parts = [_axis_cos_sin(p, d, theta) for p, d in zip((pos_t, pos_h, pos_w), rope_axis_dims(attention_head_dim))]
    cos = torch.cat([c for c, _ in parts], dim=1)  # (N, head_dim): t part, then h, then w
    sin = torch.cat([s for _, s in parts], dim=1)
    return cos[None, :, None, :], sin[None, :, None, :]


def patch_centres(n_tokens: int, ratio: float) -> torch.Tensor:
    """Centres of n_tokens consecutive patches, each `ratio` pretrained tokens long, in pretrained-token units:
    (i + 1/2) * ratio - 1/2 (the mean of the pretrained positions a patch covers; i itself when ratio is 1)."""
    i = torch.arange(n_tokens, dtype=torch.float64)
    return (i + 0.5) * ratio - 0.5


def grid_positions(token_grid: tuple[int, int, int], patch_size: tuple[int, int, int],
                   base_patch_size: tuple[int, int, int] = (1, 2, 2)) -> tuple[torch.Tensor, ...]:
    """Per-token (t, h, w) positions (each (N,), N = prod(token_grid)) of a (F', H', W') token grid made with
    `patch_size`, in units of the grid the pretrained `base_patch_size` makes (ratio r = p_axis / p0_axis)."""
    axes = [patch_centres(n, p / p0) for n, p, p0 in zip(token_grid, patch_size, base_patch_size)]
    t, h, w = torch.meshgrid(*axes, indexing="ij")  # (F', H', W') each
    return t.reshape(-1), h.reshape(-1), w.reshape(-1)


def wan_rotary_embedding(latent_shape: tuple[int, int, int], attention_head_dim: int,
                         patch_size: tuple[int, int, int] = (1, 2, 2),
                         base_patch_size: tuple[int, int, int] = (1, 2, 2),
                         theta: float = WAN_ROPE_THETA) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary embedding of a (F, H, W) latent patchified with `patch_size`, tokens at their patch centres in
    the pretrained grid; equals diffusers' WanRotaryPosEmbed output when patch_size == base_patch_size."""
    if any(n % p for n, p in zip(latent_shape, patch_size)):
        raise ValueError(f"latent {tuple(latent_shape)} is not divisible by the patch size {tuple(patch_size)}")
    token_grid = tuple(n // p for n, p in zip(latent_shape, patch_size))
    return rotary_at_positions(*grid_positions(token_grid, patch_size, base_patch_size), attention_head_dim, theta)
