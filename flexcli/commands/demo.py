"""`flexcli demo`: the main job on a built-in default (flexify, distil, sweep, Pareto fronts): the class-conditional
Fashion-MNIST DiT (`--family dit`, against the fewer-steps baseline), the text-to-image PixArt on captioned
Fashion-MNIST (`--family t2i`) or the text-to-video Wan on moving Fashion-MNIST (`--family video`, both weak modes).
The summary table and the output paths go to stdout, progress to stderr."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, progress_bar, result, user_errors

STAGES = {"reference": "reference images", "flexify": "flexify", "distill": "distill weak mode",
          "prompts": "encode prompts", "sample": "sample (steps x samples)", "metrics": "metrics (settings)"}
FAMILIES = ("dit", "t2i", "video")


def demo(
    out: Path = typer.Option(Path("demo"), "--out", "-o", help="Folder for the results (pareto.csv, plots, summary.txt, work/)."),
    family: str = typer.Option("dit", "--family", help="dit: the class-conditional default; t2i: the text-to-image "
                               "one (held-out prompts, FID vs alignment, the Fig. 7 match table); video: the "
                               "text-to-video one (temporal and spatial weak modes, Fig. 8)."),
    quick: bool = typer.Option(False, "--quick", help="A small run, as CI runs it (the README gives its duration)."),
    base: Optional[Path] = typer.Option(None, help="Base checkpoint (default: the shipped DiT-FMNIST/4, "
                                        "PixArt-FMNIST/4 or Wan-FMNIST)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="YAML of demo settings (weak_patch, "
                                          "distill_steps, schedules, cfg_scales, baseline_steps, compare_compute, "
                                          "...; video: modes, weak_steps, cells): defaults or --quick < recipe."),
    clip_weights: Optional[Path] = typer.Option(None, "--clip-weights", help="t2i: open-clip weights (a local file) "
                                                "to add the CLIP score beside the classifier alignment."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="t2i: the open-clip architecture of "
                                             "--clip-weights (default: ViT-B-32)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Flexify a shipped Fashion-MNIST base (weak patch 8; video: the temporal and spatial weak modes), distil it,
    sweep schedules x guidance scales."""
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from flexcli.errors import FlexcliError

        if family not in FAMILIES:
            raise FlexcliError(f"unknown --family '{family}'", f"use one of: {', '.join(FAMILIES)}")
        if family != "t2i" and (clip_weights or clip_model):
            raise FlexcliError("--clip-weights is for --family t2i", "drop it, or pass --family t2i")
        if family == "t2i":
            from flexcli.builtin.demo_t2i import run_t2i_job as run_job, settings

            job = settings(quick, recipe, clip_weights=str(clip_weights) if clip_weights else None,
                           clip_model=clip_model)
        elif family == "video":
            from flexcli.builtin.demo_video import run_video_job as run_job, settings

            job = settings(quick, recipe)
        else:
            from flexcli.builtin.demo import run_main_job as run_job, settings

            job = settings(quick, recipe)
        names = {**STAGES, "flexify": f"flexify -p {getattr(job, 'weak_patch', '')}"}
        with progress_bar(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(names.get(stage, stage), total=total)
                bar.update(tasks[stage], completed=done, total=total)
            res = run_job(out, quick=quick, base=base, force=force, progress=progress, job=job)
        for line in res["summary"]:
            result(line)
        result("")
        err.print(f"done in {res['seconds']:.0f} s", markup=False)
        for f in res["files"]:
            result(str(f))
