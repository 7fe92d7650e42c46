"""`flexcli evaluate`: FID/IS/KID/precision/recall (+ CLIP, + class accuracy) per (steps, schedule, guidance), the
fewer-steps baseline, Pareto fronts, plots."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, progress_bar, result, user_errors


def evaluate(
    checkpoint: Optional[Path] = typer.Argument(None, help="Flexified checkpoint: sweep it, or cost --samples labelled SCHEDULE@CFG."),
    samples: list[str] = typer.Option([], "--samples", metavar="<[LABEL=]PATH>", help="Samples: an .npz (arr_0 uint8 NHWC), an image folder, a run folder or a folder of runs; LABEL names the row, and SCHEDULE@CFG (e.g. 130/130@4) also sets its schedule and scale. Repeatable."),
    ref: Path = typer.Option(..., "--ref", help="Reference images: a folder or an ADM-style .npz (features cached by content hash)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: pareto.csv, plots, evaluate.json (and runs/ in a sweep)."),
    schedules: Optional[str] = typer.Option(None, help="Sweep: powerful cond/uncond steps, e.g. 250/250,130/130,70/70; 'X of N' runs X at N steps, e.g. '15/15 of 30'."),
    baseline_steps: Optional[str] = typer.Option(None, help="Sweep: the fewer-steps baseline, all-powerful runs at these step counts (and at --steps), e.g. 40,30,20."),
    cfg_scales: Optional[str] = typer.Option(None, help="Sweep: guidance scales, e.g. 1.5,2,3,4, or the paper's grid: t2i (PixArt) or emu (App. B.5)."),
    num_samples: Optional[int] = typer.Option(None, help="Sweep: samples per combination (same seeds for all)."),
    seed: int = typer.Option(0, help="Sweep: first seed."),
    vae: Optional[Path] = typer.Option(None, help="Sweep: local AutoencoderKL folder for latent models (as in flexcli sample)."),
    sample_recipe: Optional[Path] = typer.Option(None, help="Sweep: flexcli sample recipe YAML for other sampling settings."),
    steps: Optional[int] = typer.Option(None, help="Base step count: compute is relative to the all-powerful run at it; schedules run at it (default: in a sweep 250, or iddpm 100, dpm-solver 20, sa-solver 25; with --samples the most steps of any run, else 250)."),
    solver: Optional[str] = typer.Option(None, help="Sweep: the sampler's solver (as flexcli sample --solver)."),
    text_encoder: Optional[str] = typer.Option(None, help="Sweep, text-to-image: local text encoder folder or minilm; the samples' prompts are --prompts."),
    inception_weights: Optional[Path] = typer.Option(None, help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth."),
    features: str = typer.Option("inception", metavar="<inception|fmnist|NAME>", help="Feature extractor: inception, fmnist (the built-in Fashion-MNIST classifier; adds class accuracy) or a registered project extractor."),
    kid_subset_size: int = typer.Option(1000, help="KID subset size (at most the number of samples)."),
    kid_subsets: int = typer.Option(100, help="Number of KID subsets."),
    clip_weights: Optional[Path] = typer.Option(None, help="Local open_clip weights (.pt/.safetensors): adds CLIP score."),
    clip_model: str = typer.Option("ViT-L-14", help="open_clip architecture of --clip-weights."),
    prompts: Optional[Path] = typer.Option(None, help="One prompt per line, in sample order (run.json prompts win)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Reference feature cache (default: ~/.cache/flexcli/fidelity)."),
    target_compute: Optional[float] = typer.Option(None, help="Report the best point at or under this compute fraction across steps x schedules x guidance, and the best flex and fewer-steps points there."),
    baseline_cfg: float = typer.Option(4.5, help="With CLIP scores: the all-powerful baseline's CFG scale for t2i_match.csv (Fig. 7 middle; Emu: 6.0)."),
    fid_tol: float = typer.Option(0.02, help="A schedule matches the baseline with FID <= baseline x (1 + this)."),
    clip_tol: float = typer.Option(0.1, help="... and CLIP >= baseline - this (CLIP points)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Measure quality vs compute: one pareto.csv row per sample set or (steps, schedule, CFG scale) combination."""
    with user_errors():
        from flexcli.errors import FlexcliError
        from flexcli.evaluate.core import ClipOptions, evaluate_samples
        from flexcli.evaluate.t2i import MatchOptions
        from flexcli.metrics.fid import MetricOptions

        opts = MetricOptions(features=features, inception_weights=inception_weights, kid_subset_size=kid_subset_size,
                             kid_subsets=kid_subsets, cache_dir=cache_dir)
        clip = ClipOptions(clip_weights, clip_model, prompts, MatchOptions(baseline_cfg, fid_tol, clip_tol))
        common = dict(clip=clip, ckpt=checkpoint, target_compute=target_compute, force=force,
                      progress=lambda m: err.print(m, markup=False))
        sweeping = any(v is not None for v in (schedules, cfg_scales, num_samples, baseline_steps))
        if samples and sweeping:
            raise FlexcliError("--samples evaluates existing samples; --schedules/--cfg-scales/--num-samples sweep",
                               "use one mode or the other")
        if samples:
            res = evaluate_samples(samples, ref, out, opts, steps=steps, **common)
        elif sweeping:
            if checkpoint is None or not (schedules and cfg_scales and num_samples):
                raise FlexcliError("a sweep needs CKPT, --schedules, --cfg-scales and --num-samples",
                                   "e.g. flexcli evaluate flex.safetensors --schedules 250/250,130/130 "
                                   "--cfg-scales 1.5,4 --num-samples 1000 --ref REF --out DIR")
            extra = {k: v for k, v in (("vae", str(vae) if vae else None), ("solver", solver),
                                       ("text_encoder", text_encoder),
                                       ("prompts_file", str(prompts) if prompts and text_encoder else None)) if v}
            res = _sweep(checkpoint, schedules, cfg_scales, baseline_steps, num_samples, seed, steps, solver,
                         sample_recipe, extra, ref, out, opts, common)
        else:
            raise FlexcliError("nothing to evaluate", "pass --samples PATH, or CKPT with --schedules/--cfg-scales/--num-samples")
        _report(res, checkpoint, target_compute)


def _sweep(checkpoint, schedules, cfg_scales, baseline_steps, num_samples, seed, steps, solver, sample_recipe, extra,
           ref, out, opts, common):
    """Sample every setting through the sample library (a progress bar over all their denoising steps), then score."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from flexcli.diffusion.schedule import parse_schedules
    from flexcli.diffusion.t2i_solvers import T2I_SOLVERS
    from flexcli.evaluate.core import sweep, sweep_settings
    from flexcli.evaluate.runs import parse_list
    from flexcli.evaluate.sampling import library_sample_fn
    from flexcli.evaluate.t2i import CFG_GRIDS

    steps = steps or T2I_SOLVERS.get(solver, 250)
    sched = parse_schedules(schedules)
    scales = CFG_GRIDS[cfg_scales] if cfg_scales in CFG_GRIDS else parse_list(cfg_scales, float, "--cfg-scales")
    fewer = parse_list(baseline_steps, int, "--baseline-steps") if baseline_steps else None
    total = num_samples * len(scales) * sum(n for _, n in sweep_settings(sched, steps, fewer))
    with progress_bar(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn()) as bar:
        task = bar.add_task("sample (steps x samples)", total=total)
        fn = library_sample_fn(checkpoint, num_samples, seed, steps, sample_recipe,
                               progress=lambda info: bar.update(task, advance=info["batch"]), **extra)
        return sweep(fn, sched, scales, ref, out, opts, num_samples=num_samples, steps=steps, baseline_steps=fewer,
                     **common)


def _report(res, checkpoint, target) -> None:
    """Notes and comparisons on stderr; the files, then the `flexcli sample` command of the pick, on stdout."""
    from flexcli.evaluate.pareto import describe, sample_flags
    from flexcli.evaluate.report import comparison_lines

    for note in res.notes:
        err.print(note, markup=False)
    for f in res.files:
        result(str(f))
    if res.pick is not None:
        p = res.pick
        acc = p.get("class_accuracy")
        err.print(f"best at or under {target:g} compute: {describe(p)} (compute {p['compute_fraction']:.3f}, "
                  f"FID {p['fid']:.4g}" + ("" if acc is None else f", class accuracy {acc:.3f}") + ")", markup=False)
        if any(r.get("baseline") for r in res.rows):
            for line in comparison_lines(res.rows, target):
                err.print(line, markup=False)
        result(f"flexcli sample {checkpoint or 'CKPT'} {sample_flags(p)}".rstrip())
