"""2-D sin-cos positional embeddings (MAE/DiT convention), at integer or fractional grid coordinates."""
from __future__ import annotations

import numpy as np


def sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, embed_dim): [sin(pos*w), cos(pos*w)], w_k = 1/10000^(k/(embed_dim/2))."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Table for the grid rows x cols (row-major tokens) -> (len(rows)*len(cols), embed_dim), float32.

    As in DiT: dims [0, D/2) encode the column (x), dims [D/2, D) the row (y) (dit-facts pitfall 1).
    """
    col_grid, row_grid = np.meshgrid(cols, rows)  # (H, W) each; token index = row * W + col
    emb_col = sincos_1d(embed_dim // 2, col_grid)
    emb_row = sincos_1d(embed_dim // 2, row_grid)
    return np.concatenate([emb_col, emb_row], axis=1).astype(np.float32)


def grid_coordinates(grid: int, patch_size: int, base_patch_size: int) -> np.ndarray:
    """Centres of the `grid` tokens of size `patch_size`, in units of the pretrained token grid.

    A token i covers pretrained tokens [i*r, (i+1)*r) with r = p / p0, so its centre is (i + 1/2) r - 1/2
    (for p=4 over p0=2: 2i + 0.5). At p = p0 this is the integer grid.
    """
    r = patch_size / base_patch_size
    return (np.arange(grid, dtype=np.float64) + 0.5) * r - 0.5
