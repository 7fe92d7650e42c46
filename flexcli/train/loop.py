"""The run of `flexcli distill`: one process, or many under torchrun (DDP, NCCL or gloo).

It checks the settings and the output folder, loads the data, restores an interrupted run exactly (weights,
optimizer, EMA, generator, data order), runs the optimisation steps (`flexcli.train.step`), and writes the
resolved config, atomic checkpoints, the loss CSV and plot and `distilled.safetensors`. A non-finite loss or
gradient stops the run with the last good checkpoint kept.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flexcli.version import __version__
from flexcli.data import load_training_data
from flexcli.errors import FlexcliError
from flexcli.flex.patches import label
from flexcli.train.config import DistillConfig, read_config, resolve, save_config
from flexcli.train.evaluation import weak_vs_powerful_error
from flexcli.train.logs import LossLog, plot_losses
from flexcli.train.state import STATE_NAME, load_state, save_state, set_rng_state
from flexcli.train.step import StepInfo, Trainer

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
class _Dist:
    """torchrun's environment: rank, world size, device; initialises the process group when world > 1."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.initialised_here = False
        if self.world > 1:
            import torch.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
                self.initialised_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
def _read_model(checkpoint: Path):
    from flexcli.api import build_model
    from flexcli.families import read_checkpoint
    from flexcli.io.checkpoint import file_sha256

    ckpt = read_checkpoint(checkpoint)
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
    """Fail before any work if the output folder cannot be used (the VAE cache in OUT/cache does not count)."""
    if resume:
        if not (out_dir / STATE_NAME).exists():
            raise FlexcliError(f"--resume: no training state {STATE_NAME} in {out_dir}",
                               "start the run without --resume (or pass the --out folder of an earlier run)")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise FlexcliError(f"output {out_dir} is a file, not a folder", "choose another --out")
    if out_dir.exists() and any(f.name != "cache" for f in out_dir.iterdir()) and not force:
        raise FlexcliError(f"output folder {out_dir} already exists and is not empty",
                           "pass --resume to continue that run, --force to start over, or choose another --out")
    if not out_dir.parent.exists():
        raise FlexcliError(f"output directory {out_dir.parent} does not exist", "create it first or choose another --out")


def _prepare_out(out_dir: Path, resume: bool) -> None:
    out_dir.mkdir(exist_ok=True)
    if resume:
        return
    for name in (STATE_NAME, CSV_NAME, PLOT_NAME, OUTPUT_NAME, EVAL_NAME):
        (out_dir / name).unlink(missing_ok=True)


def default_out_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / f"{checkpoint.stem}-distill"


def resolve_config(out_dir: Path, resume: bool, config: DistillConfig | None, recipe, overrides) -> DistillConfig:
    if resume:  # the run's saved config; only `overrides` given now change it (e.g. more steps)
        return resolve(None, overrides, base=read_config(out_dir / CONFIG_NAME))
    if config is not None:
        return config
    return resolve(recipe, overrides)


# --------------------------------------------------------------------------------------------------
def distill(checkpoint: str | Path, out_dir: str | Path | None = None, *, config: DistillConfig | None = None,
            recipe: str | Path | None = None, overrides: dict | None = None, resume: bool = False,
            force: bool = False, stop_after: int | None = None, callback: Callback | None = None) -> DistillResult:
    """Distil (lora) or fine-tune (shared) a flexified checkpoint. Writes into `out_dir`: the resolved config,
    the training state (every `ckpt_every` steps), the loss CSV and plot, and `distilled.safetensors`.

    The config is `config`, or defaults < `recipe` < `overrides`; with `resume=True` it is the run's saved
    config.yaml with `overrides` on top (e.g. {"steps": 2000} to train longer).
    `stop_after=k` stops after step k with a checkpoint, as if killed there (for tests and staged runs).
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint)
    say = callback or (lambda event, data: None)
    dist = _Dist()
    try:
        if resume and not (out_dir / STATE_NAME).exists():
            load_state(out_dir / STATE_NAME)  # raises the one-line error
        cfg = resolve_config(out_dir, resume, config, recipe, overrides)
        ckpt, model, sha = _read_model(checkpoint)
        return _run(ckpt, model, sha, checkpoint, out_dir, cfg, dist, resume, force, stop_after,
                    say if dist.main else (lambda e, d: None))
    finally:
        dist.close()


def _run(ckpt, model, sha, checkpoint, out_dir, cfg, dist, resume, force, stop_after, say) -> DistillResult:
    mode, sizes = _check_run(model, cfg, checkpoint, dist)
    _check_out(out_dir, resume, force)
    dist.barrier()  # every process checked the folder before the main one writes into it
    data, eval_data = _load_data(cfg, model, out_dir, dist, sizes)
    if dist.main:
        _prepare_out(out_dir, resume)
        save_config(cfg, out_dir / CONFIG_NAME)
    dist.barrier()
    trainer = Trainer(model, cfg, dist, data, mode, sizes)
    state_path = out_dir / STATE_NAME
    step, evaluation = 0, {}
    if resume:
        step, evaluation = _restore(trainer, load_state(state_path), sha, checkpoint, out_dir)
    elif eval_data is not None and dist.main:
        evaluation = {"before": weak_vs_powerful_error(model, eval_data, samples=cfg.eval_samples)}
        (out_dir / EVAL_NAME).write_text(json.dumps(evaluation, indent=2))
    log = LossLog(out_dir / CSV_NAME, resume_step=step if resume else None) if dist.main else None
    trainer.wrap()
    losses: list[float] = []
    last_loss = float("nan")
    say("start", (step, cfg.steps))

    def checkpoint_now(final: bool = False) -> None:
        if not dist.main:
            return
        save_state(state_path, step=step, params=trainer.params, optimizer=trainer.optimizer, ema=trainer.ema,
                   generator=trainer.gen, data_order=trainer.order.state_dict(), source_sha256=sha,
                   last_loss=last_loss)
        _save_output(model, trainer.ema, cfg, ckpt, checkpoint, sha, data, out_dir, step, last_loss, evaluation, final)
        plot_losses(out_dir / CSV_NAME, out_dir / PLOT_NAME)
        say("checkpoint", state_path)

    def failure(what: str, value: float) -> FlexcliError:
        kept = (f"the last good checkpoint ({STATE_NAME}, step {_saved_step(state_path)}) is kept in {out_dir}"
                if state_path.exists() else "no checkpoint was written yet")
        return FlexcliError(f"the {what} became {value} at step {step + 1}; training stopped and {kept}",
                            "lower lr or set grad_clip in the recipe, then continue with --resume")

    try:
        while step < cfg.steps and (stop_after is None or step < stop_after):
            info = trainer.step(step, failure)
            step, last_loss = info.step, info.loss
            losses.append(info.loss)
            if log is not None:
                log.append(step, info.loss, label(info.patch_size), info.lr, info.grad_norm, info.seconds)
            say("step", info)
            if step % cfg.ckpt_every == 0 and step < cfg.steps and (stop_after is None or step < stop_after):
                checkpoint_now()
        if eval_data is not None and dist.main and step >= cfg.steps:
            ema = trainer.ema
            ctx = ema.swapped_in() if ema is not None and cfg.save_weights == "ema" else contextlib.nullcontext()
            with ctx:
                evaluation["after"] = weak_vs_powerful_error(model, eval_data, samples=cfg.eval_samples)
            (out_dir / EVAL_NAME).write_text(json.dumps(evaluation, indent=2))
        checkpoint_now(final=step >= cfg.steps)
    finally:
        if log is not None:
            log.close()
    dist.barrier()
    plot = out_dir / PLOT_NAME
    return DistillResult(out_dir, out_dir / OUTPUT_NAME, state_path, out_dir / CSV_NAME,
                         plot if plot.exists() else None, out_dir / CONFIG_NAME, step, last_loss, losses,
                         evaluation or None)


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


def _restore(trainer: Trainer, state: dict, sha: str, checkpoint: Path, out_dir: Path) -> tuple[int, dict]:
    """Continue an interrupted run: weights, optimizer, EMA, generator and data order -> (step, evaluation)."""
    if state["source_sha256"] != sha:
        raise FlexcliError(f"--resume: {checkpoint} is not the checkpoint this run started from",
                           "pass the same input checkpoint as the interrupted run")
    with torch.no_grad():
        for k, p in trainer.params.items():
            p.copy_(state["params"][k])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.ema is not None and state["ema"] is not None:
        trainer.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"], trainer.gen)
    trainer.order.load_state_dict(state["data_order"])
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


def _save_output(model, ema, cfg, ckpt, checkpoint, sha, data, out_dir, step, last_loss, evaluation, final) -> Path:
    from flexcli.io.checkpoint import save_checkpoint

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
        return save_checkpoint(model, out_dir / OUTPUT_NAME, extra)


__all__ = ["DistillResult", "StepInfo", "distill", "weak_vs_powerful_error", "default_out_dir"]
