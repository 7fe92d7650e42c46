"""`flexcli builtin train-classifier`: train the Fashion-MNIST domain classifier (the `fmnist` features)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import log, result, user_errors


def train_classifier(
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML recipe, e.g. recipes/base/fashion_mnist_classifier.yaml."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (classifier.safetensors, losses.csv, metrics.json)."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the train split."),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw."),
    data_limit: Optional[int] = typer.Option(None, help="Use only the first N training images."),
) -> None:
    """Train the CNN behind `--features fmnist` and class accuracy; prints the weights' path."""
    with user_errors():
        from flexcli.builtin.classifier import WEIGHTS_NAME
        from flexcli.builtin.train_classifier import resolve, train

        cfg = resolve(recipe, {"epochs": epochs, "seed": seed, "data_limit": data_limit})
        train(cfg, out, say=log)
        result(str(out / WEIGHTS_NAME))
