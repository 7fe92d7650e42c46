"""What the library needs to know about a model family, beyond its model (`flexcli.models.<family>`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class FamilyCost:
    """The family's architecture, as the one compute model (`flexcli.compute`) counts it."""

    terms: Callable[..., dict]  # (cfg, patch tuple, tokens) -> {term: MACs per sample}, LoRAs excluded
    lora_dims: Callable[..., list]  # cfg -> [(d_in, d_out)] of the LoRA-adapted linears of one block
    attention: Callable[..., int]  # (cfg, tokens) -> self-attention MACs (Q K^T and A V) of all blocks
    io_dims: Callable[..., tuple]  # cfg -> (width D, in channels C, out channels per pixel)
    spatial: Callable[..., tuple]  # cfg -> the latent's default spatial shape
    # optional: (cfg, tokens, LoRA target names) -> LoRA MACs per unit rank (default: lora_dims on every token)
    lora_macs: Callable[..., int] | None = None
    # optional, text families: (cfg, packed tokens, segments) -> cross-attention MACs of a dense packed pass
    packed_cross_attention: Callable[..., int] | None = None


@dataclass(frozen=True)
class Family:
    """A model family on the flex core: its model, its config, its checkpoint layouts and its compute terms."""

    name: str  # as written in flexcli checkpoints' metadata ("family")
    model: type  # a flexcli.flex.core.FlexModel subclass, built from the config
    config: type  # the config dataclass (with from_dict / to_dict)
    claims: Callable[[set, dict | None], bool]  # (tensor names, config.json or None) -> is it this family's?
    read: Callable[..., object]  # (path, use_ema=...) -> flexcli.io.checkpoint.Checkpoint
    cost: FamilyCost
    conditioning: str  # "class" (labels) or "text" (prompt embeddings)
    process: str = "ddpm"  # what the model predicts: "ddpm" (eps, DiT's Gaussian diffusion) or "flow" (velocity)
