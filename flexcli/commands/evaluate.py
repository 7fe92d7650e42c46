"""`flexcli evaluate`: FID/IS/KID/precision/recall (+ CLIP) per (schedule, guidance), Pareto front, plots."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flexcli.console import err, result, user_errors


def evaluate(
    checkpoint: Optional[Path] = typer.Argument(None, help="Flexified checkpoint: sweep it, or cost --samples labelled SCHEDULE@CFG."),
    samples: list[str] = typer.Option([], "--samples", help="[LABEL=]PATH: .npz (arr_0 uint8 NHWC), image folder, run folder or folder of runs. Repeatable."),
    ref: Path = typer.Option(..., "--ref", help="Reference images: a folder or an ADM-style .npz (features cached by content hash)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create: pareto.csv, plots, evaluate.json (and runs/ in a sweep)."),
    schedules: Optional[str] = typer.Option(None, help="Sweep: powerful cond/uncond steps, e.g. 250/250,130/130,70/70."),
    cfg_scales: Optional[str] = typer.Option(None, help="Sweep: guidance scales, e.g. 1.5,2,3,4, or the paper's grid: t2i (PixArt) or emu (App. B.5)."),
    num_samples: Optional[int] = typer.Option(None, help="Sweep: samples per combination (same seeds for all)."),
    seed: int = typer.Option(0, help="Sweep: first seed."),
    vae: Optional[Path] = typer.Option(None, help="Sweep: local AutoencoderKL folder for latent models (as in flexcli sample)."),
    sample_recipe: Optional[Path] = typer.Option(None, help="Sweep: flexcli sample recipe YAML for other sampling settings."),
    steps: Optional[int] = typer.Option(None, help="Total denoising steps (for costing SCHEDULE@CFG labels and sweeps) (default: 250; iddpm 100, dpm-solver 20, sa-solver 25)."),
    solver: Optional[str] = typer.Option(None, help="Sweep: the sampler's solver (as flexcli sample --solver)."),
    text_encoder: Optional[str] = typer.Option(None, help="Sweep, text-to-image: local text encoder folder or minilm; the samples' prompts are --prompts."),
    inception_weights: Optional[Path] = typer.Option(None, help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth."),
    features: str = typer.Option("inception", help="Feature extractor: inception or a registered project extractor."),
    kid_subset_size: int = typer.Option(1000, help="KID subset size (at most the number of samples)."),
    kid_subsets: int = typer.Option(100, help="Number of KID subsets."),
    clip_weights: Optional[Path] = typer.Option(None, help="Local open_clip weights (.pt/.safetensors): adds CLIP score."),
    clip_model: str = typer.Option("ViT-L-14", help="open_clip architecture of --clip-weights."),
    prompts: Optional[Path] = typer.Option(None, help="One prompt per line, in sample order (run.json prompts win)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Reference feature cache [default: ~/.cache/flexcli/fidelity]."),
    target_compute: Optional[float] = typer.Option(None, help="Report the best Pareto point at or under this compute fraction."),
    baseline_cfg: float = typer.Option(4.5, help="With CLIP scores: the all-powerful baseline's CFG scale for t2i_match.csv (Fig. 7 middle; Emu: 6.0)."),
    fid_tol: float = typer.Option(0.02, help="A schedule matches the baseline with FID <= baseline x (1 + this)."),
    clip_tol: float = typer.Option(0.1, help="... and CLIP >= baseline - this (CLIP points)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    """Measure quality vs compute: one pareto.csv row per sample set or (schedule, CFG scale) combination."""
    with user_errors():
        from flexcli.errors import FlexcliError
        from flexcli.evaluate.core import ClipOptions, evaluate_samples, sweep
        from flexcli.evaluate.pareto import describe, sample_flags
        from flexcli.diffusion.schedule import parse_schedules
        from flexcli.evaluate.runs import parse_list
        from flexcli.diffusion.t2i_solvers import T2I_SOLVERS
        from flexcli.evaluate.t2i import CFG_GRIDS, MatchOptions
        from flexcli.metrics.fid import MetricOptions

        steps = steps or T2I_SOLVERS.get(solver, 250)
        opts = MetricOptions(features=features, inception_weights=inception_weights, kid_subset_size=kid_subset_size,
                             kid_subsets=kid_subsets, cache_dir=cache_dir)
        clip = ClipOptions(clip_weights, clip_model, prompts, MatchOptions(baseline_cfg, fid_tol, clip_tol))
        common = dict(clip=clip, ckpt=checkpoint, steps=steps, target_compute=target_compute, force=force,
                      progress=lambda m: err.print(m))
        sweeping = schedules is not None or cfg_scales is not None or num_samples is not None
        if samples and sweeping:
            raise FlexcliError("--samples evaluates existing samples; --schedules/--cfg-scales/--num-samples sweep",
                               "use one mode or the other")
        if samples:
            res = evaluate_samples(samples, ref, out, opts, **common)
        elif sweeping:
            if checkpoint is None or not (schedules and cfg_scales and num_samples):
                raise FlexcliError("a sweep needs CKPT, --schedules, --cfg-scales and --num-samples",
                                   "e.g. flexcli evaluate flex.safetensors --schedules 250/250,130/130 "
                                   "--cfg-scales 1.5,4 --num-samples 1000 --ref REF --out DIR")
            from flexcli.evaluate.sampling import library_sample_fn

            sched = parse_schedules(schedules)
            scales = CFG_GRIDS[cfg_scales] if cfg_scales in CFG_GRIDS else parse_list(cfg_scales, float, "--cfg-scales")
            extra = {k: v for k, v in (("vae", str(vae) if vae else None), ("solver", solver),
                                       ("text_encoder", text_encoder),
                                       ("prompts_file", str(prompts) if prompts and text_encoder else None)) if v}
            fn = library_sample_fn(checkpoint, num_samples, seed, steps, sample_recipe, **extra)
            res = sweep(fn, sched, scales, ref, out, opts, num_samples=num_samples, **common)
        else:
            raise FlexcliError("nothing to evaluate", "pass --samples PATH, or CKPT with --schedules/--cfg-scales/--num-samples")
        for note in res.notes:
            err.print(note)
        for f in res.files:
            result(str(f))
        if res.pick is not None:
            p = res.pick
            err.print(f"best at or under {target_compute:g} compute: {describe(p)} "
                      f"(compute {p['compute_fraction']:.3f}, FID {p['fid']:.4g})")
            result(f"flexcli sample {checkpoint or 'CKPT'} {sample_flags(p)}".rstrip())
