"""Per-patch-size LoRAs through peft (paper §3.2): one adapter "p{size}" per weak patch size.

The pretrained patch size has no adapter, so with no adapter active every layer runs exactly its base
`nn.Linear` (bit-identical powerful mode).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# The four linear layers of each DiT block (timm / facebookresearch names).
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def adapter_name(patch_size: int) -> str:
    return f"p{patch_size}"


def _lora_config(rank: int, alpha: float, targets=LORA_TARGETS):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")


def inject_loras(model: nn.Module, patch_sizes: list[int], rank: int, alpha: float) -> None:
    """Add one peft LoRA adapter per patch size on the blocks' attention and MLP linears (B = 0 at init)."""
    from peft import inject_adapter_in_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*peft_config.*")
        warnings.filterwarnings("ignore", message=".*Already found.*")
        for p in patch_sizes:
            inject_adapter_in_model(_lora_config(rank, alpha), model, adapter_name=adapter_name(p))
    if hasattr(model, "peft_config"):
        del model.peft_config  # peft bookkeeping; our checkpoint metadata describes the adapters


def lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def activate_lora(layers, patch_size: int) -> None:
    """Route each peft LoRA layer in `layers` to the adapter of `patch_size`, or to none (base layer only).

    This sets peft's active-adapter list directly instead of `set_adapter`, which would also flip
    requires_grad on the adapters at every forward pass.
    """
    name = adapter_name(patch_size)
    for layer in layers:
        layer._active_adapter = [name] if name in layer.lora_A else []


class MergedLoraLinear(nn.Module):
    """A linear layer with a merged weight copy W + BA per patch size (zero-overhead inference, §3.2)."""

    def __init__(self, base: nn.Linear, merged: dict[int, torch.Tensor], state):
        super().__init__()
        self.base_layer = base
        self._state = state
        for p, w in merged.items():
            self.register_buffer(f"merged_p{p}", w, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = getattr(self, f"merged_p{self._state.patch_size}", None)
        if w is None:
            return self.base_layer(x)
        return F.linear(x, w, self.base_layer.bias)


@torch.no_grad()
def merge_loras(model: nn.Module) -> int:
    """Replace each peft LoRA layer by a `MergedLoraLinear` holding one weight copy per patch size."""
    count = 0
    for name, layer in lora_layers(model):
        base = layer.get_base_layer()
        merged = {int(a[1:]): base.weight + layer.get_delta_weight(a) for a in layer.lora_A}
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, MergedLoraLinear(base, merged, model.patch_state))
        count += 1
    if getattr(model, "flex", None) is not None:
        model.flex.forget_lora_layers()
    return count


def export_peft_adapters(model: nn.Module, out_dir: str | Path, rank: int, alpha: float) -> list[Path]:
    """Write each patch size's LoRA in peft's layout: OUT/p{size}/adapter_model.safetensors + adapter_config.json.

    Keys follow peft (`base_model.model.<module>.lora_A.weight`), so `peft.set_peft_model_state_dict` or
    `PeftModel.from_pretrained` on the base DiT (original key names) load them.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    written = []
    adapters = sorted({a for _, layer in lora_layers(model) for a in layer.lora_A})
    for a in adapters:
        tensors = {}
        for name, layer in lora_layers(model):
            if a in layer.lora_A:
                tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[a].weight.detach().contiguous()
                tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[a].weight.detach().contiguous()
        folder = out_dir / a
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, os.fspath(folder / "adapter_model.safetensors"))
        config = _lora_config(rank, alpha).to_dict()
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        config.update(peft_type="LORA", task_type=None, base_model_name_or_path=None)
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
        written.append(folder)
    return written
