"""How a weak patch size is initialised from the pretrained one (paper §3.1, App. C.2): PI-resize of the
tokenizer, up-sampling of the de-tokenizer, and token positions at patch centres. N-D throughout: a patch is
a tuple, (p_h, p_w) for images and (p_f, p_h, p_w) for video; an int p means (p, p).

Matrices act on a patch flattened row-major, one axis per patch dimension, and are built in float64:
* `bilinear_matrix(a, b)`: B with x_b = B x_a. Per axis, linear interpolation with half-pixel centres and no
  antialias (big_vision's `resample_patchemb`); the N-D map is the Kronecker product of the axes. Along an
  axis of size 1 -> 2 (video time) it repeats the value.
* `pi_resize_matrix(a, b)`: pinv(B^T), the tokenizer map. With w_b = M w_a, <B x, w_b> = <x, w_a> for every
  patch x when up-sampling (the PI-resize property). Along time (1 -> 2) this duplicates the kernel and halves
  it, so a clip whose frames repeat in pairs gives at (2, p, p) exactly the tokens of one frame at (1, p, p).
* The de-tokenizer uses B itself: the weak output is the up-sampling of what the powerful one gives (the pinv
  formula would scale outputs by 1/4, dit-facts §2.3).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

Patch = tuple[int, ...]


def as_patch(p: int | Patch, ndim: int | None = None) -> Patch:
    """4 -> (4, 4) for images (or `ndim` axes); tuples pass through, checked against `ndim` when given."""
    if isinstance(p, (int, np.integer)):
        return (int(p),) * (ndim or 2)
    p = tuple(int(v) for v in p)
    if ndim is not None and len(p) != ndim:
        raise ValueError(f"patch {p} has {len(p)} axes, the model's patches have {ndim}")
    return p


@lru_cache(maxsize=None)
def patch_key(p: int | Patch) -> str:
    """The name of a patch size in module and adapter names: 4 or (4, 4) -> "p4", (1, 2, 2) -> "p1x2x2"."""
    t = (p,) if isinstance(p, (int, np.integer)) else tuple(p)
    if len(set(t)) == 1 and len(t) <= 2:
        return f"p{t[0]}"
    return "p" + "x".join(str(v) for v in t)


def _bilinear_1d(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) linear interpolation matrix, align_corners=False."""
    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float64)
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): one basis vector each
    out = F.interpolate(eye, size=n_out, mode="linear", align_corners=False, antialias=False)
    return torch.empty(n_out, n_in, dtype=torch.float64).copy_(out[:, 0, :].T)  # row-major strides


def _clean(m: torch.Tensor) -> torch.Tensor:
    """Zero the round-off entries, so that exact 0/1 structure stays exact in float32."""
    return torch.where(m.abs() < 1e-12, torch.zeros_like(m), m)


@lru_cache(maxsize=None)
def bilinear_matrix(src: int | Patch, dst: int | Patch) -> torch.Tensor:
    src = as_patch(src)
    dst = as_patch(dst, len(src))
    m = torch.ones(1, 1, dtype=torch.float64)
    for a, b in zip(src, dst):
        m = torch.kron(m, _bilinear_1d(a, b))
    return _clean(m)


@lru_cache(maxsize=None)
def pi_resize_matrix(src: int | Patch, dst: int | Patch) -> torch.Tensor:
    """(n_dst, n_src) PI-resize map for tokenizer kernels: pinv(B^T)."""
    src = as_patch(src)
    if src == as_patch(dst, len(src)):
        return torch.eye(math.prod(src), dtype=torch.float64)
    return _clean(torch.linalg.pinv(bilinear_matrix(src, dst).T))


def underlying_projection(target: torch.Tensor, generic: torch.Tensor, lift: torch.Tensor) -> torch.Tensor:
    """Fixed projection Q_p from the underlying p' grid to size p for shared mode (§3.1).

    `generic` maps p' -> p, `lift` maps the pretrained size p0 -> p' (how the underlying weights are
    initialised) and `target` maps p0 -> p directly. Q_p = G + (T - G L) pinv(L) equals the generic resize
    outside the image of L and satisfies Q_p L = T, so at initialisation every size starts exactly at its
    direct resize from the pretrained weights (PI-resize / bilinear up-sampling), and Q_p0 L = I.
    """
    return _clean(generic + (target - generic @ lift) @ torch.linalg.pinv(lift))


def resize_kernel(weight: torch.Tensor, matrix: torch.Tensor, patch: int | Patch) -> torch.Tensor:
    """Tokenizer kernel (D, C, *p_src) -> (D, C, *p_dst) with w_dst = M w_src per (d, c) slice."""
    d, c = weight.shape[:2]
    flat = weight.reshape(d, c, -1)
    out = torch.einsum("dcm,nm->dcn", flat, matrix.to(flat))  # the weight's device and dtype
    return out.reshape(d, c, *as_patch(patch, weight.dim() - 2))


def resize_rows(weight: torch.Tensor, matrix: torch.Tensor, channels: int) -> torch.Tensor:
    """De-tokenizer weight (prod(p_src) * C, D) or bias -> prod(p_dst) rows; channel index fastest."""
    tail = weight.shape[1:]
    grouped = weight.reshape(-1, channels, *tail)  # (n_src, C, ...)
    out = torch.einsum("nm,mc...->nc...", matrix.to(weight), grouped)
    return out.reshape(-1, *tail)


# ---------------------------------------------------------------------------------------------------------
# Positions: a token of a larger patch sits at its centre in the pretrained token grid.
def grid_coordinates(grid: int, patch_size: int, base_patch_size: int) -> np.ndarray:
    """Centres of the `grid` tokens of size `patch_size` along one axis, in pretrained-token units.

    A token i covers pretrained tokens [i*r, (i+1)*r) with r = p / p0, so its centre is (i + 1/2) r - 1/2
    (for p=4 over p0=2: 2i + 0.5). At p = p0 this is the integer grid.
    """
    r = patch_size / base_patch_size
    return (np.arange(grid, dtype=np.float64) + 0.5) * r - 0.5


def patch_centres(grid: tuple[int, ...], patch: Patch, base: Patch) -> list[np.ndarray]:
    """Per-axis centre coordinates of a token grid of `patch` tokens over the `base` grid."""
    return [grid_coordinates(g, p, p0) for g, p, p0 in zip(grid, patch, base)]


def interpolate_table(table: torch.Tensor, base_grid: tuple[int, int], coords: list[np.ndarray]) -> torch.Tensor:
    """A learned (non-closed-form) 2-D positional table (T0, D) bilinearly evaluated at fractional
    (row, col) coordinates -> (len(rows) * len(cols), D), clamped at the border."""
    d = table.shape[-1]
    grid = table.float().reshape(*base_grid, d).permute(2, 0, 1).unsqueeze(0)  # (1, D, gh, gw)
    rows, cols = (torch.from_numpy(c / (g - 1) * 2 - 1).float() if g > 1 else torch.zeros(len(c))
                  for c, g in zip(coords, base_grid))  # in grid_sample's [-1, 1] units
    gy, gx = torch.meshgrid(rows, cols, indexing="ij")
    sample = F.grid_sample(grid, torch.stack([gx, gy], -1)[None], mode="bilinear", align_corners=True,
                           padding_mode="border")
    return sample[0].permute(1, 2, 0).reshape(-1, d)
