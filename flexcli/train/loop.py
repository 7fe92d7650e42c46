"""The run of `flexcli distill`: one process, or many under torchrun (DDP, NCCL or gloo).

It checks the settings and the output folder, loads the data, restores an interrupted run exactly (weights,
optimizer, EMA, generator, data order), runs the optimisation steps (`flexcli.train.step`), and writes the
resolved config, atomic checkpoints, the loss CSV and plot and `distilled.safetensors`. The NaN guard stops a
diverging run with the last good checkpoint kept (`flexcli.train.guard`); a resumed run checks its settings
(`flexcli.train.resume`); one process at a time writes a run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flexcli import checks
from flexcli.version import __version__
from flexcli.data import load_training_data
from flexcli.errors import FlexcliError
from flexcli.flex.patches import label
from flexcli.io.atomic import claim, release, remove_stale_in, writable_folder
from flexcli.train import guard
from flexcli.train.config import DistillConfig, read_config, resolve, save_config
from flexcli.train.dist import Dist as _Dist
from flexcli.train.evaluation import weak_vs_powerful_error
from flexcli.train.guard import GOOD_NAME
from flexcli.train.logs import LossLog, plot_losses
from flexcli.train.resume import apply_changes, check_resume
from flexcli.train.state import STATE_NAME, load_state, save_state, set_rng_state
from flexcli.train.step import Diverged, LossGuard, StepInfo, Trainer

CONFIG_NAME, CSV_NAME, PLOT_NAME, OUTPUT_NAME, EVAL_NAME = (
    "config.yaml", "loss.csv", "loss.png", "distilled.safetensors", "eval.json")


@dataclass
class DistillResult:
    out_dir: Path
    checkpoint: Path
    state: Path
    loss_csv: Path
    loss_plot: Path | None
    config: Path
    step: int
    final_loss: float
    losses: list[float]  # this run's losses, one per step
    evaluation: dict | None


Callback = Callable[[str, object], None]  # ("start", (start_step, steps)), ("step", StepInfo), ("checkpoint", Path), ("message", str)


# --------------------------------------------------------------------------------------------------
def _read_model(checkpoint: Path, allow_nonfinite: bool = False):
    from flexcli.api import build_model
    from flexcli.families import read_checkpoint
    from flexcli.io.checkpoint import file_sha256

    ckpt = read_checkpoint(checkpoint, allow_nonfinite=allow_nonfinite)
    if not ckpt.flex:
        raise FlexcliError(f"{checkpoint} is not flexified (it has only its pretrained patch size)",
                           f"run: flexcli flexify {checkpoint} --weak-patch 4, then distill the result")
    return ckpt, build_model(ckpt), file_sha256(Path(checkpoint))


def _train_sizes(cfg: DistillConfig, model, mode: str) -> list:
    from flexcli.flex.patches import label, parse_patch

    base = model.config.patch_size
    available = model.patch_sizes if mode == "shared" else model.patch_sizes[1:]
    sizes = [parse_patch(p, len(model.base_patch), "patch_sizes") for p in cfg.patch_sizes or available]
    for p in sizes:
        if p not in available:
            raise FlexcliError(f"patch size {label(p)} cannot be trained in {mode} mode (available: "
                               f"{', '.join(label(q) for q in available)})",
                               "choose patch_sizes among the checkpoint's weak sizes" if p != base else
                               "lora mode trains only the weak sizes; the pretrained one stays frozen")
    return sizes


def _check_out(out_dir: Path, resume: bool, force: bool) -> None:
    """Fail before any work if the output folder cannot be used (the VAE cache in OUT/cache does not count);
    claim it (one run per folder: a second process fails at once)."""
    if not out_dir.parent.exists():
        raise FlexcliError(f"output directory {out_dir.parent} does not exist", "create it first or choose another --out")
    writable_folder(out_dir)
    claim(out_dir)
    if resume:
        if not (out_dir / STATE_NAME).exists():
            raise FlexcliError(f"--resume: no training state {STATE_NAME} in {out_dir}",
                               "start the run without --resume (or pass the --out folder of an earlier run)")
        return
    if out_dir.exists() and any(f.name != "cache" for f in out_dir.iterdir()) and not force:
        raise FlexcliError(f"output folder {out_dir} already exists and is not empty",
                           "pass --resume to continue that run, --force to start over, or choose another --out")


def _prepare_out(out_dir: Path, resume: bool) -> None:
    out_dir.mkdir(exist_ok=True)
    remove_stale_in(out_dir)  # temporaries of a killed run
    remove_stale_in(out_dir / "cache")
    if resume:
        return
    for name in (STATE_NAME, GOOD_NAME, CSV_NAME, PLOT_NAME, OUTPUT_NAME, EVAL_NAME):
        (out_dir / name).unlink(missing_ok=True)


def default_out_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}-distill"


def resolve_config(out_dir: Path, resume: bool, config: DistillConfig | None, recipe, overrides) -> DistillConfig:
    if resume:  # the run's saved config; only `overrides` given now change it (e.g. more steps)
        return resolve(None, overrides, base=read_config(out_dir / CONFIG_NAME))
    cfg = config if config is not None else resolve(recipe, overrides)
    return dataclasses.replace(cfg, changes=None)  # a fresh run (e.g. -r OLD/config.yaml) has no history


@dataclass
class _Job:
    checkpoint: Path
    out_dir: Path
    cfg: DistillConfig
    ckpt: object
    model: object
    sha: str
    dist: _Dist
    resume: bool
    force: bool
    stop_after: int | None
    allow_changes: bool
    say: Callback


# --------------------------------------------------------------------------------------------------
def distill(checkpoint: str | Path, out_dir: str | Path | None = None, *, config: DistillConfig | None = None,
            recipe: str | Path | None = None, overrides: dict | None = None, resume: bool = False,
            force: bool = False, stop_after: int | None = None, callback: Callback | None = None,
            allow_changes: bool = False, allow_nonfinite: bool = False) -> DistillResult:
    """Distil (lora) or fine-tune (shared) a flexified checkpoint. Writes into `out_dir`: the resolved config,
    the training state (every `ckpt_every` steps, and last-good.pt), the loss CSV and plot, and
    `distilled.safetensors`.

    The config is `config`, or defaults < `recipe` < `overrides`; with `resume=True` it is the run's saved
    config.yaml with `overrides` on top (e.g. {"steps": 2000} to train longer); a changed seed, data, batch
    size or input checkpoint needs `allow_changes=True`, and every change is recorded in config.yaml.
    `stop_after=k` stops after step k with a checkpoint, as if killed there (for tests and staged runs).
    An interrupt (KeyboardInterrupt) becomes `Interrupted`, naming the checkpoint left and how to resume.
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint)
    say = callback or (lambda event, data: None)
    checks.integer("--stop-after", stop_after, 1, fix="pass --stop-after 1 or more, or leave it out")
    dist = _Dist()
    try:
        if resume and not (out_dir / STATE_NAME).exists():
            load_state(out_dir / STATE_NAME)  # raises the one-line error
        cfg = resolve_config(out_dir, resume, config, recipe, overrides)
        ckpt, model, sha = _read_model(checkpoint, allow_nonfinite)
        return _run(_Job(checkpoint, out_dir, cfg, ckpt, model, sha, dist, resume, force, stop_after, allow_changes,
                         say if dist.main else (lambda e, d: None)))
    except KeyboardInterrupt as e:
        raise guard.interrupted(e, checkpoint, out_dir, _saved_step) from None
    finally:
        release(out_dir)
        dist.close()


def _run(job: _Job) -> DistillResult:
    cfg, dist, out_dir, model = job.cfg, job.dist, job.out_dir, job.model
    mode, sizes = _check_run(model, cfg, job.checkpoint, dist)
    _check_out(out_dir, job.resume, job.force)
    dist.barrier()  # every process checked the folder before the main one writes into it
    data, eval_data = _load_data(cfg, model, out_dir, dist, sizes)
    half = dist.device.type == "cuda" and cfg.precision != "fp32" or cfg.precision == "bf16"
    checks.train_batch(model, tuple(data.latents.shape[1:]), cfg.batch_size,
                       cfg.batch_size // (cfg.grad_accum * dist.world), dist.device, 2 if half else 4)
    trainer = Trainer(model, cfg, dist, data, mode, sizes)
    step, evaluation, saved = 0, {}, guard.Saved()
    if job.resume:
        state = load_state(out_dir / STATE_NAME)
        cfg, changes = check_resume(out_dir / CONFIG_NAME, cfg, state, job.sha, data.describe(), job.checkpoint,
                                    job.allow_changes)
        job.cfg = trainer.cfg = cfg
        step, evaluation = _restore(trainer, state, out_dir)
        apply_changes(trainer, changes)
        saved = guard.Saved(step, written_here=False)
    if job.stop_after is not None and job.stop_after <= step:
        raise FlexcliError(f"--stop-after {job.stop_after} is not after the resumed step {step}",
                           f"pass --stop-after {step + 1} or more, or leave it out")
    if dist.main:
        _prepare_out(out_dir, job.resume)
        save_config(cfg, out_dir / CONFIG_NAME)
        if not job.resume and eval_data is not None:
            evaluation = {"before": weak_vs_powerful_error(model, eval_data, samples=cfg.eval_samples)}
            (out_dir / EVAL_NAME).write_text(json.dumps(evaluation, indent=2))
    dist.barrier()
    return _train(job, trainer, data, eval_data, step, evaluation, saved)


def _train(job: _Job, trainer: Trainer, data, eval_data, step: int, evaluation: dict, saved) -> DistillResult:
    cfg, dist, out_dir = job.cfg, job.dist, job.out_dir
    log = LossLog(out_dir / CSV_NAME, resume_step=step if job.resume else None) if dist.main else None
    trainer.wrap()
    losses: list[float] = []
    last_loss = float("nan")
    job.say("start", (step, cfg.steps))
    more = lambda s: s < cfg.steps and (job.stop_after is None or s < job.stop_after)  # noqa: E731
    try:
        while more(step):
            info = trainer.step(step)
            step, last_loss = info.step, info.loss
            losses.append(info.loss)
            if log is not None:
                log.append(step, info.loss, label(info.patch_size), info.lr, info.grad_norm, info.seconds)
            job.say("step", info)
            if step % cfg.ckpt_every == 0 and more(step):
                saved = _checkpoint(job, trainer, data, step, last_loss, evaluation, False, saved)
        if eval_data is not None and dist.main and step >= cfg.steps:
            ema = trainer.ema
            ctx = ema.swapped_in() if ema is not None and cfg.save_weights == "ema" else contextlib.nullcontext()
            with ctx:
                evaluation["after"] = weak_vs_powerful_error(job.model, eval_data, samples=cfg.eval_samples)
            (out_dir / EVAL_NAME).write_text(json.dumps(evaluation, indent=2))
        saved = _checkpoint(job, trainer, data, step, last_loss, evaluation, step >= cfg.steps, saved)
    except Diverged as d:
        raise _diverged(job, trainer, data, d, saved, evaluation) from None
    finally:
        if log is not None:
            log.close()
    dist.barrier()
    plot = out_dir / PLOT_NAME
    return DistillResult(out_dir, out_dir / OUTPUT_NAME, out_dir / STATE_NAME, out_dir / CSV_NAME,
                         plot if plot.exists() else None, out_dir / CONFIG_NAME, step, last_loss, losses,
                         evaluation or None)


def _checkpoint(job: _Job, trainer: Trainer, data, step: int, last_loss: float, evaluation: dict, final: bool,
                saved: guard.Saved) -> guard.Saved:
    """Write state.pt (the previous one becomes last-good.pt), distilled.safetensors and the plot."""
    if not all(bool(torch.isfinite(p).all()) for p in trainer.params.values()):
        raise Diverged(f"the weights became non-finite at step {step}", step)
    if job.dist.main:
        if saved.step is not None and step > saved.step and trainer.guard.pending is None:
            guard.promote(job.out_dir)  # confirmed by the healthy steps run on its weights since
        save_state(job.out_dir / STATE_NAME, step=step, params=trainer.params, optimizer=trainer.optimizer,
                   ema=trainer.ema, generator=trainer.gen, data_order=trainer.order.state_dict(),
                   source_sha256=job.sha, last_loss=last_loss,
                   extra={"data": data.describe(), "loss_history": list(trainer.guard.history)})
        _save_output(job, trainer.ema, data, step, last_loss, evaluation, final)
        plot_losses(job.out_dir / CSV_NAME, job.out_dir / PLOT_NAME)
        job.say("checkpoint", job.out_dir / STATE_NAME)
    return guard.Saved(step, written_here=True)


def _diverged(job: _Job, trainer: Trainer, data, d: Diverged, saved: guard.Saved, evaluation: dict) -> FlexcliError:
    """Keep the last good checkpoint (rolling back to last-good.pt if the latest is suspect), or remove the
    suspect files; the error says which checkpoint is kept and the command that continues."""
    if d.nonfinite and saved.written_here and saved.step == d.step - 1 and trainer.recheck(saved.step):
        d.step += 1  # the weights saved just before give that step a sane loss: the checkpoint is good
    good, restore = guard.good_checkpoint(job.out_dir, saved, d.step)
    kept = None
    if good is not None:
        state = load_state(good)
        kept = int(state["step"])
        if restore and job.dist.main:
            guard.roll_back(job.out_dir, good)
            _restore(trainer, state, job.out_dir)
            _save_output(job, trainer.ema, data, kept, state["last_loss"], evaluation, False)
    elif job.dist.main:
        guard.discard_suspect(job.out_dir, (OUTPUT_NAME,))
    return guard.diverged(d.problem, job.checkpoint, job.out_dir, kept, job.cfg.lr)


def _check_run(model, cfg: DistillConfig, checkpoint: Path, dist) -> tuple[str, list]:
    """The run's mode and the patch sizes it trains; one-line errors for settings that cannot work."""
    mode = model.flex.mode
    if cfg.mode not in ("auto", mode):
        raise FlexcliError(f"{checkpoint} was flexified in {mode} mode, the config asks for {cfg.mode}",
                           f"set mode: {mode} (or auto), or flexify again with --mode {cfg.mode}")
    sizes = _train_sizes(cfg, model, mode)
    if cfg.batch_size % (cfg.grad_accum * dist.world):
        raise FlexcliError(f"batch_size {cfg.batch_size} is not divisible by grad_accum x processes "
                           f"({cfg.grad_accum} x {dist.world})", "choose a batch size that divides evenly")
    if cfg.mmd_weight > 0 and len(model.base_patch) == 3:
        raise FlexcliError("the bootstrapped MMD loss (App. B.1) is implemented for DDPM image models",
                           "set mmd_weight: 0 for video models")
    if cfg.mmd_weight > 0 and mode != "shared":
        raise FlexcliError("the bootstrapped MMD loss needs shared mode (it trains the powerful model, App. B.1)",
                           "flexify with --mode shared, or set mmd_weight: 0")
    return mode, sizes


def _load_data(cfg: DistillConfig, model, out_dir: Path, dist, sizes: list):
    """Training (and held-out) data; the main process encodes (and caches) first, the others read the cache.
    Text-conditional families take images (video clips: latent shards) with captions (`flexcli.data.text_data`),
    video latents checked against the pretrained and every trained patch size."""
    from flexcli.families import family_of

    text = family_of(model).conditioning == "text"
    if cfg.text_encoder is not None and not text:
        raise FlexcliError("--text-encoder given to a class-conditional checkpoint", "drop it (labels come from the data)")
    tiles = list(dict.fromkeys([tuple(model.base_patch)] + [tuple(p) for p in sizes if not isinstance(p, int)]))

    def load(spec, limit=None):
        if text:
            from flexcli.data.text_data import load_text_data
            return load_text_data(spec, model, cfg.vae, cfg.text_encoder, cache_dir=out_dir / "cache", limit=limit,
                                  patch_sizes=tiles)
        return load_training_data(spec, model.config, cfg.vae, cache_dir=out_dir / "cache", limit=limit)

    data = eval_data = None
    for turn in ("main", "others"):
        if dist.main == (turn == "main"):
            data = load(cfg.data, cfg.data_limit)
            eval_data = load(cfg.eval_data) if cfg.eval_data else None
        dist.barrier()
    return data, eval_data


def _restore(trainer: Trainer, state: dict, out_dir: Path) -> tuple[int, dict]:
    """Continue an interrupted run: weights, optimizer, EMA, generator, data order and the NaN guard's loss
    history -> (step, evaluation). The settings were checked (`check_resume`)."""
    with torch.no_grad():
        for k, p in trainer.params.items():
            p.copy_(state["params"][k])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.ema is not None and state["ema"] is not None:
        trainer.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"], trainer.gen)
    trainer.order.load_state_dict(state["data_order"])
    trainer.guard = LossGuard(trainer.cfg.spike_factor, state.get("loss_history", ()))
    evaluation = {}
    if (out_dir / EVAL_NAME).exists():
        evaluation = {k: {int(p) if p.isdigit() else p: v for p, v in d.items()}
                      for k, d in json.loads((out_dir / EVAL_NAME).read_text()).items()}
    return int(state["step"]), evaluation


def _saved_step(path: Path) -> int | str:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return "?"


def _save_output(job: _Job, ema, data, step, last_loss, evaluation, final) -> Path:
    from flexcli.io.checkpoint import save_checkpoint

    model, cfg, ckpt, checkpoint, sha = job.model, job.cfg, job.ckpt, job.checkpoint, job.sha
    training = {"recipe": cfg.recipe, "config": cfg.to_dict(), "steps": step, "complete": bool(final),
                "data": data.describe(), "final_loss": last_loss, "weights": cfg.save_weights if ema else "raw",
                "objective": ("velocity " if len(model.base_patch) == 3 else "") + "distillation (§3.2)"
                if model.flex.mode == "lora" else ("flow-matching" if len(model.base_patch) == 3 else "DiT")
                + " loss (§3.1)"
                + (" + bootstrapped MMD (App. B.1)" if cfg.mmd_weight > 0 else ""),
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "input": {"file": checkpoint.name, "sha256": sha}, "flexcli_version": __version__}
    if evaluation:
        training["weak_vs_powerful_error"] = evaluation
    extra = {"source": ckpt.metadata.get("source"), "inferred": ckpt.metadata.get("inferred"), "training": training}
    ctx = ema.swapped_in() if ema is not None and cfg.save_weights == "ema" else contextlib.nullcontext()
    with ctx:
        return save_checkpoint(model, job.out_dir / OUTPUT_NAME, extra)


__all__ = ["DistillResult", "StepInfo", "distill", "weak_vs_powerful_error", "default_out_dir"]
