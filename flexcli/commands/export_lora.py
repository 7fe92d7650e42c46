"""`flexcli export-lora`: write a flexified checkpoint's LoRAs in peft's adapter layout."""
from __future__ import annotations

from pathlib import Path

import typer

from flexcli.console import result, user_errors


def export_lora(
    checkpoint: Path = typer.Argument(..., help="A flexified checkpoint (--mode lora)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create; one peft adapter folder per patch size."),
    force: bool = typer.Option(False, "--force", help="Replace an existing folder."),
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Use a checkpoint with NaN/inf weights (an error by default)."),
) -> None:
    """Export each weak patch size's LoRA as adapter_model.safetensors + adapter_config.json."""
    with user_errors():
        from flexcli.api import export_loras

        for folder in export_loras(checkpoint, out, force=force, allow_nonfinite=allow_nonfinite):
            result(str(folder))
