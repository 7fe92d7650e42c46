"""The main job on the built-in default (issue #7, `flexcli demo`): the paper's method end to end on Fashion-MNIST.

1. flexify the shipped base (`DiT-FMNIST/4`, 64 tokens) with the weak patch 8 (16 tokens, LoRA mode);
2. distil the weak mode from the powerful one (§3.2) on Fashion-MNIST;
3. sweep weak-first schedules x guidance scales with the same seeds and labels (`flexcli.evaluate.core.sweep`),
   against the Fashion-MNIST test split, with the shipped domain classifier as the feature extractor
   (`--features fmnist`: FID/KID/precision/recall) and its class-conditional accuracy;
4. write `pareto.csv` (with a `class_accuracy` column), the plots, `job.json` and the resolved `config.yaml`.

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
    cfg_scales: list[float] = field(default_factory=lambda: [2.5, 4.0])
    guidance: str = "cfg"
    merge_lora: bool = True  # per-size merged weights: zero LoRA overhead at sampling time (§3.2)
    batch_size: int = 100
    seed: int = 0


QUICK = JobSettings(distill_steps=400, num_samples=100, ref_images=500, steps=20, schedules=["20/20", "10/10"],
                    cfg_scales=[2.5])


def _validate(job: JobSettings, where: str) -> None:
    counts = ("weak_patch", "distill_steps", "distill_batch", "num_samples", "ref_images", "steps", "batch_size")
    bad = [k for k in counts if getattr(job, k) < 1] + (["distill_lr"] if job.distill_lr <= 0 else [])
    if bad:
        raise FlexcliError(f"{where}: {bad[0]} must be positive", f"give {bad[0]} a positive value")
    if not job.schedules or not job.cfg_scales:
        raise FlexcliError(f"{where}: schedules and cfg_scales must not be empty", "e.g. schedules: [50/50, 30/30]")


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


def _class_accuracy(source: Path) -> float | None:
    """Class-conditional accuracy of a `flexcli sample` run (its folder or its samples.npz)."""
    import numpy as np
    import torch

    run_dir = source if source.is_dir() else source.parent
    run = json.loads((run_dir / "run.json").read_text())
    labels = run.get("labels") or run.get("class_labels")
    if not labels:
        return None
    with np.load(run_dir / "samples.npz") as z:
        images = torch.from_numpy(z["arr_0"])
    return classifier.class_accuracy(images, labels[:len(images)])["accuracy"]


def run_main_job(out: str | Path, *, quick: bool = False, base: str | Path | None = None, force: bool = False,
                 progress: Progress | None = None, job: JobSettings | None = None) -> dict:
    """Everything above; returns {"pareto_csv", "files", "rows", "distilled", "seconds"}."""
    from flexcli.api import flexify_checkpoint
    from flexcli.evaluate.pareto import read_pareto_csv, write_pareto_csv
    from flexcli.evaluate.plots import plot_pareto_csv
    from flexcli.train import distill

    progress = progress or (lambda stage, done, total: None)
    job = job or settings(quick)
    base = Path(base) if base is not None else BASE
    if not base.exists():
        raise FlexcliError(f"base checkpoint {base} not found",
                           "train it: flexcli builtin train-base --recipe recipes/base/fashion_mnist_dit.yaml "
                           "--out runs/base")
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

    def on_step(event, data):
        if event == "step":
            progress("distill", data.step, data.steps)
    res = distill(flex, work / "distill", config=cfg, callback=on_step)

    rows = _sweep(res.checkpoint, job, ref, out, work, progress)
    csv = out / "pareto.csv"
    write_pareto_csv(rows, csv)
    files, notes = plot_pareto_csv(csv, out)
    summary = {"settings": asdict(job), "quick": quick, "base": str(base), "distilled": str(res.checkpoint),
               "distill_final_loss": res.final_loss, "seconds": round(time.perf_counter() - start, 1),
               "notes": notes}
    (out / "job.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {"pareto_csv": csv, "files": [csv, *files, out / "job.json", out / CONFIG_NAME],
            "rows": read_pareto_csv(csv), "distilled": res.checkpoint, "seconds": summary["seconds"]}


def fresh_folder(out: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not force:
        raise FlexcliError(f"output folder {out} is not empty", "pass --force to replace it or choose another --out")
    if out.exists() and force:
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _sweep(checkpoint: Path, job: JobSettings, ref: Path, out: Path, work: Path, progress: Progress) -> list[dict]:
    """Sample and score every (schedule, guidance scale) of the job: pareto rows with their class accuracy."""
    from flexcli.evaluate.core import sweep
    from flexcli.evaluate.sampling import library_sample_fn

    n_settings = len(job.schedules) * len(job.cfg_scales)
    done = {"n": 0}

    def on_sweep(message: str) -> None:
        if message.startswith("sampling schedule"):
            progress("sample", done["n"], n_settings)
            done["n"] += 1
        elif message.startswith("["):
            progress("metrics", int(message[1:message.index("/")]), n_settings)
    fn = library_sample_fn(checkpoint, job.num_samples, job.seed, job.steps, None, solver=job.solver,
                           guidance=job.guidance, batch_size=job.batch_size, class_labels=list(range(10)),
                           merge_lora=job.merge_lora)
    opts = metric_options(job.num_samples, work / "cache")
    ev = sweep(fn, job.schedules, job.cfg_scales, ref, out / "sweep", opts, ckpt=checkpoint, steps=job.steps,
               num_samples=job.num_samples, progress=on_sweep)
    progress("sample", n_settings, n_settings)
    for r in ev.rows:
        r["class_accuracy"] = _class_accuracy(Path(r["source"]))
    return ev.rows
