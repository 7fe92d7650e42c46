"""The main job on the text-to-image built-in default (issue #13, `flexcli demo --family t2i`): the paper's T2I
claim (§4.2, Fig. 7) end to end on captioned Fashion-MNIST with the real all-MiniLM-L6-v2 text encoder.

1. flexify the shipped base (`PixArt-FMNIST/4`, 64 tokens) with the weak patch 8 (16 tokens, LoRA mode);
2. distil the weak mode from the powerful one (§3.2) on captioned Fashion-MNIST (`fashion-mnist-captions`);
3. sweep weak-first schedules x guidance scales, plus single `cells` (weak guidance, the fewer-steps baseline
   with DPM-Solver++), over held-out prompts (templates never seen in training, one class each, balanced;
   encoded once), the same seeds and prompts in every cell, scored against the
   Fashion-MNIST test split in the shipped classifier's feature space (`--features fmnist`: FID/KID/
   precision/recall) and for text alignment: the classifier's accuracy on the class the prompt names
   (`alignment`, in points; a CLIP-score stand-in that needs no downloaded weights). With `clip_weights`
   (open-clip weights by path), the CLIP score is added too, and its own match table (`t2i_match.csv`);
4. write `pareto.csv`, the plots, Fig. 7 (left) `fid_vs_alignment_t2i.png` and Fig. 7 (middle)
   `t2i_match_alignment.csv`: the all-powerful baseline at its fixed CFG (4.5, as PixArt), each schedule at its
   best CFG, matches within +5 % FID and -1 alignment point, the cheapest match marked; `job.json`, `config.yaml`.

Settings (`T2IJobSettings`) resolve like every command's: defaults (or `--quick`'s) < recipe < overrides.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flexcli import config
from flexcli.builtin import classifier
from flexcli.builtin.demo import (CONFIG_NAME, Progress, check_sweep_extras, distill_config, fresh_folder,
                                  metric_options, write_reference)
from flexcli.errors import FlexcliError

BASE = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_pixart" / "model.safetensors"
DATA = "fashion-mnist-captions"


@dataclass
class T2IJobSettings:
    weak_patch: int = 8
    distill_steps: int = 1000
    distill_batch: int = 64
    distill_lr: float = 1e-3
    num_samples: int = 400  # held-out prompts, 40 per class (sample i names class i mod 10)
    ref_images: int = 2000
    steps: int = 50
    solver: str = "ddpm"
    # 100 / 59.3 % compute with merged LoRAs (exact fractions in pareto.csv)
    schedules: list[str] = field(default_factory=lambda: ["50/50", "22/22"])
    cfg_scales: list[float] = field(default_factory=lambda: [3.0, 4.5])  # a subset of App. B.5's grid
    baseline_steps: list[int] = field(default_factory=list)  # the fewer-steps baseline: all-powerful at these counts
    # single settings with their own sample options (flexcli.evaluate.core.split_cell), from the 400-sample screen
    # of benchmarks/results/t2i: the baseline at its lowest-FID scale, flex with weak guidance (57.9 %) and fewer
    # steps with DPM-Solver++ (60 %), the strongest alternative there
    cells: list[dict] = field(default_factory=lambda: [
        {"schedule": "50/50", "cfg_scale": 2.0},
        {"schedule": "28/14", "cfg_scale": 3.0, "guidance": "weak"},
        {"schedule": "28/14", "cfg_scale": 4.5, "guidance": "weak"},
        {"schedule": "30/30 of 30", "cfg_scale": 3.0, "solver": "dpm++2m"}])
    baseline_cfg: float = 4.5  # Fig. 7 (middle): the baseline's fixed scale (PixArt's default)
    fid_tol: float = 0.05  # a match: FID <= baseline x (1 + fid_tol) ...
    alignment_tol: float = 1.0  # ... and alignment >= baseline - alignment_tol (points)
    guidance: str = "cfg"
    merge_lora: bool = True
    batch_size: int = 100
    seed: int = 0
    clip_weights: str | None = None  # open-clip weights (a local file): adds the CLIP score
    clip_model: str = "ViT-B-32"


QUICK = T2IJobSettings(distill_steps=400, num_samples=100, ref_images=500, steps=20, schedules=["20/20", "10/10"],
                       cfg_scales=[3.0, 4.5],
                       cells=[{"schedule": "12/6", "cfg_scale": 3.0, "guidance": "weak"},
                              {"schedule": "12/12 of 12", "cfg_scale": 3.0, "solver": "dpm++2m"}])


def _validate(job: T2IJobSettings, where: str) -> None:
    counts = ("weak_patch", "distill_steps", "distill_batch", "num_samples", "ref_images", "steps", "batch_size")
    bad = [k for k in counts if getattr(job, k) < 1] + (["distill_lr"] if job.distill_lr <= 0 else [])
    if bad:
        raise FlexcliError(f"{where}: {bad[0]} must be positive", f"give {bad[0]} a positive value")
    check_sweep_extras(job.baseline_steps, job.cells, job.steps, where)
    if not job.schedules or not job.cfg_scales:
        raise FlexcliError(f"{where}: schedules and cfg_scales must not be empty", "e.g. schedules: [50/50, 22/22]")
    if job.clip_weights is not None and not Path(job.clip_weights).is_file():
        raise FlexcliError(f"--clip-weights {job.clip_weights} not found", "pass a local open-clip weights file")


def settings(quick: bool = False, recipe: str | Path | None = None, **overrides) -> T2IJobSettings:
    """The job's settings: the defaults (or the quick ones) < `recipe` < `overrides` (None values: not given)."""
    return config.resolve(T2IJobSettings, recipe, overrides, base=QUICK if quick else T2IJobSettings(),
                          validate=_validate, noun="demo setting")


def match_options(job: T2IJobSettings):
    from flexcli.evaluate.t2i import MatchOptions

    return MatchOptions(baseline_cfg=job.baseline_cfg, fid_tol=job.fid_tol, clip_tol=job.alignment_tol,
                        score="alignment", score_label="alignment (class accuracy, %)")


def write_prompts(path: Path, num_samples: int, text_length: int, cache_dir: Path,
                  negative: bool = False) -> tuple[Path, list[int]]:
    """Held-out prompts for `num_samples` samples (sample i names class i mod 10), encoded once by MiniLM, as a
    prompt-embeds file for `flexcli sample` (`--prompt-embeds`): (path, each sample's class). With `negative`, the
    encoded empty caption too, the null caption of models without a learned one (Wan)."""
    from flexcli.builtin.captions import _minilm, encode_cached, heldout_prompt_set
    from flexcli.text import TextEncoding, save_prompt_embeds

    prompts, labels = heldout_prompt_set(num_samples)
    embeds, mask = encode_cached(prompts, text_length, cache_dir)
    null = TextEncoding(*encode_cached([""], text_length, cache_dir), [""]) if negative else None
    save_prompt_embeds(path, TextEncoding(embeds, mask, prompts, negative=null), _minilm(text_length).identity)
    return path, labels


def alignment(source: Path) -> tuple[float, float]:
    """(alignment in points, class accuracy) of a `flexcli sample` run (its folder or its samples.npz): does each
    sample show the class its prompt names (by the shipped classifier)?"""
    import numpy as np
    import torch

    from flexcli.builtin.captions import class_of_prompt

    run_dir = source if source.is_dir() else source.parent
    named = class_of_prompt()
    prompts = json.loads((run_dir / "run.json").read_text())["prompts"]
    with np.load(run_dir / "samples.npz") as z:
        images = torch.from_numpy(z["arr_0"])
    acc = classifier.class_accuracy(images, [named[p] for p in prompts[:len(images)]])["accuracy"]
    return 100.0 * acc, acc


def run_t2i_job(out: str | Path, *, quick: bool = False, base: str | Path | None = None, force: bool = False,
                progress: Progress | None = None, job: T2IJobSettings | None = None) -> dict:
    """Everything above; returns {"pareto_csv", "files", "rows", "summary", "notes", "distilled", "seconds"}."""
    from flexcli.api import flexify_checkpoint
    from flexcli.train import distill

    progress = progress or (lambda stage, done, total: None)
    job = job or settings(quick)
    base = Path(base) if base is not None else BASE
    if not base.exists():
        raise FlexcliError(f"base checkpoint {base} not found", "train it: flexcli builtin train-base --recipe "
                           "recipes/base/fashion_mnist_pixart.yaml --out runs/base-t2i")
    classifier.load_classifier()  # fails early, with the command to train it
    out = fresh_folder(Path(out), force)
    start = time.perf_counter()
    work = out / "work"
    work.mkdir()
    config.save_resolved(job, out / CONFIG_NAME, "resolved flexcli demo --family t2i settings (defaults or --quick "
                         "< recipe < flags)")
    progress("reference", 0, 1)
    ref = write_reference(work / "fashion_mnist_test.npz", job.ref_images)
    progress("reference", 1, 1)
    progress("flexify", 0, 1)
    flex, _, _ = flexify_checkpoint(base, [job.weak_patch], work / "base-flex.safetensors", force=True)
    progress("flexify", 1, 1)
    cfg = distill_config(job.distill_steps, job.distill_batch, job.distill_lr, data_limit=4096, seed=job.seed,
                         data=DATA)

    def on_step(event, data):
        if event == "step":
            progress("distill", data.step, data.steps)
    res = distill(flex, work / "distill", config=cfg, callback=on_step)
    rows, files, notes = _sweep(res.checkpoint, job, ref, out, work, progress)
    from flexcli.evaluate.report import table_lines

    lines = table_lines(rows) + [""] + notes
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    summary = {"settings": asdict(job), "quick": quick, "base": str(base), "distilled": str(res.checkpoint),
               "distill_final_loss": res.final_loss, "seconds": round(time.perf_counter() - start, 1),
               "notes": notes}
    (out / "job.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {"pareto_csv": out / "pareto.csv", "rows": rows, "summary": lines, "notes": notes,
            "distilled": res.checkpoint, "seconds": summary["seconds"],
            "files": [*files, out / "summary.txt", out / "job.json", out / CONFIG_NAME]}


def _sweep(checkpoint: Path, job: T2IJobSettings, ref: Path, out: Path, work: Path, progress: Progress):
    """Sample and score every (schedule, guidance scale) and every cell: (pareto rows with alignment, files,
    notes)."""
    from flexcli.api import load_model
    from flexcli.evaluate.core import ClipOptions, sweep, sweep_settings
    from flexcli.evaluate.pareto import read_pareto_csv, write_pareto_csv
    from flexcli.evaluate.plots import plot_pareto_csv
    from flexcli.evaluate.sampling import library_sample_fn
    from flexcli.evaluate.t2i import MatchOptions, write_match_table

    progress("prompts", 0, 1)
    text_length = load_model(checkpoint).text_length
    embeds, _ = write_prompts(work / "prompts.safetensors", job.num_samples, text_length, work / "cache")
    progress("prompts", 1, 1)
    grid = sweep_settings(job.schedules, job.steps, job.baseline_steps)
    n_settings = len(grid) * len(job.cfg_scales) + len(job.cells)
    done = {"n": 0}

    def on_sweep(message: str) -> None:
        if message.startswith("sampling schedule"):
            progress("sample", done["n"], n_settings)
            done["n"] += 1
        elif message.startswith("["):
            progress("metrics", int(message[1:message.index("/")]), n_settings)
    fn = library_sample_fn(checkpoint, job.num_samples, job.seed, job.steps, None, solver=job.solver,
                           guidance=job.guidance, batch_size=job.batch_size, prompt_embeds=str(embeds),
                           merge_lora=job.merge_lora)
    clip = None
    if job.clip_weights is not None:
        clip = ClipOptions(weights=Path(job.clip_weights), model=job.clip_model,
                           match=MatchOptions(baseline_cfg=job.baseline_cfg, fid_tol=job.fid_tol))
    ev = sweep(fn, job.schedules, job.cfg_scales, ref, out / "sweep", metric_options(job.num_samples, work / "cache"),
               clip=clip, ckpt=checkpoint, steps=job.steps, baseline_steps=job.baseline_steps, cells=job.cells,
               num_samples=job.num_samples, progress=on_sweep)
    progress("sample", n_settings, n_settings)
    for r in ev.rows:
        r["alignment"], r["class_accuracy"] = alignment(Path(r["source"]))
    csv = out / "pareto.csv"
    write_pareto_csv(ev.rows, csv)
    files, notes = plot_pareto_csv(csv, out)
    more, more_notes = write_match_table(read_pareto_csv(csv), out, match_options(job))
    files, notes = [csv, *files, *more], notes + more_notes
    for name in ("t2i_match.csv", "fid_vs_clip_t2i.png"):  # the CLIP table, when --clip-weights was given
        if (out / "sweep" / name).exists():
            shutil.copy(out / "sweep" / name, out / name)
            files.append(out / name)
    return read_pareto_csv(csv), files, notes + ([n for n in ev.notes if "baseline" in n] if clip else [])
