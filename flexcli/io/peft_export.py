"""Per-size LoRAs written in peft's own adapter layout, loadable by peft onto the base model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from flexcli.flex.layers import lora_config, lora_layers


def export_peft_adapters(model: nn.Module, out_dir: str | Path, rank: int, alpha: float,
                         targets=None) -> list[Path]:
    """Each weak size's LoRA in peft's layout: OUT/p{size}/adapter_model.safetensors + adapter_config.json.

    Keys follow peft (`base_model.model.<module>.lora_A.weight`), so `peft.set_peft_model_state_dict` or
    `PeftModel.from_pretrained` on the base model (original key names) load them.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    targets = model.flex.lora_targets if targets is None else targets
    written = []
    for a in sorted({a for _, layer in lora_layers(model) for a in layer.lora_A}):
        tensors = {}
        for name, layer in lora_layers(model):
            if a in layer.lora_A:
                tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[a].weight.detach().contiguous()
                tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[a].weight.detach().contiguous()
        folder = out_dir / a
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, os.fspath(folder / "adapter_model.safetensors"))
        config = lora_config(rank, alpha, targets).to_dict()
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items() if not k.startswith("_")}
        config.update(peft_type="LORA", task_type=None, base_model_name_or_path=None)
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str))
        written.append(folder)
    return written
