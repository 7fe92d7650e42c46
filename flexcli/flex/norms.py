"""Patch-size-dependent LayerNorm affines for shared mode (paper §3.1), initialised to identity."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchSizeLayerNorm(nn.Module):
    """DiT's affine-free LayerNorm followed by a (gamma_p, beta_p) affine for the active patch size."""

    def __init__(self, norm: nn.LayerNorm, patch_sizes: list[int], state):
        super().__init__()
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        self._state = state
        d = self.normalized_shape[-1]
        self.weight = nn.ParameterDict({f"p{p}": nn.Parameter(torch.ones(d)) for p in patch_sizes})
        self.bias = nn.ParameterDict({f"p{p}": nn.Parameter(torch.zeros(d)) for p in patch_sizes})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, self.normalized_shape, None, None, self.eps)  # == nn.LayerNorm(affine=False)
        key = f"p{self._state.patch_size}"
        if key not in self.weight:
            return x
        return x * self.weight[key] + self.bias[key]


def replace_norms(model: nn.Module, patch_sizes: list[int]) -> None:
    """Swap norm1/norm2 of every block and final_layer.norm_final for patch-size-dependent ones."""
    for block in model.blocks:
        block.norm1 = PatchSizeLayerNorm(block.norm1, patch_sizes, model.patch_state)
        block.norm2 = PatchSizeLayerNorm(block.norm2, patch_sizes, model.patch_state)
    fl = model.final_layer
    fl.norm_final = PatchSizeLayerNorm(fl.norm_final, patch_sizes, model.patch_state)
