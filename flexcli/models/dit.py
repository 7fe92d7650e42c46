"""Class-conditional DiT (Peebles & Xie) with official parameter names: the first family on the flex core.

`forward(x, t, y, patch_size=None)` (from `FlexModel`) runs at the pretrained patch size or, once the model is
flexified (`flexcli.flex.core.flexify_model`), at any of its weak sizes. DiT supplies the family's parts:
its tokenizer `x_embedder.proj`, its sin-cos positions, the conditioning t_embedder(t) + y_embedder(y), its
adaLN-Zero blocks, and the final layer whose `linear` is the de-tokenizer.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from flexcli.flex.core import FlexModel, FlexSpec
from flexcli.flex.packing import Spans
from flexcli.flex.resize import interpolate_table, patch_centres, patch_key
from flexcli.models.configs import DiTConfig
from flexcli.models.layers import DiTBlock, FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder
from flexcli.models.posembed import sincos_2d


class DiT(FlexModel):
    family = "dit"
    flex_spec = FlexSpec(tokenizer="x_embedder.proj", detokenizer="final_layer.linear",
                         lora_targets=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
                         norms=("norm1", "norm2", "norm_final"))

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
        self.flex = None
        self.initialize_weights()

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

    # -- the family's parts (flexcli.flex.core.FlexModel) ---------------------------------------------------
    @property
    def base_patch(self) -> tuple[int, int]:
        return (self.config.patch_size, self.config.patch_size)

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents it denoises."""
        return (self.config.in_channels, self.config.input_size, self.config.input_size)

    def positions(self, patch: tuple, grid: tuple) -> torch.Tensor:
        if patch == self.base_patch:
            return self.pos_embed
        side = self.config.input_size
        if tuple(g * p for g, p in zip(grid, patch)) != (side, side):
            raise ValueError(f"weak patch sizes need the pretrained input size {side}")
        return getattr(self.flex, f"pos_{patch_key(patch)}")

    def weak_positions(self, patch: tuple) -> torch.Tensor:
        """The table at each token's centre in the pretrained grid -> (1, T_p, D): DiT's closed-form sin-cos
        there, or, for a table that is not sin-cos (fine-tuned or learned), bilinear interpolation of it."""
        side, d = self.config.input_size, self.config.hidden_size
        base_grid = side // self.config.patch_size
        ints = np.arange(base_grid, dtype=np.float64)
        rows, cols = patch_centres((side // patch[0], side // patch[1]), patch, self.base_patch)
        tol = max(1e-5, torch.finfo(self.pos_embed.dtype).eps)  # a half-precision sin-cos table is still one
        if torch.allclose(self.pos_embed[0].float().cpu(), torch.from_numpy(sincos_2d(d, ints, ints)), atol=tol):
            return torch.from_numpy(sincos_2d(d, rows, cols)).unsqueeze(0)
        return interpolate_table(self.pos_embed[0].detach().cpu(), (base_grid, base_grid), [rows, cols]).unsqueeze(0)

    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t (N,) original timesteps 0..999, y (N,) labels (num_classes = null) -> c (N, D)."""
        return self.t_embedder(t) + self.y_embedder(y, self.training)

    def run_blocks(self, h: torch.Tensor, conds: list[torch.Tensor], spans: Spans) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, conds, spans)  # (N, T, D)
        return h

    def head(self, h: torch.Tensor, conds: list[torch.Tensor], spans: Spans) -> torch.Tensor:
        return self.final_layer.modulated(h, conds, spans)

    # ---------------------------------------------------------------------------------------------------------
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
