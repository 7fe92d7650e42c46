"""Fixed resize maps between patch sizes (FlexiViT PI-resize; paper §3.1 and App. C.2).

Matrices act on a patch flattened row-major, one spatial axis per patch dimension, so they work for 2-D
patches (p, p) and 3-D video patches (p_f, p_h, p_w) alike. All maths runs in float64.

* `bilinear_matrix(a, b)`: B with x_b = B x_a, bilinear resize (half-pixel centres, no antialias), as in
  big_vision's `resample_patchemb`.
* `pi_resize_matrix(a, b)`: the embedding map pinv(B^T): with w_b = M w_a, <B x, w_b> = <x, w_a> for every
  patch x when upsampling (the PI-resize property).
* De-embedding uses B itself: the weak output is the bilinear upsampling of the powerful output
  (dit-facts §2.3: the pinv formula would scale outputs by 1/4).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

Patch = tuple[int, ...]


def _as_patch(p: int | Patch, ndim: int = 2) -> Patch:
    return (p,) * ndim if isinstance(p, int) else tuple(p)


def _bilinear_1d(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) linear interpolation matrix, align_corners=False."""
    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float64)
    eye = torch.eye(n_in, dtype=torch.float64).unsqueeze(1)  # (n_in, 1, n_in): one basis vector each
    out = F.interpolate(eye, size=n_out, mode="linear", align_corners=False, antialias=False)
    return out[:, 0, :].T.contiguous()


def _clean(m: torch.Tensor) -> torch.Tensor:
    """Zero the round-off entries, so that exact 0/1 structure stays exact in float32."""
    return torch.where(m.abs() < 1e-12, torch.zeros_like(m), m)


@lru_cache(maxsize=None)
def bilinear_matrix(src: int | Patch, dst: int | Patch) -> torch.Tensor:
    src, dst = _as_patch(src), _as_patch(dst, len(_as_patch(src)))
    m = torch.ones(1, 1, dtype=torch.float64)
    for a, b in zip(src, dst):
        m = torch.kron(m, _bilinear_1d(a, b))
    return _clean(m)


@lru_cache(maxsize=None)
def pi_resize_matrix(src: int | Patch, dst: int | Patch) -> torch.Tensor:
    """(n_dst, n_src) PI-resize map for embedding kernels: pinv(B^T)."""
    if _as_patch(src) == _as_patch(dst, len(_as_patch(src))):
        return torch.eye(int(torch.tensor(_as_patch(src)).prod()), dtype=torch.float64)
    return _clean(torch.linalg.pinv(bilinear_matrix(src, dst).T))


def underlying_projection(target: torch.Tensor, generic: torch.Tensor, lift: torch.Tensor) -> torch.Tensor:
    """Fixed projection Q_p from the underlying p' grid to size p for shared mode (§3.1).

    `generic` maps p' -> p, `lift` maps the pretrained size p0 -> p' (how the underlying weights are
    initialised) and `target` maps p0 -> p directly. Q_p = G + (T - G L) pinv(L) equals the generic resize
    outside the image of L and satisfies Q_p L = T, so at initialisation every size starts exactly at its
    direct resize from the pretrained weights (PI-resize / bilinear upsampling), and Q_p0 L = I.
    """
    return _clean(generic + (target - generic @ lift) @ torch.linalg.pinv(lift))


def resize_kernel(weight: torch.Tensor, matrix: torch.Tensor, patch: int | Patch) -> torch.Tensor:
    """Embedding conv weight (D, C, *p_src) -> (D, C, *p_dst) with w_dst = M w_src per (d, c) slice."""
    d, c = weight.shape[:2]
    flat = weight.reshape(d, c, -1)
    out = torch.einsum("dcm,nm->dcn", flat, matrix.to(flat.dtype))
    return out.reshape(d, c, *_as_patch(patch, weight.dim() - 2))


def resize_rows(weight: torch.Tensor, matrix: torch.Tensor, channels: int) -> torch.Tensor:
    """De-embedding weight (p_src^2 * C, D) or bias (p_src^2 * C,) -> p_dst rows; channel index fastest."""
    tail = weight.shape[1:]
    grouped = weight.reshape(-1, channels, *tail)  # (n_src, C, ...)
    out = torch.einsum("nm,mc...->nc...", matrix.to(weight.dtype), grouped)
    return out.reshape(-1, *tail)
