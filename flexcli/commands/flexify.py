"""`flexcli flexify`: add weak patch sizes to a pretrained DiT or PixArt checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def flexify(
    checkpoint: Path = typer.Argument(..., help="DiT or PixArt checkpoint: .pt/.pth/.safetensors (original layout), a diffusers model or pipeline folder."),
    weak_patch: list[int] = typer.Option(..., "--weak-patch", "-p", help="Weak patch size to add (repeatable: -p 4 -p 8)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .safetensors (default: <stem>-flex.safetensors beside the input)."),
    mode: str = typer.Option("lora", metavar="<lora|shared>", help="lora (frozen base, per-size LoRAs, §3.2) or shared (§3.1)."),
    lora_rank: int = typer.Option(32, help="LoRA rank for --mode lora."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: the rank, i.e. LoRA scale 1)."),
    lora_cross_attn: bool = typer.Option(False, "--lora-cross-attn", help="Text-to-image: LoRAs on cross-attention too (default: frozen, no LoRA, as in the paper's Fig. 5)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="For train.py checkpoints: take the EMA weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Flexify a DiT: new tokenizers (PI-resize), patch-size embeddings and LoRAs for each weak patch size."""
    with user_errors():
        from flexcli.api import flexify_checkpoint

        path, model, ckpt = flexify_checkpoint(checkpoint, weak_patch, out, mode=mode, lora_rank=lora_rank,
                                               lora_alpha=lora_alpha, use_ema=ema, force=force,
                                               lora_groups=("cross_attn",) if lora_cross_attn else ())
        cfg = ckpt.config
        text = f", caption width {cfg.caption_channels}" if ckpt.family == "pixart" else ""
        err.print(f"read {ckpt.family} {ckpt.layout} layout: depth {cfg.depth}, width {cfg.hidden_size}, "
                  f"heads {cfg.num_heads}, patch {cfg.patch_size}, channels {cfg.in_channels}->{cfg.out_channels}, "
                  f"learn_sigma {cfg.learn_sigma}, input {cfg.input_size}{text}")
        guessed = {k: v for k, v in ckpt.inferred.items() if not v.startswith(("tensors", "metadata"))}
        if guessed:  # values the weights and the file's metadata do not give: say where each came from
            err.print("not read from the weights or their metadata: "
                      + ", ".join(f"{k} ({v})" for k, v in guessed.items()), markup=False)
        lora = model.flex.describe().get("lora")
        err.print(f"mode {mode}: patch sizes {model.patch_sizes}"
                  + (f"; LoRA rank {lora['rank']} on {', '.join(lora['targets'])}" if lora else ""))
        result(str(path))
