"""The main job on the built-in default (issue #7, `flexcli demo`): the paper's method end to end on Fashion-MNIST.

1. flexify the shipped base (`DiT-FMNIST/4`, 64 tokens) with the weak patch 8 (16 tokens, LoRA mode);
2. distil the weak mode from the powerful one (§3.2) on Fashion-MNIST;
3. sweep weak-first schedules x guidance scales with the same seeds and labels (`flexcli.evaluate.core.sweep`),
   beside the simplest alternative, fewer powerful steps (`baseline_steps`: every step at the powerful patch
   size), plus single `cells` with their own options (flex with weak guidance, fewer steps with DPM-Solver++),
   against the Fashion-MNIST test split, with the shipped domain classifier as the feature extractor
   (`--features fmnist`: FID/KID/precision/recall) and its class accuracy;
4. write `pareto.csv` (with `class_accuracy` and the baseline columns), the plots, `evaluate.json`, the summary
   (`summary.txt`: every row, and flex vs fewer steps at `compare_compute`), `job.json` and the resolved
   `config.yaml` into the output folder; the samples, checkpoints and reference stay under `work/`.

The job's settings (`JobSettings`) resolve like every command's: defaults (or `--quick`'s) < recipe < overrides.
The library never prints: `progress(stage, done, total)` reports each stage (distill steps, sampled settings).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from flexcli import config
from flexcli.builtin import classifier
from flexcli.builtin.fashion_mnist import fashion_mnist, model_pixels
from flexcli.errors import FlexcliError

BASE = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_dit" / "model.safetensors"
CONFIG_NAME = "config.yaml"
Progress = Callable[[str, int, int], None]


@dataclass
class JobSettings:
    weak_patch: int = 8
    distill_steps: int = 1000
    distill_batch: int = 64
    distill_lr: float = 1e-3
    num_samples: int = 400
    ref_images: int = 2000
    steps: int = 50
    solver: str = "ddpm"
    # 100 / 84.9 / 69.8 / 59.3 % compute with merged LoRAs; FID is best near cfg 2.5-3 (benchmarks/results/fmnist_claims)
    schedules: list[str] = field(default_factory=lambda: ["50/50", "40/40", "30/30", "23/23"])
    cfg_scales: list[float] = field(default_factory=lambda: [2.5])
    # the fewer-steps baseline: all-powerful runs at these step counts (and at `steps`): 80 / 60 / 40 % compute
    baseline_steps: list[int] = field(default_factory=lambda: [40, 30, 20])
    # single settings with their own sample options (flexcli.evaluate.core.split_cell): each kind at the best
    # guidance of the flex-vs-fewer-steps benchmark (benchmarks/results/fewer_steps): flex with weak guidance,
    # s_cfg1 5 and more guidance on the all-weak steps (58.5 / 43.6 %), and fewer steps with DPM-Solver++ (60 / 44 %)
    cells: list[dict] = field(default_factory=lambda: [
        {"schedule": "30/15", "cfg_scale": 5.0, "guidance": "weak", "cfg_scale_all_weak": 8.0},
        {"schedule": "22/11 of 38", "cfg_scale": 5.0, "guidance": "weak", "cfg_scale_all_weak": 6.0},
        {"schedule": "30/30 of 30", "cfg_scale": 2.5, "solver": "dpm++2m"},
        {"schedule": "22/22 of 22", "cfg_scale": 2.5, "solver": "dpm++2m"}])
    compare_compute: float = 0.6  # the summary's flex vs fewer-steps comparison: best points at or under this
    guidance: str = "cfg"
    merge_lora: bool = True  # per-size merged weights: zero LoRA overhead at sampling time (§3.2)
    batch_size: int = 100
    seed: int = 0


QUICK = JobSettings(distill_steps=400, num_samples=100, ref_images=500, steps=20, schedules=["20/20", "10/10"],
                    cfg_scales=[2.5], baseline_steps=[12], compare_compute=0.63,  # 10/10: 62.3 %, 12 steps: 60 %
                    cells=[{"schedule": "12/6", "cfg_scale": 5.0, "guidance": "weak", "cfg_scale_all_weak": 8.0},
                           {"schedule": "12/12 of 12", "cfg_scale": 2.5, "solver": "dpm++2m"}])


def _validate(job: JobSettings, where: str) -> None:
    counts = ("weak_patch", "distill_steps", "distill_batch", "num_samples", "ref_images", "steps", "batch_size")
    bad = [k for k in counts if getattr(job, k) < 1] + (["distill_lr"] if job.distill_lr <= 0 else [])
    bad += ["compare_compute"] if not 0 < job.compare_compute <= 1 else []
    if bad:
        raise FlexcliError(f"{where}: {bad[0]} must be positive", f"give {bad[0]} a positive value")
    check_sweep_extras(job.baseline_steps, job.cells, job.steps, where)
    if not job.schedules or not job.cfg_scales:
        raise FlexcliError(f"{where}: schedules and cfg_scales must not be empty", "e.g. schedules: [50/50, 30/30]")


def check_sweep_extras(baseline_steps: list[int], cells: list[dict], steps: int, where: str) -> None:
    """The fewer-steps baseline's step counts and the single cells of a demo's sweep, checked when its settings
    resolve (not after the distillation)."""
    from flexcli.evaluate.core import split_cell
    from flexcli.sampling import resolve_config

    if not all(1 <= n <= steps for n in baseline_steps):
        raise FlexcliError(f"{where}: baseline_steps {baseline_steps} must lie in 1..steps ({steps})",
                           "the fewer-steps baseline runs fewer steps than `steps`, e.g. baseline_steps: [30, 20]")
    for cell in cells:
        try:
            sched, n, scale, options = split_cell(cell, steps)
            resolve_config({"checkpoint": "-", "out": "-", "steps": n, "schedule": sched, "cfg_scale": scale,
                            **options})
        except FlexcliError as e:
            raise FlexcliError(f"{where}: cells: {e.problem.removeprefix('command line: ')}", e.fix) from None


def settings(quick: bool = False, recipe: str | Path | None = None, **overrides) -> JobSettings:
    """The job's settings: the defaults (or the quick ones) < `recipe` < `overrides` (None values: not given)."""
    return config.resolve(JobSettings, recipe, overrides, base=QUICK if quick else JobSettings(), validate=_validate,
                          noun="demo setting")


def write_reference(path: Path, n: int, side: int = 32) -> Path:
    """The first n Fashion-MNIST test images as the model sees them (padded to side x side), uint8 NHWC .npz."""
    import numpy as np

    from flexcli.io.samples import to_uint8

    images, _ = fashion_mnist("test")
    np.savez(path, arr_0=to_uint8(model_pixels(images[:n], side)).numpy())
    return path


def distill_config(steps: int, batch_size: int, lr: float, *, data_limit: int | None, seed: int = 0,
                   where: str = "main job", data: str = "fashion-mnist"):
    """The built-in defaults' weak-mode distillation settings (Fashion-MNIST, or `data`: its captioned version;
    clipped grads, warmed-up EMA)."""
    from flexcli.train.config import resolve

    return resolve(None, {"data": data, "data_limit": data_limit, "steps": steps, "batch_size": batch_size,
                          "lr": lr, "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": True, "seed": seed,
                          "ckpt_every": max(steps, 1)}, where=where)


def metric_options(num_samples: int, cache_dir: Path):
    """FID/KID/precision/recall in the shipped classifier's feature space (`--features fmnist`)."""
    from flexcli.metrics.fid import MetricOptions

    return MetricOptions(features=classifier.FEATURES_NAME, metrics=("fid", "kid", "prc"),
                         kid_subset_size=min(1000, num_samples), kid_subsets=20, cache_dir=cache_dir)


def run_main_job(out: str | Path, *, quick: bool = False, base: str | Path | None = None, force: bool = False,
                 progress: Progress | None = None, job: JobSettings | None = None) -> dict:
    """Everything above; returns {"pareto_csv", "files", "rows", "summary", "distilled", "seconds"}."""
    from flexcli.api import flexify_checkpoint
    from flexcli.train import distill

    progress = progress or (lambda stage, done, total: None)
    job = job or settings(quick)
    base = _base_checkpoint(base)
    classifier.load_classifier()  # fails early, with the command to train it
    out = fresh_folder(Path(out), force)
    start = time.perf_counter()
    work = out / "work"
    work.mkdir()
    config.save_resolved(job, out / CONFIG_NAME, "resolved flexcli demo settings (defaults or --quick < recipe)")

    progress("reference", 0, 1)
    ref = write_reference(work / "fashion_mnist_test.npz", job.ref_images)
    progress("reference", 1, 1)

    progress("flexify", 0, 1)
    flex, _, _ = flexify_checkpoint(base, [job.weak_patch], work / "base-flex.safetensors", force=True)
    progress("flexify", 1, 1)

    cfg = distill_config(job.distill_steps, job.distill_batch, job.distill_lr, data_limit=4096, seed=job.seed)
    progress("distill", 0, job.distill_steps)

    def on_step(event, data):
        if event == "step":
            progress("distill", data.step, data.steps)
    res = distill(flex, work / "distill", config=cfg, callback=on_step)

    ev = _sweep(res.checkpoint, job, ref, work, progress)
    files = [out / f.name for f in ev.files]
    for f, dest in zip(ev.files, files):  # the results once, at the top; the samples stay in work/sweep/runs
        f.replace(dest)
    from flexcli.evaluate.report import comparison_lines, table_lines

    summary = table_lines(ev.rows) + [""] + comparison_lines(ev.rows, job.compare_compute)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    record = {"settings": asdict(job), "quick": quick, "base": str(base), "distilled": str(res.checkpoint),
              "distill_final_loss": res.final_loss, "seconds": round(time.perf_counter() - start, 1),
              "notes": ev.notes}
    (out / "job.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"pareto_csv": out / "pareto.csv", "rows": ev.rows, "summary": summary, "distilled": res.checkpoint,
            "files": [*files, out / "summary.txt", out / "job.json", out / CONFIG_NAME], "seconds": record["seconds"]}


def _base_checkpoint(base: str | Path | None) -> Path:
    if base is not None:
        if not Path(base).exists():
            raise FlexcliError(f"base checkpoint {base} not found", "check the path, or leave out --base to use the "
                               "shipped DiT-FMNIST/4")
        return Path(base)
    if not BASE.exists():
        raise FlexcliError(f"the shipped base checkpoint {BASE} is missing",
                           "reinstall flexcli, or train it: flexcli builtin train-base --recipe "
                           "recipes/base/fashion_mnist_dit.yaml --out runs/base, then pass --base")
    return BASE


def fresh_folder(out: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not force:
        raise FlexcliError(f"output folder {out} is not empty", "pass --force to replace it or choose another --out")
    if out.exists() and force:
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _sweep(checkpoint: Path, job: JobSettings, ref: Path, work: Path, progress: Progress):
    """Sample and score every (schedule or fewer-steps baseline, guidance scale) of the job into work/sweep."""
    from flexcli.evaluate.core import split_cell, sweep, sweep_settings
    from flexcli.evaluate.sampling import library_sample_fn

    grid = sweep_settings(job.schedules, job.steps, job.baseline_steps)
    cell_steps = [split_cell(cell, job.steps)[1] for cell in job.cells]
    n_settings = len(grid) * len(job.cfg_scales) + len(cell_steps)
    total = job.num_samples * (len(job.cfg_scales) * sum(n for _, n in grid) + sum(cell_steps))  # steps x samples
    done = {"steps": 0}

    def on_sample(info: dict) -> None:
        done["steps"] += info["batch"]
        progress("sample", min(done["steps"], total), total)

    def on_sweep(message: str) -> None:
        if message.startswith("["):
            progress("metrics", int(message[1:message.index("/")]) - 1, n_settings)
    progress("sample", 0, total)
    fn = library_sample_fn(checkpoint, job.num_samples, job.seed, job.steps, None, progress=on_sample,
                           solver=job.solver, guidance=job.guidance, batch_size=job.batch_size,
                           class_labels=list(range(10)), merge_lora=job.merge_lora)
    opts = metric_options(job.num_samples, work / "cache")
    ev = sweep(fn, job.schedules, job.cfg_scales, ref, work / "sweep", opts, ckpt=checkpoint, steps=job.steps,
               baseline_steps=job.baseline_steps, cells=job.cells, num_samples=job.num_samples, progress=on_sweep)
    progress("metrics", n_settings, n_settings)
    return ev
