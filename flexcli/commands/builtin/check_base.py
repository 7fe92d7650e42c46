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
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: 100 DDPM steps; video: 20 "
                                        "flow-unipc steps)."),
    cfg_scale: float = typer.Option(4.0, help="Classifier-free guidance scale."),
    seed: int = typer.Option(0, help="First seed."),
    classifier: Optional[Path] = typer.Option(None, help="Classifier weights (default: the shipped ones)."),
) -> None:
    """Class accuracy of the base's samples by the domain classifier (target 70 %; video: of frames, and the item
    moves; exit code 1 below it)."""
    with user_errors():
        from flexcli.builtin.check_base import GRID_NAME, REPORT_NAME, check_base as run_check

        report = run_check(checkpoint, out, num_samples=num_samples, steps=steps, cfg_scale=cfg_scale, seed=seed,
                           classifier=classifier)
        err.print(f"class accuracy {report['class_accuracy']:.3f} (target {report['target']:.2f})"
                  + (f", moving clips {report['motion']['generated']['moving']:.3f}" if "motion" in report else "")
                  + f": {'passed' if report['passed'] else 'FAILED'}")
        result(str(out / REPORT_NAME))
        for name in report.get("files", [GRID_NAME]):
            result(str(out / name))
    if not report["passed"]:
        raise typer.Exit(1)
