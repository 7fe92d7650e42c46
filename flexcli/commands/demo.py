"""`flexcli demo`: the main job on the built-in Fashion-MNIST default (flexify, distil, sweep against the fewer-steps
baseline, Pareto fronts). The summary table and the output paths go to stdout, progress to stderr."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, progress_bar, result, user_errors

STAGES = {"reference": "reference images", "flexify": "flexify", "distill": "distill weak mode",
          "sample": "sample (steps x samples)", "metrics": "metrics (settings)"}


def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the results (pareto.csv, plots, summary.txt, work/)."),
    quick: bool = typer.Option(False, "--quick", help="A small run, as CI runs it (the README gives its duration)."),
    base: Optional[Path] = typer.Option(None, help="Base checkpoint (default: the shipped DiT-FMNIST/4)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML of demo settings (weak_patch, "
                                          "distill_steps, schedules, cfg_scales, baseline_steps, compare_compute, "
                                          "...): defaults or --quick < recipe."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Flexify the shipped Fashion-MNIST DiT (weak patch 8), distil it, sweep schedules against fewer steps."""
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from flexcli.builtin.demo import run_main_job, settings

        job = settings(quick, recipe)
        names = {**STAGES, "flexify": f"flexify -p {job.weak_patch}"}
        with progress_bar(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done, total=total)
            res = run_main_job(out, quick=quick, base=base, force=force, progress=progress, job=job)
        for line in res["summary"]:
            result(line)
        result("")
        err.print(f"done in {res['seconds']:.0f} s", markup=False)
        for f in res["files"]:
            result(str(f))
