"""`flexcli flexify`: add weak patch sizes to a pretrained DiT, PixArt or Wan checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def flexify(
    checkpoint: Path = typer.Argument(..., help="DiT or PixArt checkpoint (.pt/.pth/.safetensors original layout, a diffusers model or pipeline folder), or Wan 2.1 (release folder, diffusers transformer/ or pipeline folder)."),
    weak_patch: list[str] = typer.Option(..., "--weak-patch", "-p", help="Weak patch size to add (repeatable): images -p 4 -p 8; video p_t,p_h,p_w: -p 2,2,2 -p 1,4,4."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .safetensors (default: <stem>-flex.safetensors beside the input)."),
    mode: str = typer.Option("lora", metavar="<lora|shared>", help="lora (frozen base, per-size LoRAs, §3.2) or shared (§3.1)."),
    lora_rank: int = typer.Option(32, help="LoRA rank for --mode lora."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: the rank, i.e. LoRA scale 1)."),
    lora_cross_attn: bool = typer.Option(False, "--lora-cross-attn", help="Text-to-image/video: LoRAs on cross-attention too (default: frozen, no LoRA, as in the paper's Fig. 5)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="For train.py checkpoints: take the EMA weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
) -> None:
    """Flexify a DiT, PixArt or Wan 2.1 checkpoint: tokenizers for each weak size (PI resize), size embeddings and LoRAs."""
    with user_errors():
        from flexcli.api import flexify_checkpoint
        from flexcli.flex.patches import label

        path, model, ckpt = flexify_checkpoint(checkpoint, weak_patch, out, mode=mode, lora_rank=lora_rank,
                                               lora_alpha=lora_alpha, use_ema=ema, force=force,
                                               lora_groups=("cross_attn",) if lora_cross_attn else ())
        err.print(f"read {ckpt.family} {ckpt.layout} layout: {_summary(ckpt)}")
        guessed = {k: v for k, v in ckpt.inferred.items() if not v.startswith(("tensors", "metadata"))}
        if guessed:  # values the weights and the file's metadata do not give: say where each came from
            err.print("not read from the weights or their metadata: "
                      + ", ".join(f"{k} ({v})" for k, v in guessed.items()), markup=False)
        lora = model.flex.describe().get("lora")
        err.print(f"mode {mode}: patch sizes {', '.join(label(p) for p in model.patch_sizes)}"
                  + (f"; LoRA rank {lora['rank']} on {', '.join(lora['targets'])}" if lora else ""))
        result(str(path))


def _summary(ckpt) -> str:
    cfg = ckpt.config
    if ckpt.family == "wan":
        return (f"{cfg.num_layers} layers, width {cfg.hidden_size}, heads {cfg.num_heads}, patch "
                f"{','.join(map(str, cfg.patch_size))}, channels {cfg.in_channels}->{cfg.out_channels}, "
                f"text {cfg.text_dim}-d x {cfg.text_len} tokens, ffn {cfg.ffn_dim}")
    text = f", caption width {cfg.caption_channels}" if ckpt.family == "pixart" else ""
    return (f"depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads}, patch {cfg.patch_size}, "
            f"channels {cfg.in_channels}->{cfg.out_channels}, learn_sigma {cfg.learn_sigma}, "
            f"input {cfg.input_size}{text}")
