"""FlexiDiT: the patch-size-dependent parts added to a pretrained DiT (paper §3.1, §3.2, App. C.2).

Two modes:
* "lora" (§3.2): the base is frozen; each weak size p gets its own embedding conv, de-embedding linear,
  patch-size embedding and peft LoRAs. The pretrained size runs the untouched original layers.
* "shared" (§3.1): one underlying embedding/de-embedding on a p'=4 grid, projected to each size by fixed
  matrices; a patch-size embedding (zero for the pretrained size) and patch-size-dependent LayerNorms.
  The underlying weights are stored as the lift of the pretrained weights plus a trainable delta
  (w' = L w_p0 + delta), so the pretrained size computes w_p0 + Q_p0 delta and is bit-exact at init.

Initialisation for every weak size p (from the pretrained p0, never chained, dit-facts pitfall 7):
embedding by PI-resize, de-embedding by bilinear upsampling of the powerful output, positional
embeddings evaluated at each token's centre in the pretrained grid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from flexcli.flex import lora as lora_lib
from flexcli.flex.norms import replace_norms
from flexcli.flex.patch_resize import (
    bilinear_matrix, pi_resize_matrix, resize_kernel, resize_rows, underlying_projection)
from flexcli.models.posembed import grid_coordinates, sincos_2d

MODES = ("lora", "shared")
UNDERLYING_PATCH = 4  # p' of §3.1 / App. C.2


def positional_table(pos_embed: torch.Tensor, input_size: int, base_patch: int, patch: int) -> torch.Tensor:
    """Positional embeddings for `patch`, at each token's position in the pretrained grid -> (1, T_p, D).

    DiT's table is the closed-form sin-cos, evaluated at fractional coordinates. A table that is not
    sin-cos (fine-tuned or learned) is bilinearly interpolated at the same coordinates instead.
    """
    d = pos_embed.shape[-1]
    base_grid, grid = input_size // base_patch, input_size // patch
    ints = np.arange(base_grid, dtype=np.float64)
    reference = torch.from_numpy(sincos_2d(d, ints, ints))
    coords = grid_coordinates(grid, patch, base_patch)
    if torch.allclose(pos_embed[0].float().cpu(), reference, atol=1e-5):
        return torch.from_numpy(sincos_2d(d, coords, coords)).unsqueeze(0)
    table = pos_embed[0].float().reshape(base_grid, base_grid, d).permute(2, 0, 1).unsqueeze(0)  # (1, D, g, g)
    norm = torch.from_numpy(coords / (base_grid - 1) * 2 - 1).float() if base_grid > 1 else torch.zeros(grid)
    gy, gx = torch.meshgrid(norm, norm, indexing="ij")
    sample = F.grid_sample(table, torch.stack([gx, gy], -1)[None], mode="bilinear", align_corners=True,
                           padding_mode="border")
    return sample[0].permute(1, 2, 0).reshape(1, grid * grid, d)


class FlexAdapter(nn.Module):
    def __init__(self, model: nn.Module, weak_patch_sizes: list[int], mode: str = "lora",
                 lora_rank: int = 32, lora_alpha: float | None = None):
        super().__init__()
        cfg = model.config
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.base_patch = cfg.patch_size
        self.weak_patch_sizes = sorted(int(p) for p in weak_patch_sizes)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = float(lora_alpha if lora_alpha is not None else lora_rank)
        self.out_channels = cfg.out_channels
        self._lora_layers = None
        D, C = cfg.hidden_size, cfg.in_channels
        # Patch-size embedding added to every token; none (zero) for the pretrained size.
        self.size_embed = nn.ParameterDict({f"p{p}": nn.Parameter(torch.zeros(D)) for p in self.weak_patch_sizes})
        for p in self.weak_patch_sizes:
            self.register_buffer(f"pos_p{p}", positional_table(model.pos_embed.data, cfg.input_size,
                                                              cfg.patch_size, p), persistent=False)
        w_embed, b_embed = model.x_embedder.proj.weight.data, model.x_embedder.proj.bias.data
        w_de, b_de = model.final_layer.linear.weight.data, model.final_layer.linear.bias.data
        if mode == "lora":
            self.embed_layers = nn.ModuleDict()
            self.de_embed_layers = nn.ModuleDict()
            for p in self.weak_patch_sizes:
                conv = nn.Conv2d(C, D, kernel_size=p, stride=p)
                conv.weight.data.copy_(resize_kernel(w_embed.double(), pi_resize_matrix(cfg.patch_size, p), p))
                conv.bias.data.copy_(b_embed)
                lin = nn.Linear(D, p * p * cfg.out_channels)
                up = bilinear_matrix(cfg.patch_size, p)
                lin.weight.data.copy_(resize_rows(w_de.double(), up, cfg.out_channels))
                lin.bias.data.copy_(resize_rows(b_de.double(), up, cfg.out_channels))
                self.embed_layers[f"p{p}"] = conv
                self.de_embed_layers[f"p{p}"] = lin
            for param in model.parameters():
                param.requires_grad_(False)
            lora_lib.inject_loras(model, self.weak_patch_sizes, self.lora_rank, self.lora_alpha)
            for name, param in model.named_parameters():
                param.requires_grad_(".lora_" in name)
        else:
            u, p0 = UNDERLYING_PATCH, cfg.patch_size
            self.embed_delta = nn.Parameter(torch.zeros(D, C, u, u))
            self.de_embed_weight_delta = nn.Parameter(torch.zeros(u * u * cfg.out_channels, D))
            self.de_embed_bias_delta = nn.Parameter(torch.zeros(u * u * cfg.out_channels))
            for p in self.patch_sizes:
                q_embed = underlying_projection(pi_resize_matrix(p0, p), pi_resize_matrix(u, p), pi_resize_matrix(p0, u))
                q_de = underlying_projection(bilinear_matrix(p0, p), bilinear_matrix(u, p), bilinear_matrix(p0, u))
                self.register_buffer(f"embed_target_p{p}", pi_resize_matrix(p0, p).float(), persistent=False)
                self.register_buffer(f"embed_q_p{p}", q_embed.float(), persistent=False)
                self.register_buffer(f"de_embed_target_p{p}", bilinear_matrix(p0, p).float(), persistent=False)
                self.register_buffer(f"de_embed_q_p{p}", q_de.float(), persistent=False)
            # The pretrained embed/de-embed weights only seed the underlying ones: the deltas train instead.
            for param in (model.x_embedder.proj.weight, model.final_layer.linear.weight, model.final_layer.linear.bias):
                param.requires_grad_(False)
            replace_norms(model, self.patch_sizes)

    @property
    def patch_sizes(self) -> list[int]:
        return [self.base_patch, *self.weak_patch_sizes]

    def describe(self) -> dict:
        d = {"mode": self.mode, "patch_sizes": self.patch_sizes, "base_patch_size": self.base_patch}
        if self.mode == "lora":
            d["lora"] = {"rank": self.lora_rank, "alpha": self.lora_alpha, "targets": list(lora_lib.LORA_TARGETS)}
        else:
            d["underlying_patch_size"] = UNDERLYING_PATCH
        return d

    # ----------------------------------------------------------------------------------------------
    def activate(self, model: nn.Module, patch_size: int) -> None:
        if self.mode == "lora":
            if self._lora_layers is None:  # looked up once: named_modules() on every forward costs time
                self._lora_layers = [m for _, m in lora_lib.lora_layers(model)]
            lora_lib.activate_lora(self._lora_layers, patch_size)

    def forget_lora_layers(self) -> None:
        """Call after replacing LoRA layers (merging) so that `activate` looks them up again."""
        self._lora_layers = None

    def embedding_weights(self, model: nn.Module, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        proj = model.x_embedder.proj
        if self.mode == "lora":
            conv = proj if p == self.base_patch else self.embed_layers[f"p{p}"]
            return conv.weight, conv.bias
        w0 = proj.weight
        w = w0 if p == self.base_patch else resize_kernel(w0, getattr(self, f"embed_target_p{p}"), p)
        return w + resize_kernel(self.embed_delta, getattr(self, f"embed_q_p{p}"), p), proj.bias

    def de_embedding_weights(self, model: nn.Module, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        lin = model.final_layer.linear
        if self.mode == "lora":
            layer = lin if p == self.base_patch else self.de_embed_layers[f"p{p}"]
            return layer.weight, layer.bias
        c = self.out_channels
        t, q = getattr(self, f"de_embed_target_p{p}"), getattr(self, f"de_embed_q_p{p}")
        w, b = (lin.weight, lin.bias) if p == self.base_patch else (resize_rows(lin.weight, t, c), resize_rows(lin.bias, t, c))
        return w + resize_rows(self.de_embed_weight_delta, q, c), b + resize_rows(self.de_embed_bias_delta, q, c)

    def embed(self, model: nn.Module, x: torch.Tensor, p: int) -> torch.Tensor:
        """(N, C, H, W) -> (N, T_p, D): tokens + positional embedding (+ patch-size embedding)."""
        if self.mode == "lora" and p == self.base_patch:
            return model.x_embedder(x) + model.pos_embed  # the original path, untouched
        w, b = self.embedding_weights(model, p)
        h = F.conv2d(x, w, b, stride=p).flatten(2).transpose(1, 2)
        if p == self.base_patch:
            return h + model.pos_embed
        if x.shape[-2] != model.config.input_size or x.shape[-1] != model.config.input_size:
            raise ValueError(f"weak patch sizes need the pretrained input size {model.config.input_size}")
        return h + getattr(self, f"pos_p{p}").to(h.dtype) + self.size_embed[f"p{p}"]

    def de_embed(self, model: nn.Module, h: torch.Tensor, p: int) -> torch.Tensor:
        """(N, T_p, D) -> (N, T_p, p*p*out_channels)."""
        if self.mode == "lora" and p == self.base_patch:
            return model.final_layer.linear(h)
        w, b = self.de_embedding_weights(model, p)
        return F.linear(h, w, b)


def flexify_model(model: nn.Module, weak_patch_sizes: list[int], mode: str = "lora", lora_rank: int = 32,
                  lora_alpha: float | None = None) -> nn.Module:
    """Turn a plain DiT into a FlexiDiT in place (and return it)."""
    if model.flex is not None:
        raise ValueError("model is already flexified")
    model.flex = FlexAdapter(model, weak_patch_sizes, mode, lora_rank, lora_alpha)
    return model


def added_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters flexify added (tokenizers, size embeddings, LoRAs, LayerNorm affines)."""
    from flexcli.flex.norms import PatchSizeLayerNorm

    names = {n for n, _ in model.named_parameters() if n.startswith("flex.") or ".lora_" in n}
    for mname, module in model.named_modules():
        if isinstance(module, PatchSizeLayerNorm):
            names |= {f"{mname}.{n}" for n, _ in module.named_parameters()}
    return names
