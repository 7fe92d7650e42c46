"""Sequence packing (paper §3.4, App. B.2, Fig. 12): token sequences made with different patch sizes share one
row, and attention is block-diagonal over them.

`Spans` is the token layout of one forward pass: consecutive runs of tokens, each made with one patch size.
A plain forward pass has one span. A packed one has several, e.g. image n's conditional tokens at p=2 followed
by its guidance tokens at p=4 (Fig. 12's approach 4). Every patch-size-dependent layer takes the spans as an
argument and applies its own size's parameters to each run; attention takes `spans.mask()` (None for one span).
Rotary families read each run's token grid (`grids`) to place its tokens at their patch centres.
Computed densely, masked attention costs (sum T)^2 per row, not sum T^2: the FLOPs model counts both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class Spans:
    sizes: tuple  # the patch size of each run
    lengths: tuple[int, ...]  # the number of tokens of each run
    grids: tuple = ()  # the token grid of each run ((F', H', W') for video), where the caller knows it

    @classmethod
    def single(cls, size, length: int, grid: tuple | None = None) -> "Spans":
        return cls((size,), (int(length),), () if grid is None else (tuple(grid),))

    @property
    def packed(self) -> bool:
        return len(self.lengths) > 1

    @property
    def bounds(self) -> list[tuple[int, int]]:
        out, start = [], 0
        for n in self.lengths:
            out.append((start, start + n))
            start += n
        return out

    def mask(self, device=None) -> torch.Tensor | None:
        """(T, T) boolean block-diagonal mask (True = may attend), or None for one span."""
        if not self.packed:
            return None
        return block_diagonal_mask(list(self.lengths), device)

    def cross_mask(self, keys: "Spans", device=None) -> torch.Tensor | None:
        """(T_q, T_k) mask pairing query run i with key run i (cross-attention to per-run text), or None."""
        if not self.packed:
            return None
        q = torch.cat([torch.full((n,), k) for k, n in enumerate(self.lengths)])
        kv = torch.cat([torch.full((n,), k) for k, n in enumerate(keys.lengths)])
        return (q[:, None] == kv[None, :]).to(device)

    def per_token(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One (N, K) vector per run -> (N, 1, K) for one run, else (N, T, K) with each run's vector repeated."""
        if not self.packed:
            return vectors[0].unsqueeze(1)
        return torch.cat([v.unsqueeze(1).expand(-1, n, -1) for v, n in zip(vectors, self.lengths)], dim=1)

    def map(self, fn: Callable[[torch.Tensor, object], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """fn(tokens of one run, its patch size) for every run of x (N, T, ...), concatenated along T."""
        if not self.packed:
            return fn(x, self.sizes[0])
        return torch.cat([fn(x[:, a:b], p) for (a, b), p in zip(self.bounds, self.sizes)], dim=1)


def block_diagonal_mask(lengths: list[int], device=None) -> torch.Tensor:
    """(T, T) boolean mask, True where attention is allowed (within a run)."""
    ids = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(lengths)]).to(device)
    return ids[:, None] == ids[None, :]
