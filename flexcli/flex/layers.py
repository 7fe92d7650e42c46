"""The layers inside the transformer blocks that depend on the patch size (paper §3.1, §3.2).

Each takes the token spans (`flexcli.flex.packing.Spans`) as an explicit argument and applies, to every run of
tokens, the parameters of that run's patch size. Nothing holds a "current" patch size.

* `Linear`, `LayerNorm`: what a family's blocks are built from. They accept the spans and ignore them, so a
  pretrained model is unchanged; flexify swaps them for the per-size versions below.
* `LoRALinear` (LoRA mode, §3.2): a real peft LoRA layer (peft creates and initialises it, and its adapters
  "p4", "p8", ... keep peft's layout for export) whose forward picks the adapter of each run's patch size. The
  pretrained size has no adapter, so it runs exactly the base layer: the powerful mode is bit-identical.
* `MergedLinear`: one merged weight W + BA per weak size, for zero-overhead inference.
* `SizeLayerNorm` (shared mode, §3.1): the pretrained affine-free LayerNorm, then a (gamma_p, beta_p) affine
  per patch size, initialised to the identity.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft.tuners.lora import Linear as PeftLoraLinear

from flexcli.flex.packing import Spans
from flexcli.flex.resize import patch_key


class Linear(nn.Linear):
    """nn.Linear that accepts the token spans: the layer type LoRAs target."""

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that accepts the token spans: the layer type shared mode gives per-size affines."""

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        return super().forward(x)


class LoRALinear(PeftLoraLinear):
    """peft's LoRA linear layer, with the adapter chosen per call by the patch size of each run of tokens."""

    def _delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        x = x.to(self.lora_A[name].weight.dtype)
        return self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        base = self.base_layer
        out = F.linear(x, base.weight, base.bias)  # == base(x), without a second module call per layer
        if spans is None:
            return out
        if not spans.packed:
            name = patch_key(spans.sizes[0])
            return out + self._delta(x, name) if name in self.lora_A else out
        names = [patch_key(p) for p in spans.sizes]
        if not any(n in self.lora_A for n in names):
            return out
        pieces = [out[:, a:b] + self._delta(x[:, a:b], n) if n in self.lora_A else out[:, a:b]
                  for (a, b), n in zip(spans.bounds, names)]
        return torch.cat(pieces, dim=1)


class MergedLinear(nn.Module):
    """A linear layer with one merged weight copy W + BA per weak patch size (§3.2, no LoRA FLOPs)."""

    def __init__(self, base: nn.Linear, merged: dict[str, torch.Tensor]):
        super().__init__()
        self.base_layer = base
        self.sizes = sorted(merged)
        for name, w in merged.items():
            self.register_buffer(f"merged_{name}", w, persistent=False)

    def _one(self, x: torch.Tensor, size) -> torch.Tensor:
        w = getattr(self, f"merged_{patch_key(size)}", None)
        return self.base_layer(x) if w is None else F.linear(x, w, self.base_layer.bias)

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        return self.base_layer(x) if spans is None else spans.map(self._one, x)


class SizeLayerNorm(nn.Module):
    """An affine-free LayerNorm followed by a (gamma_p, beta_p) affine for each run's patch size."""

    def __init__(self, norm: nn.LayerNorm, patch_sizes: list, like: torch.Tensor):
        super().__init__()
        self.normalized_shape = tuple(norm.normalized_shape)
        self.eps = norm.eps
        d, kw = self.normalized_shape[-1], {"device": like.device, "dtype": like.dtype}
        self.weight = nn.ParameterDict({patch_key(p): nn.Parameter(torch.ones(d, **kw)) for p in patch_sizes})
        self.bias = nn.ParameterDict({patch_key(p): nn.Parameter(torch.zeros(d, **kw)) for p in patch_sizes})

    def _one(self, x: torch.Tensor, size) -> torch.Tensor:
        key = patch_key(size)
        return x if key not in self.weight else x * self.weight[key] + self.bias[key]

    def forward(self, x: torch.Tensor, spans: Spans | None = None) -> torch.Tensor:
        x = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return x if spans is None else spans.map(self._one, x)


# ---------------------------------------------------------------------------------------------------------
def lora_config(rank: int, alpha: float, targets):
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    config._register_custom_module({Linear: LoRALinear})  # peft's hook for custom LoRA layer types
    return config


def inject_loras(model: nn.Module, targets, patch_sizes: list, rank: int, alpha: float) -> None:
    """One peft LoRA adapter per weak patch size on every `Linear` whose name ends in one of `targets`."""
    from peft import inject_adapter_in_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        warnings.filterwarnings("ignore", message=".*Already found.*")
        for p in patch_sizes:
            inject_adapter_in_model(lora_config(rank, alpha, targets), model, adapter_name=patch_key(p))
    if hasattr(model, "peft_config"):
        del model.peft_config  # peft's bookkeeping; the checkpoint metadata describes the adapters


def lora_layers(model: nn.Module) -> list:
    """(name, layer) of every peft LoRA layer in the model."""
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


@torch.no_grad()
def merge_loras(model: nn.Module) -> int:
    """Replace each LoRA layer by a `MergedLinear` holding one weight copy W + BA per patch size."""
    count = 0
    for name, layer in lora_layers(model):
        base = layer.get_base_layer()
        merged = {a: base.weight + layer.get_delta_weight(a) for a in layer.lora_A}
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, MergedLinear(base, merged))
        count += 1
    if getattr(model, "flex", None) is not None and count:
        model.flex.merged = True
    return count


def replace_norms(model: nn.Module, names, patch_sizes: list, like: torch.Tensor) -> None:
    """Swap every `LayerNorm` whose name ends in one of `names` for a `SizeLayerNorm` on like's device and dtype."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LayerNorm) and any(name == n or name.endswith("." + n) for n in names):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SizeLayerNorm(module, patch_sizes, like))
