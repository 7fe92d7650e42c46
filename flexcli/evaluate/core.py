"""Evaluate sample sets (or sweep schedules x guidance scales through a sampler) into pareto.csv and plots."""
from __future__ import annotations

import json
import math
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from flexcli.errors import FlexcliError
from flexcli.evaluate.pareto import pick_budget, read_pareto_csv, write_pareto_csv
from flexcli.evaluate.runs import SampleSet, latency_ratios, resolve_samples, schedule_dirname
from flexcli.evaluate.t2i import MatchOptions, write_match_table
from flexcli.io.atomic import atomic_dir, check_output
from flexcli.metrics.fid import (MetricOptions, check_options, compute_metrics, feature_spec, file_sha256,
                                 ref_cache_name)
from flexcli.metrics.images import check_same_size, open_images

# sample_fn(schedule, cfg_scale, run_dir) -> run_dir holding samples.npz (or images) and run.json.
SampleFn = Callable[[str, float, Path], Path]


@dataclass
class ClipOptions:
    weights: Path | None = None
    model: str = "ViT-L-14"
    prompts: Path | None = None  # one prompt per line, in sample order (run.json "prompts" wins)
    match: MatchOptions = field(default_factory=MatchOptions)  # the Fig. 7 (middle) table, with CLIP scores


@dataclass
class EvalResult:
    out: Path
    rows: list[dict]
    files: list[Path]
    pick: dict | None = None
    notes: list[str] = field(default_factory=list)


def schedule_costs(ckpt: Path, steps: int) -> Callable[[str], tuple[float, float]]:
    """schedule -> (FLOPs per sample, fraction of the all-powerful cost) for a checkpoint's first weak size, with
    guidance on and separate passes: the exact compute model (`flexcli.compute`), as `flexcli sample` counts."""
    from flexcli.api import load_model
    from flexcli.compute import model_step_cost
    from flexcli.diffusion.schedule import compute_fraction, parse_schedule, schedule_cost

    model = load_model(ckpt)
    if len(model.patch_sizes) < 2:
        raise FlexcliError(f"{ckpt} has no weak patch size", "flexify it first: flexcli flexify CKPT -p 4")
    p0, weak = model.patch_sizes[0], model.patch_sizes[1]
    step_cost = model_step_cost(model)

    def cost(schedule: str) -> tuple[float, float]:
        s = parse_schedule(schedule, steps, p0, weak)
        return 2.0 * schedule_cost(s, step_cost), compute_fraction(s, step_cost, p0)
    return cost


def _read_prompts(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FlexcliError(f"--prompts {path} not found", "pass a text file with one prompt per line")
    return [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("flexcli", "torch", "torch-fidelity", "open-clip-torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _evaluate_into(folder: Path, sets: list[SampleSet], ref_path: Path, opts: MetricOptions,
                   clip: ClipOptions | None, ckpt: Path | None, steps: int,
                   progress: Callable[[str], None]) -> EvalResult:
    ref = open_images(ref_path, "--ref")
    images = [open_images(s.path, "samples") for s in sets]
    for im in images:  # every check before any feature is extracted
        check_same_size(im, ref)
        check_options(opts, len(im), len(ref))
    prompts = _read_prompts(clip.prompts) if clip else None
    clip_model = None
    if clip and clip.weights is not None:
        from flexcli.metrics.clip import load_clip

        clip_model = load_clip(clip.model, clip.weights)
        for s in sets:
            if not s.meta.get("prompts", prompts):
                raise FlexcliError(f"no prompts for samples {s.label}", "pass --prompts FILE (one per line)")
    costs = schedule_costs(ckpt, steps) if ckpt is not None and any("compute_fraction" not in s.meta for s in sets) else None
    rows = []
    for i, (s, im) in enumerate(zip(sets, images)):
        progress(f"[{i + 1}/{len(sets)}] {s.label}: {len(im)} samples")
        row = {"label": s.label, "schedule": s.meta.get("schedule"), "cfg_scale": s.meta.get("cfg_scale"),
               "compute_fraction": s.meta.get("compute_fraction"), "gflops_per_sample": s.meta.get("gflops_per_sample"),
               "latency_s": s.meta.get("latency_s"), "latency_ratio": s.meta.get("latency_ratio"),
               "num_samples": len(im), "source": str(s.path)}
        if row["compute_fraction"] is None and costs and row["schedule"]:
            flops, frac = costs(row["schedule"])
            row.update(compute_fraction=frac, gflops_per_sample=flops / 1e9)
        row.update(compute_metrics(im, ref, opts))
        if clip_model is not None:
            from flexcli.metrics.clip import clip_score

            row["clip"] = clip_score(im, s.meta.get("prompts", prompts), clip.model, clip.weights, clip=clip_model)
        rows.append(row)
    latency_ratios(rows)
    csv = folder / "pareto.csv"
    write_pareto_csv(rows, csv)
    from flexcli.evaluate.plots import plot_pareto_csv

    files, notes = plot_pareto_csv(csv, folder)
    if clip_model is not None:  # text-to-image: the baseline-matching table and the FID-vs-CLIP curves
        more, more_notes = write_match_table(read_pareto_csv(csv), folder, clip.match)
        files, notes = files + more, notes + more_notes
    spec = feature_spec(opts.features)
    config = {"ref": str(ref_path), "ref_images": len(ref), "ref_sha256": ref.content_hash(),
              "ref_cache_name": ref_cache_name(ref, opts, spec), "features": spec.name,
              "inception_weights": str(opts.inception_weights) if spec.needs_inception_weights else None,
              "inception_sha256": file_sha256(Path(opts.inception_weights)) if spec.needs_inception_weights else None,
              "metrics": list(opts.metrics), "kid_subset_size": opts.kid_subset_size, "kid_subsets": opts.kid_subsets,
              "prc_neighborhood": opts.prc_neighborhood, "clip_model": clip.model if clip_model else None,
              "t2i_match": vars(clip.match) if clip_model else None,
              "checkpoint": str(ckpt) if ckpt else None, "steps": steps,
              "compute_convention": "FLOPs of the denoiser per sample relative to the all-powerful schedule, "
                                    "classifier-free guidance on (2 passes per step)",
              "versions": _versions()}
    (folder / "evaluate.json").write_text(json.dumps(config, indent=2) + "\n")
    return EvalResult(folder, read_pareto_csv(csv), [csv, *files, folder / "evaluate.json"], notes=notes)


def evaluate_samples(specs: list[str], ref: Path, out: Path, opts: MetricOptions, *, clip: ClipOptions | None = None,
                     ckpt: Path | None = None, steps: int = 250, target_compute: float | None = None,
                     force: bool = False, progress: Callable[[str], None] = lambda m: None) -> EvalResult:
    """Evaluate existing sample sets against `ref`; writes `out` (pareto.csv, plots, evaluate.json) atomically."""
    out = Path(out)
    check_output(out, force)
    _check_target(target_compute)
    sets = resolve_samples(specs)
    with atomic_dir(out) as tmp:
        res = _evaluate_into(tmp, sets, Path(ref), opts, clip, ckpt, steps, progress)
    return _finish(res, out, target_compute)


def _check_target(target: float | None) -> None:
    if target is not None and not 0 < target:
        raise FlexcliError(f"--target-compute {target} is not a positive fraction", "pass e.g. --target-compute 0.6")


def _finish(res: EvalResult, out: Path, target: float | None) -> EvalResult:
    """Point the result at the final folder; pick the budget point (after the outputs are safely written)."""
    res.files = [out / f.relative_to(res.out) for f in res.files]
    res.out = out
    if target is not None:
        try:
            res.pick = pick_budget(res.rows, target)
        except FlexcliError as e:
            raise FlexcliError(f"{e.problem} (results written to {out})", e.fix) from e
    return res


def sweep(sample_fn: SampleFn, schedules: list[str], cfg_scales: list[float], ref: Path, out: Path,
          opts: MetricOptions, *, clip: ClipOptions | None = None, ckpt: Path | None = None, steps: int = 250,
          target_compute: float | None = None, force: bool = False, num_samples: int | None = None,
          progress: Callable[[str], None] = lambda m: None) -> EvalResult:
    """Sample every (schedule, cfg scale) with `sample_fn` into out/runs/, then evaluate them all.

    `sample_fn` must use the same seeds for every combination (it is called with the same arguments but the
    schedule and scale). The reference is opened first, so bad input fails before any sampling.
    """
    out = Path(out)
    check_output(out, force)
    _check_target(target_compute)
    n_ref = len(open_images(ref, "--ref"))
    check_options(opts, num_samples or math.inf, n_ref)  # weights, extractor, counts: before any sampling
    with atomic_dir(out) as tmp:
        runs = tmp / "runs"
        runs.mkdir()
        if hasattr(sample_fn, "warmup"):  # keep one-time costs out of the first run's latency
            progress("warm-up")
            sample_fn.warmup(tmp / "warmup")
            shutil.rmtree(tmp / "warmup", ignore_errors=True)
        done = []
        for s in schedules:
            for c in cfg_scales:
                progress(f"sampling schedule {s}, cfg {c:g}")
                run_dir = Path(sample_fn(s, c, runs / schedule_dirname(s, c)))
                done.append(f"{s}@{c:g}={run_dir}")
        sets = resolve_samples(done)
        res = _evaluate_into(tmp, sets, Path(ref), opts, clip, ckpt, steps, progress)
        for r in res.rows:  # sources pointed into the temporary folder
            if str(r["source"]).startswith(str(tmp)):
                r["source"] = str(out / Path(r["source"]).relative_to(tmp))
        write_pareto_csv(res.rows, tmp / "pareto.csv")
    return _finish(res, out, target_compute)
