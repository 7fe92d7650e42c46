"""Class-conditional DiT (Peebles & Xie) with official parameter names, and a patch-size-aware forward.

`forward(x, t, y, patch_size=None)` runs at the pretrained patch size or, once the model is flexified
(`flexcli.flex.flexify_model`), at any weak patch size. Everything that depends on the patch size goes
through `self.flex` (a `FlexAdapter`); a plain DiT has `flex = None` and only its pretrained size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from flexcli.models.configs import DiTConfig
from flexcli.models.layers import DiTBlock, FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder
from flexcli.models.posembed import sincos_2d


class PatchState:
    """The patch size of the forward pass in flight, read by the patch-size-dependent sub-layers."""

    def __init__(self) -> None:
        self.patch_size: int | None = None


class DiT(nn.Module):
    family = "dit"

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(config.num_classes, D, config.class_dropout_prob)
        # Fixed sin-cos table, stored as a frozen Parameter exactly as in the released checkpoints.
        self.pos_embed = nn.Parameter(torch.zeros(1, config.tokens(), D), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(D, config.num_heads, config.mlp_ratio) for _ in range(config.depth)])
        self.final_layer = FinalLayer(D, config.patch_size, config.out_channels)
        self.flex: nn.Module | None = None
        self.patch_state = PatchState()
        self.initialize_weights()

    # ----------------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """DiT's initialisation (adaLN-Zero): only matters for freshly built models."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        grid = self.config.input_size // self.config.patch_size
        coords = np.arange(grid, dtype=np.float64)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.config.hidden_size, coords, coords)).unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    # ----------------------------------------------------------------------------------------------
    @property
    def patch_sizes(self) -> list[int]:
        """Every patch size this model runs at, the pretrained one first."""
        weak = self.flex.weak_patch_sizes if self.flex is not None else []
        return [self.config.patch_size, *weak]

    def resolve_patch_size(self, patch_size: int | None, x: torch.Tensor) -> int:
        p = self.config.patch_size if patch_size is None else int(patch_size)
        if p not in self.patch_sizes:
            raise ValueError(f"patch size {p} is not supported by this model (supported: {self.patch_sizes})")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input of spatial size {tuple(x.shape[-2:])} is not divisible by patch size {p}")
        return p

    @contextlib.contextmanager
    def patch_mode(self, patch_size: int):
        """Activate the sub-layers (LoRAs, LayerNorm affines) that belong to `patch_size`."""
        previous = self.patch_state.patch_size
        self.patch_state.patch_size = patch_size
        if self.flex is not None:
            self.flex.activate(self, patch_size)
        try:
            yield
        finally:
            self.patch_state.patch_size = previous
            if self.flex is not None and previous is not None:
                self.flex.activate(self, previous)

    # ----------------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, patch_size: int) -> torch.Tensor:
        """(N, C, H, W) latents -> (N, T, D) tokens with positional (and patch-size) embeddings."""
        if self.flex is None:
            return self.x_embedder(x) + self.pos_embed
        return self.flex.embed(self, x, patch_size)

    def de_embed(self, h: torch.Tensor, patch_size: int) -> torch.Tensor:
        """(N, T, D) -> (N, T, p*p*out_channels)."""
        if self.flex is None:
            return self.final_layer.linear(h)
        return self.flex.de_embed(self, h, patch_size)

    def unpatchify(self, x: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W); the final linear's output index is (pi*p + qj)*C + c."""
        c, p = self.config.out_channels, patch_size
        h, w = height // p, width // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, patch_size: int | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, C, H, W) latents, t: (N,) original timesteps 0..999, y: (N,) labels (num_classes = null).

        Returns (N, out_channels, H, W): epsilon, then the learned-sigma channels if `learn_sigma`.
        """
        p = self.resolve_patch_size(patch_size, x)
        with self.patch_mode(p):
            h = self.embed(x, p)  # (N, T, D)
            c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, D)
            for block in self.blocks:
                h = block(h, c, attn_mask)  # (N, T, D)
            h = self.final_layer.modulated(h, c)  # (N, T, D)
            h = self.de_embed(h, p)  # (N, T, p*p*out_channels)
        return self.unpatchify(h, p, x.shape[-2], x.shape[-1])

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         patch_size: int | None = None, guided_channels: int | None = 3) -> torch.Tensor:
        """DiT's classifier-free guidance over a [cond; uncond] batch.

        `guided_channels=3` reproduces the released FID numbers (dit-facts pitfall 4); None guides all eps channels.
        """
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y, patch_size)
        n = guided_channels or self.config.in_channels
        eps, rest = out[:, :n], out[:, n:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)
