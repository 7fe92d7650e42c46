"""The main job on the video built-in default (issue #15, `flexcli demo --family video`): the paper's video claim
(§4.3, Fig. 8) end to end on moving Fashion-MNIST.

1. flexify the shipped base (`Wan-FMNIST`, patch 1x4x4, 256 tokens) once per weak mode (LoRA mode): temporal
   2x4x4 and spatial 1x8x8 (128 and 64 tokens);
2. distil each weak mode from the powerful one (flow matching: velocity distillation, §3.2) on moving
   Fashion-MNIST (`moving-fashion-mnist`);
3. sample held-out prompts (templates never seen in training, sample i names class i mod 10, encoded once;
   the same seeds and prompts everywhere) with the all-powerful baseline and, per mode, weak-first schedules
   that run `weak_steps` of the `steps` weak, at each guidance scale; the fewer-steps baseline (all-powerful at
   `baseline_steps`) and single `cells` (e.g. weak guidance) beside them;
4. score every set against held-out real clips (`flexcli.builtin.video_metrics`): per-frame FID of the item crops
   in the shipped classifier's features (`fid`), per-frame class accuracy, the frame-to-frame temporal distance
   against the real clips' spread, and the item's motion;
5. write `pareto.csv`, Fig. 8 (`fig8_video.png`: each score vs the share of steps run weak, one line per mode and
   guidance scale), `summary.txt` (every row, then the match verdicts: per mode the cheapest schedule within
   `fid_tol` FID, `accuracy_tol` points and the real temporal spread of the baseline, and flex against fewer
   steps), `job.json` and the resolved `config.yaml`. Samples, checkpoints and the reference stay under `work/`.

Settings (`VideoJobSettings`) resolve like every command's: defaults (or `--quick`'s) < recipe < overrides.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from flexcli import config
from flexcli.builtin import classifier
from flexcli.builtin.demo import CONFIG_NAME, Progress, distill_config, fresh_folder, metric_options
from flexcli.builtin.demo_t2i import write_prompts
from flexcli.errors import FlexcliError

BASE = Path(__file__).resolve().parents[1] / "assets" / "moving_fmnist_wan" / "model.safetensors"
DATA = "moving-fashion-mnist"
TRAIN_HINT = "flexcli builtin train-base --recipe recipes/base/moving_fmnist_wan.yaml --out runs/base-video"


@dataclass
class VideoJobSettings:
    modes: dict = field(default_factory=lambda: {"temporal": [2, 4, 4], "spatial": [1, 8, 8]})
    lora_rank: int = 32  # the paper's
    distill_steps: int = 250
    distill_batch: int = 16
    distill_lr: float = 1e-3
    num_samples: int = 100  # held-out prompts, 10 per class (sample i names class i mod 10)
    ref_clips: int = 1000  # held-out real clips (their items never seen in training)
    steps: int = 20
    solver: str = "flow-unipc"
    flow_shift: float = 3.0
    weak_steps: list[int] = field(default_factory=lambda: [10, 15, 20])  # per mode: steps run weak, first
    cfg_scales: list[float] = field(default_factory=lambda: [3.0, 5.0])
    baseline_steps: list[int] = field(default_factory=lambda: [10, 14])  # the fewer-steps baseline (all-powerful):
    # 50 and 70 % of the compute, the rivals of the schedules at or above those levels
    cells: list[dict] = field(default_factory=list)  # {mode, schedule (x/y at `steps`), cfg_scale, options}
    fid_tol: float = 0.05  # a match: FID <= baseline x (1 + fid_tol), ...
    accuracy_tol: float = 2.0  # ... accuracy >= baseline - accuracy_tol points, |temporal_gap| <= 1
    guidance: str = "cfg"
    merge_lora: bool = True
    batch_size: int = 50
    seed: int = 0


QUICK = VideoJobSettings(distill_steps=60, num_samples=40, ref_clips=200, steps=10, weak_steps=[5, 10],
                         cfg_scales=[4.0], baseline_steps=[5])


def _validate(job: VideoJobSettings, where: str) -> None:
    from flexcli.flex.patches import parse_patch

    counts = ("lora_rank", "distill_steps", "distill_batch", "num_samples", "ref_clips", "steps", "batch_size")
    bad = [k for k in counts if getattr(job, k) < 1] + (["distill_lr"] if job.distill_lr <= 0 else [])
    if bad:
        raise FlexcliError(f"{where}: {bad[0]} must be positive", f"give {bad[0]} a positive value")
    if not job.modes or not job.cfg_scales:
        raise FlexcliError(f"{where}: modes and cfg_scales must not be empty",
                           "e.g. modes: {temporal: [2, 4, 4], spatial: [1, 8, 8]}, cfg_scales: [5]")
    for name, patch in job.modes.items():
        parse_patch(",".join(map(str, patch)) if isinstance(patch, (list, tuple)) else patch, 3, f"modes.{name}")
    counts = list(job.weak_steps) + list(job.baseline_steps)
    if not all(isinstance(n, int) and 1 <= n <= job.steps for n in counts):
        raise FlexcliError(f"{where}: weak_steps {job.weak_steps} and baseline_steps {job.baseline_steps} must lie "
                           f"in 1..steps ({job.steps})", "e.g. weak_steps: [10, 15, 20] of steps: 20")
    for cell in job.cells:
        if not isinstance(cell, dict) or cell.get("mode") not in job.modes or "cfg_scale" not in cell \
                or not isinstance(cell.get("schedule"), str):
            raise FlexcliError(f"{where}: cell {cell!r} needs a mode of {list(job.modes)}, a schedule and a "
                               "cfg_scale", "write e.g. {mode: temporal, schedule: 10/5, cfg_scale: 5, guidance: weak}")
        Setting(cell["mode"], cell["schedule"], job.steps, 1.0).weak  # the schedule fits `steps`


def settings(quick: bool = False, recipe: str | Path | None = None, **overrides) -> VideoJobSettings:
    """The job's settings: the defaults (or the quick ones) < `recipe` < `overrides` (None values: not given)."""
    return config.resolve(VideoJobSettings, recipe, overrides, base=QUICK if quick else VideoJobSettings(),
                          validate=_validate, noun="demo setting")


def patch_text(patch) -> str:
    """[2, 4, 4] or "2,4,4" -> "2,4,4" (flexify's --weak-patch form)."""
    return ",".join(map(str, patch)) if isinstance(patch, (list, tuple)) else str(patch).replace("x", ",")


@dataclass
class Setting:
    """One sampled set: its weak mode (None: all-powerful), its schedule (`x/y`: the conditional branch runs its
    last x steps powerful, the guidance branch its last y; paper App. B.4), step count, scale, options."""

    mode: str | None
    schedule: str
    steps: int
    cfg_scale: float
    options: dict = field(default_factory=dict)

    @property
    def weak(self) -> int:
        """Steps whose conditional branch runs weak (Fig. 8's x axis, as a count)."""
        from flexcli.diffusion.schedule import parse_schedule

        return sum(p == 2 for p in parse_schedule(self.schedule, self.steps, 1, 2).cond)

    @property
    def label(self) -> str:
        who = f"{self.mode} {self.schedule} of {self.steps}" if self.mode else f"powerful {self.steps} steps"
        extra = "".join(f" [{k} {v}]" for k, v in sorted(self.options.items()))
        return f"{who} @{self.cfg_scale:g}{extra}"


def job_settings(job: VideoJobSettings) -> list[Setting]:
    """Every set the job samples: the baseline and the fewer-steps baseline, then each mode's schedules, then
    the cells; each (schedule, scale) at each guidance scale."""
    out = [Setting(None, f"{n}/{n}", n, c) for n in [job.steps, *job.baseline_steps] for c in job.cfg_scales]
    out += [Setting(m, f"{job.steps - w}/{job.steps - w}", job.steps, c)
            for m in job.modes for w in job.weak_steps for c in job.cfg_scales]
    for cell in job.cells:
        options = {k: v for k, v in cell.items() if k not in ("mode", "schedule", "cfg_scale")}
        out.append(Setting(cell["mode"], cell["schedule"], job.steps, float(cell["cfg_scale"]), options))
    labels = [s.label for s in out]
    if len(set(labels)) < len(labels):
        raise FlexcliError(f"the demo samples {next(x for x in labels if labels.count(x) > 1)} twice",
                           "drop the cell that repeats a schedule x scale")
    return out


def run_video_job(out: str | Path, *, quick: bool = False, base: str | Path | None = None, force: bool = False,
                  progress: Progress | None = None, job: VideoJobSettings | None = None) -> dict:
    """Everything above; returns {"pareto_csv", "files", "rows", "summary", "distilled", "seconds"}."""
    from flexcli.builtin.moving_fmnist import heldout_clips
    from flexcli.builtin.video_metrics import score_clips

    progress = progress or (lambda stage, done, total: None)
    job = job or settings(quick)
    base = Path(base) if base is not None else BASE
    if not base.exists():
        raise FlexcliError(f"base checkpoint {base} not found", f"train it: {TRAIN_HINT}, then pass --base")
    net, _ = classifier.load_classifier()  # fails early, with the command to train it
    plan = job_settings(job)
    out = fresh_folder(Path(out), force)
    start = time.perf_counter()
    work = out / "work"
    work.mkdir()
    config.save_resolved(job, out / CONFIG_NAME, "resolved flexcli demo --family video settings (defaults or "
                         "--quick < recipe < flags)")
    progress("reference", 0, 1)
    real, real_labels = heldout_clips(job.ref_clips)
    ref = score_clips(real, net)
    progress("reference", 1, 1)
    checkpoints, losses = {None: base}, {}
    for name, patch in job.modes.items():
        _, checkpoints[name], losses[name] = flexify_and_distill(base, name, patch, job, work, progress)
    rows = _sample_and_score(plan, checkpoints, job, ref, net, work, progress)
    files = _write_results(rows, job, ref, ref.accuracy(real_labels), out)
    summary = summary_lines(rows, job)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    record = {"settings": asdict(job), "quick": quick, "base": str(base),
              "distilled": {k: str(v) for k, v in checkpoints.items() if k}, "distill_final_loss": losses,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "job.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"pareto_csv": out / "pareto.csv", "rows": rows, "summary": summary, "seconds": record["seconds"],
            "distilled": record["distilled"], "files": [*files, out / "summary.txt", out / "job.json",
                                                        out / CONFIG_NAME]}


def flexify_mode(base: Path, name: str, patch, job: VideoJobSettings, work: Path) -> Path:
    """`base` flexified with one weak mode (LoRA mode) into work/flex-NAME.safetensors."""
    from flexcli.api import flexify_checkpoint

    return flexify_checkpoint(base, [patch_text(patch)], work / f"flex-{name}.safetensors",
                              lora_rank=job.lora_rank, force=True)[0]


def flexify_and_distill(base: Path, name: str, patch, job: VideoJobSettings, work: Path,
                        progress: Progress) -> tuple[Path, Path, float]:
    """Flexify `base` with one weak mode (LoRA mode) into work/flex-NAME.safetensors and distil it into
    work/distill-NAME/: (the flexified checkpoint, the distilled one, the final distillation loss)."""
    from flexcli.train import distill

    progress(f"flexify {name}", 0, 1)
    flex = flexify_mode(base, name, patch, job, work)
    progress(f"flexify {name}", 1, 1)
    cfg = distill_config(job.distill_steps, job.distill_batch, job.distill_lr, data_limit=4096, seed=job.seed,
                         data=DATA)

    def on_step(event, data):
        if event == "step":
            progress(f"distill {name}", data.step, data.steps)
    res = distill(flex, work / f"distill-{name}", config=cfg, callback=on_step)
    return flex, res.checkpoint, res.final_loss


def _sample_and_score(plan: list[Setting], checkpoints: dict, job: VideoJobSettings, ref, net, work: Path,
                      progress: Progress) -> list[dict]:
    """Sample every setting into work/runs/ and score it: pareto rows."""
    from flexcli.api import load_model

    text_length = load_model(checkpoints[None]).text_length
    # Wan has no learned null caption: training dropped captions to the encoded "", so that is the negative
    embeds, labels = write_prompts(work / "prompts.safetensors", job.num_samples, text_length, work / "cache",
                                   negative=True)
    total = job.num_samples * sum(s.steps for s in plan)
    done = {"steps": 0}

    def on_sample(info: dict) -> None:
        done["steps"] += info["batch"]
        progress("sample", min(done["steps"], total), total)
    progress("sample", 0, total)
    (work / "runs").mkdir()
    opts = metric_options(job.num_samples * ref.predicted.shape[1], work / "cache")  # per frame
    rows = []
    for i, s in enumerate(plan):
        rows.append(sample_and_score(s, checkpoints[s.mode], job, embeds, labels, ref, net, opts,
                                     work / "runs" / f"{i:02d}", job.seed, on_sample))
        progress("metrics", i + 1, len(plan))
    return rows


def sample_and_score(s: Setting, checkpoint: Path, job: VideoJobSettings, embeds: Path, labels: list[int], ref,
                     net, opts, run_dir: Path, seed: int, on_sample=None) -> dict:
    """Sample one setting (`flexcli.sampling`, clip i with seed `seed` + i and prompt i of `embeds`) into
    `run_dir` and score its clips against the real ones (`ref`): a pareto row."""
    from flexcli.builtin.video_metrics import clip_row, score_clips
    from flexcli.sampling import resolve_config, run

    cfg = resolve_config({"checkpoint": str(checkpoint), "out": str(run_dir), "num_samples": job.num_samples,
                          "seed": seed, "steps": s.steps, "schedule": s.schedule, "cfg_scale": s.cfg_scale,
                          "solver": job.solver, "flow_shift": job.flow_shift, "guidance": job.guidance,
                          "batch_size": job.batch_size, "prompt_embeds": str(embeds), "merge_lora": job.merge_lora,
                          **s.options})
    run(cfg, on_sample)
    record = json.loads((run_dir / "run.json").read_text())
    with np.load(run_dir / "latents.npz") as z:
        clips = torch.from_numpy(z["arr_0"])
    row = {"label": s.label, "mode": s.mode or "powerful",
           "weak_patch": "x".join(map(str, job.modes[s.mode])) if s.mode else None,
           "weak_steps": s.weak, "weak_share": s.weak / s.steps, "steps": s.steps, "solver": job.solver,
           "schedule": s.schedule, "guidance": s.options.get("guidance", job.guidance), "cfg_scale": s.cfg_scale,
           "compute_fraction": record["flops"]["compute_fraction"] * s.steps / job.steps,
           "gflops_per_sample": record["flops"]["total"] / 1e9, "num_samples": len(clips),
           "baseline": s.mode is None, "seed": seed, "sampling_s": record["wall_time_s"], "source": str(run_dir)}
    row.update(clip_row(score_clips(clips, net), labels, ref, opts))
    row["fid"] = row.pop("frame_fid")  # pareto.csv's fid: per-frame FID of the item crops
    return row


def _write_results(rows: list[dict], job: VideoJobSettings, ref, real_accuracy: float, out: Path) -> list[Path]:
    from flexcli.builtin.video_metrics import temporal_reference
    from flexcli.evaluate.pareto import write_pareto_csv

    csv = out / "pareto.csv"
    write_pareto_csv(rows, csv)
    real = {"clips": len(ref.predicted), "temporal": temporal_reference(ref), "motion": ref.motion(),
            "class_accuracy": real_accuracy}
    (out / "real_clips.json").write_text(json.dumps(real, indent=2) + "\n")
    return [csv, plot_fig8(csv, out / "fig8_video.png", job), out / "real_clips.json"]


def plot_fig8(csv: Path, path: Path, job: VideoJobSettings) -> Path:
    """Fig. 8: per-frame FID, class accuracy and temporal distance vs the share of steps run weak, one line per
    weak mode (and guidance scale); the all-powerful baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.read_csv(csv)
    plain = df[df["guidance"] == job.guidance]
    panels = (("fid", "per-frame FID (classifier features)"), ("class_accuracy", "class accuracy of frames"),
              ("temporal", "frame-to-frame feature distance"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, title) in zip(axes, panels):
        for scale in sorted(plain["cfg_scale"].unique()):
            at = plain[plain["cfg_scale"] == scale]
            base = at[(at["mode"] == "powerful") & (at["steps"] == job.steps)]
            for mode in job.modes:
                line = pd.concat([base.assign(weak_share=0.0), at[at["mode"] == mode]]).sort_values("weak_share")
                ax.plot(100 * line["weak_share"], line[col], marker="o", label=f"{mode} @{scale:g}")
            if len(base):
                ax.axhline(float(base[col].iloc[0]), color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("steps run by the weak model (%)")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def baseline_row(rows: list[dict], job: VideoJobSettings) -> dict:
    """The all-powerful baseline at `job.steps`, at its lowest-FID guidance scale."""
    return min((r for r in rows if r["mode"] == "powerful" and r["steps"] == job.steps), key=lambda r: r["fid"])


def matches_baseline(row: dict, base: dict, job: VideoJobSettings) -> bool:
    """A match: FID within `fid_tol` of the baseline's, accuracy within `accuracy_tol` points, and the temporal
    distance within the real clips' spread (|temporal_gap| <= 1)."""
    return (row["fid"] <= base["fid"] * (1 + job.fid_tol) and abs(row["temporal_gap"]) <= 1
            and 100 * row["class_accuracy"] >= 100 * base["class_accuracy"] - job.accuracy_tol)


def summary_lines(rows: list[dict], job: VideoJobSettings) -> list[str]:
    """Every row, then per mode the cheapest match of the all-powerful baseline (at any scale vs the baseline at
    its lowest-FID scale) and flex against the fewer-steps baseline at equal or lower compute."""
    fid = lambda r: r["fid"]  # noqa: E731
    lines = [f"{'setting':<42} {'compute':>8} {'FID':>8} {'acc %':>6} {'temporal':>9} {'gap':>6} {'speed':>6}"]
    for r in sorted(rows, key=lambda r: (-r["compute_fraction"], r["label"])):
        lines.append(f"{r['label']:<42} {100 * r['compute_fraction']:>7.1f}% {fid(r):>8.2f} "
                     f"{100 * r['class_accuracy']:>6.1f} {r['temporal']:>9.2f} {r['temporal_gap']:>6.2f} "
                     f"{r['speed']:>6.2f}")
    base = baseline_row(rows, job)
    lines += ["", f"baseline: {base['label']} (its lowest-FID scale): FID {fid(base):.2f}, accuracy "
              f"{100 * base['class_accuracy']:.1f} %, temporal gap {base['temporal_gap']:.2f}",
              f"a match: FID <= {fid(base) * (1 + job.fid_tol):.2f}, accuracy >= "
              f"{100 * base['class_accuracy'] - job.accuracy_tol:.1f} %, |temporal gap| <= 1 (the real clips' std)"]
    fewer = [r for r in rows if r["mode"] == "powerful" and r["steps"] < job.steps]
    for mode in job.modes:
        flex = [r for r in rows if r["mode"] == mode]
        ok = [r for r in flex if matches_baseline(r, base, job)]
        if ok:
            best = min(ok, key=lambda r: (r["compute_fraction"], fid(r)))
            lines.append(f"{mode}: most compute saved with a match: {100 * (1 - best['compute_fraction']):.1f} % "
                         f"({best['label']}: FID {fid(best):.2f}, accuracy {100 * best['class_accuracy']:.1f} %)")
        else:
            lines.append(f"{mode}: no schedule matches the baseline")
        for r in sorted(flex, key=lambda r: r["compute_fraction"]):
            rivals = [f for f in fewer if f["compute_fraction"] <= r["compute_fraction"] + 1e-9]
            if rivals:
                rival = min(rivals, key=fid)
                verdict = "beats" if fid(r) < fid(rival) else "loses to"
                lines.append(f"  {r['label']} ({100 * r['compute_fraction']:.1f} %, FID {fid(r):.2f}) {verdict} "
                             f"{rival['label']} ({100 * rival['compute_fraction']:.1f} %, FID {fid(rival):.2f})")
    return lines
