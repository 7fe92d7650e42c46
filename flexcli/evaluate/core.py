"""Evaluate sample sets (or sweep schedules and fewer-steps baselines x guidance scales through a sampler) into
pareto.csv and plots. Compute is always relative to the all-powerful run at the base step count."""
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
from flexcli.evaluate.runs import SampleSet, latency_ratios, resolve_samples, schedule_dirname, setting_label
from flexcli.evaluate.t2i import MatchOptions, write_match_table
from flexcli.io.atomic import atomic_dir, check_output
from flexcli.metrics.fid import (MetricOptions, check_options, compute_metrics, feature_spec, file_sha256,
                                 ref_cache_name)
from flexcli.metrics.images import check_same_size, open_images

# sample_fn(schedule, cfg_scale, run_dir[, steps=N]) -> run_dir holding samples.npz (or images) and run.json.
SampleFn = Callable[..., Path]


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


def schedule_costs(ckpt: Path, steps: int) -> Callable[[str, int | None], tuple[float, float]]:
    """(schedule, its step count or None for `steps`) -> (FLOPs per sample, fraction of the cost of the all-powerful
    run at `steps`, the base step count) for a checkpoint's first weak size, with guidance on and separate passes:
    the exact compute model (`flexcli.compute`), as `flexcli sample` counts."""
    from flexcli.api import load_model
    from flexcli.compute import model_step_cost
    from flexcli.diffusion.schedule import parse_schedule, schedule_cost

    model = load_model(ckpt)
    if len(model.patch_sizes) < 2:
        raise FlexcliError(f"{ckpt} has no weak patch size", "flexify it first: flexcli flexify CKPT -p 4")
    p0, weak = model.patch_sizes[0], model.patch_sizes[1]
    step_cost = model_step_cost(model)
    full = steps * step_cost(p0, p0)

    def cost(schedule: str, n: int | None = None) -> tuple[float, float]:
        s = parse_schedule(schedule, n or steps, p0, weak)
        macs = schedule_cost(s, step_cost)
        return 2.0 * macs, macs / full
    return cost


def sweep_settings(schedules: list[str], steps: int, baseline_steps: list[int] | None = None) -> list[tuple[str, int]]:
    """(schedule, step count) of a sweep: every schedule (at `steps`, or 'X of N' at N steps), then the
    fewer-steps baseline: the all-powerful schedule at `steps` and at each of `baseline_steps`. Checked here,
    before any sampling; duplicates are dropped."""
    from flexcli.diffusion.schedule import parse_schedule
    from flexcli.evaluate.runs import split_setting

    out: list[tuple[str, int]] = []
    for spec in schedules:
        out.append(split_setting(spec, steps))
    if baseline_steps:
        out += [(f"{n}/{n}", n) for n in [steps, *baseline_steps]]
    for sched, n in out:
        if not 1 <= n <= 1000:
            raise FlexcliError(f"step count {n} (schedule '{sched}') is not in 1..1000",
                               "e.g. --baseline-steps 40,30,20")
        parse_schedule(sched, n, 1, 2)  # counts and segment lengths fit the step count
    return list(dict.fromkeys(out))


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


def _base_steps(sets: list[SampleSet], steps: int | None) -> int:
    """The step count that compute is relative to: `steps` if given, else the most of any run, else 250."""
    if steps is not None:
        return steps
    known = [s.meta["steps"] for s in sets if s.meta.get("steps")]
    return max(known) if known else 250


def _compute(s: SampleSet, base: int, costs) -> tuple[float | None, float | None, int | None]:
    """(compute fraction relative to the all-powerful run at `base` steps, GFLOPs per sample, step count or None
    when unknown) of one set."""
    m = s.meta
    if m.get("compute_fraction") is not None:  # given as such (a hand-written run.json)
        return m["compute_fraction"], m.get("gflops_per_sample"), m.get("steps")
    if m.get("run_fraction") is not None:  # relative to the run's own step count
        return m["run_fraction"] * (m.get("steps") or base) / base, m.get("gflops_per_sample"), m.get("steps")
    if costs is not None and m.get("schedule"):
        flops, frac = costs(m["schedule"], m.get("steps"))
        return frac, flops / 1e9, m.get("steps") or base
    return None, m.get("gflops_per_sample"), m.get("steps")


def _row(s: SampleSet, n: int, base: int, costs) -> dict:
    """A pareto.csv row's facts about how set `s` was made (the metrics are added by the caller)."""
    frac, gflops, steps = _compute(s, base, costs)
    own = None if frac is None else frac * base / steps if steps else frac  # relative to its own step count
    m = s.meta
    return {"label": s.label, "steps": steps, "solver": m.get("solver"), "schedule": m.get("schedule"),
            "guidance": m.get("guidance"), "cfg_scale": m.get("cfg_scale"),
            "cfg_scale_all_weak": m.get("cfg_scale_all_weak"), "compute_fraction": frac, "gflops_per_sample": gflops,
            "latency_s": s.meta.get("latency_s"), "latency_ratio": s.meta.get("latency_ratio"), "num_samples": n,
            "baseline": own is not None and abs(own - 1) < 1e-6, "source": str(s.path)}


def _evaluate_into(folder: Path, sets: list[SampleSet], ref_path: Path, opts: MetricOptions,
                   clip: ClipOptions | None, ckpt: Path | None, steps: int | None,
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
    base = _base_steps(sets, steps)
    need_costs = any("compute_fraction" not in s.meta and "run_fraction" not in s.meta for s in sets)
    costs = schedule_costs(ckpt, base) if ckpt is not None and need_costs else None
    spec = feature_spec(opts.features)
    rows = []
    for i, (s, im) in enumerate(zip(sets, images)):
        progress(f"[{i + 1}/{len(sets)}] {s.label}: {len(im)} samples")
        row = _row(s, len(im), base, costs)
        row.update(compute_metrics(im, ref, opts))
        if spec.class_accuracy is not None and s.meta.get("labels"):
            row["class_accuracy"] = spec.class_accuracy(im, s.meta["labels"])
        if clip_model is not None:
            from flexcli.metrics.clip import clip_score

            row["clip"] = clip_score(im, s.meta.get("prompts", prompts), clip.model, clip.weights, clip=clip_model)
        rows.append(row)
    latency_ratios(rows)
    config = _config(ref_path, ref, opts, spec, clip if clip_model else None, ckpt, base)
    (folder / "evaluate.json").write_text(json.dumps(config, indent=2) + "\n")
    return _write(folder, rows, clip.match if clip_model is not None else None)


def _config(ref_path: Path, ref, opts: MetricOptions, spec, clip: ClipOptions | None, ckpt: Path | None,
            base: int) -> dict:
    """evaluate.json: what the numbers mean and where they come from (the plots read their titles here)."""
    return {"ref": str(ref_path), "ref_images": len(ref), "ref_sha256": ref.content_hash(),
            "ref_cache_name": ref_cache_name(ref, opts, spec), "features": spec.name,
            "features_description": spec.description,
            "inception_weights": str(opts.inception_weights) if spec.needs_inception_weights else None,
            "inception_sha256": file_sha256(Path(opts.inception_weights)) if spec.needs_inception_weights else None,
            "metrics": list(opts.metrics), "kid_subset_size": opts.kid_subset_size, "kid_subsets": opts.kid_subsets,
            "prc_neighborhood": opts.prc_neighborhood, "clip_model": clip.model if clip else None,
            "t2i_match": vars(clip.match) if clip else None, "checkpoint": str(ckpt) if ckpt else None, "steps": base,
            "compute_convention": f"FLOPs of the denoiser per sample relative to the all-powerful schedule at {base} "
                                  "steps, classifier-free guidance on (2 passes per step)",
            "class_accuracy": "share of samples that the feature extractor's classifier assigns to their requested "
                              "label" if spec.class_accuracy is not None else None,
            "versions": _versions()}


def _write(folder: Path, rows: list[dict], match: MatchOptions | None = None) -> EvalResult:
    """pareto.csv and the plots drawn from it (and from evaluate.json, written before); with CLIP scores
    (`match` given) the text-to-image baseline-matching table and its FID-vs-CLIP curves too."""
    from flexcli.evaluate.plots import plot_pareto_csv

    csv = folder / "pareto.csv"
    write_pareto_csv(rows, csv)
    files, notes = plot_pareto_csv(csv, folder)
    if match is not None:
        more, more_notes = write_match_table(read_pareto_csv(csv), folder, match)
        files, notes = files + more, notes + more_notes
    return EvalResult(folder, read_pareto_csv(csv), [csv, *files, folder / "evaluate.json"], notes=notes)


def evaluate_samples(specs: list[str], ref: Path, out: Path, opts: MetricOptions, *, clip: ClipOptions | None = None,
                     ckpt: Path | None = None, steps: int | None = None, target_compute: float | None = None,
                     force: bool = False, progress: Callable[[str], None] = lambda m: None) -> EvalResult:
    """Evaluate existing sample sets against `ref`; writes `out` (pareto.csv, plots, evaluate.json) atomically.

    Compute is relative to the all-powerful run at `steps` (default: the most steps of any run, else 250)."""
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


def split_cell(cell: dict, steps: int) -> tuple[str, int, float, dict]:
    """A sweep cell {schedule: 'X' or 'X of N', cfg_scale, [steps], other sample options} -> (schedule, step
    count, cfg scale, the other options); a one-line error when it lacks the schedule or the scale, or when the
    schedule does not fit its step count."""
    from flexcli.evaluate.runs import split_setting

    if not isinstance(cell, dict) or "schedule" not in cell or "cfg_scale" not in cell:
        raise FlexcliError(f"sweep cell {cell!r} needs a schedule and a cfg_scale",
                           "write e.g. {schedule: 30/15, cfg_scale: 5, guidance: weak, cfg_scale_all_weak: 8}")
    options = {k: v for k, v in cell.items() if k not in ("schedule", "cfg_scale", "steps")}
    try:
        n, scale = int(cell.get("steps", steps)), float(cell["cfg_scale"])
    except (TypeError, ValueError):
        raise FlexcliError(f"sweep cell {cell!r}: steps must be a whole number and cfg_scale a number",
                           "write e.g. {schedule: 22/11, steps: 38, cfg_scale: 5}") from None
    sched, n = split_setting(str(cell["schedule"]), n)
    sweep_settings([f"{sched} of {n}"], steps)  # counts and segment lengths fit the step count
    return sched, n, scale, options


def sweep(sample_fn: SampleFn, schedules: list[str], cfg_scales: list[float], ref: Path, out: Path,
          opts: MetricOptions, *, clip: ClipOptions | None = None, ckpt: Path | None = None, steps: int = 250,
          baseline_steps: list[int] | None = None, cells: list[dict] | None = None,
          target_compute: float | None = None, force: bool = False, num_samples: int | None = None,
          progress: Callable[[str], None] = lambda m: None) -> EvalResult:
    """Sample every (schedule, step count, cfg scale) with `sample_fn` into out/runs/, then evaluate them all.

    Schedules run at `steps` ('X of N' at N steps); with `baseline_steps` the fewer-steps baseline joins them:
    the all-powerful schedule at `steps` and at each of those counts (`sweep_settings`). `cells` are single
    settings with their own sample options (`split_cell`), e.g. weak guidance with its own s_cfg0 or another
    solver. Compute is relative to the all-powerful run at `steps`. `sample_fn` must use the same seeds for
    every combination (it is called with the same arguments but the schedule, the scale, at other step counts
    `steps=N`, and a cell's options as keywords). The reference is opened first, so bad input fails before any
    sampling.
    """
    out = Path(out)
    check_output(out, force)
    _check_target(target_compute)
    settings = sweep_settings(schedules, steps, baseline_steps)
    grid = [(s, n, c, {}) for s, n in settings for c in cfg_scales]
    extra = [split_cell(cell, steps) for cell in cells or []]
    for *_, options in extra:
        if hasattr(sample_fn, "check"):
            sample_fn.check(options)
    labels = [setting_label(s, n, c, options, steps) for s, n, c, options in grid + extra]
    if len(set(labels)) < len(labels):
        twice = next(x for x in labels if labels.count(x) > 1)
        raise FlexcliError(f"the sweep runs {twice} twice", "drop the sweep cell that repeats a schedule x scale")
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
        for (s, n, c, options), label in zip(grid + extra, labels):
            progress(f"sampling schedule {label.replace('@', ', cfg ')}")
            kw = {**options, **({} if n == steps else {"steps": n})}
            run_dir = Path(sample_fn(s, c, runs / schedule_dirname(s, c, None if n == steps else n, options), **kw))
            done.append(f"{label}={run_dir}")
        sets = resolve_samples(done)
        res = _evaluate_into(tmp, sets, Path(ref), opts, clip, ckpt, steps, progress)
        for r in res.rows:  # sources pointed into the temporary folder
            if str(r["source"]).startswith(str(tmp)):
                r["source"] = str(out / Path(r["source"]).relative_to(tmp))
        write_pareto_csv(res.rows, tmp / "pareto.csv")
    return _finish(res, out, target_compute)
