"""`flexcli quickstart`: the end-to-end job on a generated tiny checkpoint."""
from __future__ import annotations

from pathlib import Path

import typer

from flexcli.console import err, result, user_errors


def quickstart(
    out: Path = typer.Option(Path("quickstart"), "--out", "-o", help="Folder for the results."),
    weak_patch: list[int] = typer.Option([4, 8], "--weak-patch", "-p", help="Weak patch sizes to add."),
) -> None:
    """Make a seeded tiny DiT, flexify it, describe it (info.json) and export its LoRAs."""
    with user_errors():
        from flexcli.quickstart import run_quickstart

        paths = run_quickstart(out, weak_patch)
        import json

        info = json.loads(paths["info"].read_text())
        for row in info["cost"]:
            err.print(f"p={row['patch_size']}: {row['tokens']} tokens, {row['gflops']:.4f} GFLOPs per sample")
        for path in paths.values():
            result(str(path))
