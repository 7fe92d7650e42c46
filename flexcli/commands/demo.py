"""`flexcli demo`: the main job on the built-in Fashion-MNIST default (flexify, distil, sweep, Pareto front)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the results (pareto.csv, plots, work/)."),
    quick: bool = typer.Option(False, "--quick", help="A small run (about 3 minutes on 2 CPU cores), as CI runs it."),
    base: Optional[Path] = typer.Option(None, help="Base checkpoint [default: the shipped DiT-FMNIST/4]."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML of demo settings (weak_patch, "
                                          "distill_steps, schedules, cfg_scales, ...): defaults or --quick < recipe."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Flexify the shipped Fashion-MNIST DiT (weak patch 8), distil it, sweep schedules x guidance scales."""
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from flexcli.builtin.demo import run_main_job, settings

        job = settings(quick, recipe)
        names = {"reference": "reference images", "flexify": f"flexify -p {job.weak_patch}",
                 "distill": "distil weak mode", "sample": "sample settings", "metrics": "metrics"}
        with Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=False) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done, total=total)
            res = run_main_job(out, quick=quick, base=base, force=force, progress=progress, job=job)
        for r in res["rows"]:
            ca = r.get("class_accuracy")
            err.print(f"{r['label']:>14}  compute {r['compute_fraction']:.3f}  FID {r['fid']:.3f}  "
                      f"class acc {ca if ca is None else f'{ca:.3f}'}")
        err.print(f"done in {res['seconds']:.0f} s")
        for f in res["files"]:
            result(str(f))
