"""`flexcli builtin check-base`: sample a Fashion-MNIST base model and measure its class accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def check_base(
    checkpoint: Path = typer.Argument(..., help="The base checkpoint, e.g. runs/base/model.safetensors."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for check.json and grid.png."),
    num_samples: int = typer.Option(200, help="Samples (sample i asks for class i mod 10, by label or by a held-out caption; seeds 0..N-1)."),
    steps: int = typer.Option(100, help="DDPM steps."),
    cfg_scale: float = typer.Option(4.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, help="First seed."),
    classifier: Optional[Path] = typer.Option(None, help="Classifier weights (default: the shipped ones)."),
) -> None:
    """Class accuracy of the base's samples by the domain classifier (target 70 %; exit code 1 below it)."""
    with user_errors():
        from flexcli.builtin.check_base import GRID_NAME, REPORT_NAME, check_base as run_check

        report = run_check(checkpoint, out, num_samples=num_samples, steps=steps, cfg_scale=cfg_scale, seed=seed,
                           classifier=classifier)
        err.print(f"class accuracy {report['class_accuracy']:.3f} (target {report['target']:.2f}): "
                  f"{'passed' if report['passed'] else 'FAILED'}")
        result(str(out / REPORT_NAME))
        result(str(out / GRID_NAME))
    if not report["passed"]:
        raise typer.Exit(1)
