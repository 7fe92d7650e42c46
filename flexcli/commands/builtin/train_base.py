"""`flexcli builtin train-base`: pre-train a built-in default's base model (DiT-, PixArt- or Wan-FMNIST) from a recipe."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import log, result, user_errors


def train_base(
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML recipe, e.g. recipes/base/fashion_mnist_dit.yaml (or _pixart.yaml: text-to-image)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (model.safetensors, losses, config.yaml, state.pt)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its state.pt."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps in total."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    image_batch_size: Optional[int] = typer.Option(None, help="Video only: single frames of further clips per step, trained as 1-frame videos (joint image-video training)."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (the same seed and thread count give the same curve)."),
    data_limit: Optional[int] = typer.Option(None, help="Use only the first N training images (or clips)."),
) -> None:
    """Train a built-in base from scratch (DiT/PixArt: DiT's objective; Wan: flow matching); prints the EMA checkpoint's path."""
    with user_errors():
        from flexcli.builtin.train_base import EMA_NAME, pretrain, resolve

        cfg = resolve(recipe, {"steps": steps, "batch_size": batch_size, "image_batch_size": image_batch_size,
                               "seed": seed, "threads": threads, "data_limit": data_limit})
        res = pretrain(cfg, out, resume=resume, say=log)
        result(str(res.out_dir / EMA_NAME))
