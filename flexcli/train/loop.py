"""The explicit training loop of `flexcli distill`: one process, or many under torchrun (DDP, NCCL or gloo).

Determinism: every random draw of a step (patch size, data order, label dropout, timesteps, noise, the MMD
chain) comes from one CPU `torch.Generator`, drawn for the *global* batch on every process; each process then
takes its slice. One process and N processes therefore see the same samples, and a resumed run (generator,
data order, optimizer, EMA and weights restored) continues the same loss sequence as an uninterrupted one.

Multi-process: the model is wrapped in DistributedDataParallel over its trainable parameters only, with
find_unused_parameters=True (a step trains one weak size, so the other sizes' LoRAs, tokenizers and norms
get no gradient). Steps with the bootstrapped MMD loss run several forwards per backward, which DDP's reducer
does not allow: they backpropagate under no_sync() and all-reduce the gradients explicitly.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flexcli import __version__
from flexcli.data import load_training_data
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.errors import FlexcliError
from flexcli.train import objectives as obj
from flexcli.train.config import DistillConfig, read_config, resolve, save_config
from flexcli.train.evaluation import weak_vs_powerful_error
from flexcli.train.logs import LossLog, plot_losses
from flexcli.train.state import EMA, STATE_NAME, DataOrder, load_state, save_state, set_rng_state

CONFIG_NAME, CSV_NAME, PLOT_NAME, OUTPUT_NAME, EVAL_NAME = (
    "config.yaml", "loss.csv", "loss.png", "distilled.safetensors", "eval.json")


@dataclass
class StepInfo:
    step: int  # steps done
    steps: int  # total steps of the run
    loss: float
    patch_size: int
    lr: float
    grad_norm: float


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
    from flexcli.io.checkpoint import file_sha256, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if not ckpt.flex:
        raise FlexcliError(f"{checkpoint} is not flexified (it has only its pretrained patch size)",
                           f"run: flexcli flexify {checkpoint} --weak-patch 4, then distill the result")
    return ckpt, build_model(ckpt), file_sha256(Path(checkpoint))


def _train_sizes(cfg: DistillConfig, model, mode: str) -> list[int]:
    base = model.config.patch_size
    available = model.patch_sizes if mode == "shared" else model.patch_sizes[1:]
    sizes = list(cfg.patch_sizes) if cfg.patch_sizes else list(available)
    for p in sizes:
        if p not in available:
            raise FlexcliError(f"patch size {p} cannot be trained in {mode} mode (available: {available})",
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
    mode = model.flex.mode
    if cfg.mode not in ("auto", mode):
        raise FlexcliError(f"{checkpoint} was flexified in {mode} mode, the config asks for {cfg.mode}",
                           f"set mode: {mode} (or auto), or flexify again with --mode {cfg.mode}")
    sizes = _train_sizes(cfg, model, mode)
    if cfg.batch_size % (cfg.grad_accum * dist.world):
        raise FlexcliError(f"batch_size {cfg.batch_size} is not divisible by grad_accum x processes "
                           f"({cfg.grad_accum} x {dist.world})", "choose a batch size that divides evenly")
    if cfg.mmd_weight > 0 and mode != "shared":
        raise FlexcliError("the bootstrapped MMD loss needs shared mode (it trains the powerful model, App. B.1)",
                           "flexify with --mode shared, or set mmd_weight: 0")
    _check_out(out_dir, resume, force)
    dist.barrier()  # every process checked the folder before the main one writes into it
    data = eval_data = None
    for turn in ("main", "others"):  # the main process encodes (and caches) first; the others read the cache
        if dist.main == (turn == "main"):
            data = load_training_data(cfg.data, model.config, cfg.vae, cache_dir=out_dir / "cache",
                                      limit=cfg.data_limit)
            eval_data = (load_training_data(cfg.eval_data, model.config, cfg.vae, cache_dir=out_dir / "cache")
                         if cfg.eval_data else None)
        dist.barrier()
    if dist.main:
        _prepare_out(out_dir, resume)
        save_config(cfg, out_dir / CONFIG_NAME)
    dist.barrier()

    device = dist.device
    model.to(device).eval()  # eval: LabelEmbedder must not drop labels again (we drop them, pitfall 9)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(cfg.seed)
    order = DataOrder(len(data), gen)
    step, evaluation = 0, {}
    state_path = out_dir / STATE_NAME
    if resume:
        state = load_state(state_path)
        if state["source_sha256"] != sha:
            raise FlexcliError(f"--resume: {checkpoint} is not the checkpoint this run started from",
                               "pass the same input checkpoint as the interrupted run")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["params"][k])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], gen)
        order.load_state_dict(state["data_order"])
        step = int(state["step"])
        if (out_dir / EVAL_NAME).exists():
            evaluation = {k: {int(p): v for p, v in d.items()}
                          for k, d in json.loads((out_dir / EVAL_NAME).read_text()).items()}
    elif eval_data is not None and dist.main:
        evaluation = {"before": weak_vs_powerful_error(model, eval_data, samples=cfg.eval_samples)}
        (out_dir / EVAL_NAME).write_text(json.dumps(evaluation, indent=2))

    log = LossLog(out_dir / CSV_NAME, resume_step=step if resume else None) if dist.main else None
    diffusion = GaussianDiffusion()
    chain = GaussianDiffusion.respaced(cfg.mmd_respacing) if cfg.mmd_weight > 0 else None
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=True, broadcast_buffers=False)
    if device.type == "cuda" and cfg.precision != "fp32":
        autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    elif cfg.precision == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()  # fp32 on the CPU by default: exact and reproducible
    label_p = model.config.class_dropout_prob if cfg.label_dropout is None else cfg.label_dropout
    null = model.config.num_classes
    c, base = model.config.in_channels, model.config.patch_size
    B, micro = cfg.batch_size, cfg.batch_size // cfg.grad_accum
    local = micro // dist.world
    losses: list[float] = []
    last_loss = float("nan")
    say("start", (step, cfg.steps))

    def checkpoint_now(final: bool = False) -> None:
        if not dist.main:
            return
        save_state(state_path, step=step, params=params, optimizer=optimizer, ema=ema, generator=gen,
                   data_order=order.state_dict(), source_sha256=sha, last_loss=last_loss)
        _save_output(model, ema, cfg, ckpt, checkpoint, sha, data, out_dir, step, last_loss, evaluation, final)
        plot_losses(out_dir / CSV_NAME, out_dir / PLOT_NAME)
        say("checkpoint", state_path)

    try:
        while step < cfg.steps and (stop_after is None or step < stop_after):
            t0 = time.perf_counter()
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            # One draw for the global batch, identical on every process.
            p = sizes[int(torch.randint(len(sizes), (), generator=gen))]
            idx = order.take(B)
            y_all = obj.drop_labels(data.labels[idx], label_p, null, gen)
            t_all = obj.sample_timesteps(B, gen, cfg.timesteps, cfg.t_bias_power)
            noise_all = torch.randn((B, *data.latents.shape[1:]), generator=gen)
            manual_sync = cfg.mmd_weight > 0 and dist.world > 1
            total = torch.zeros((), dtype=torch.float64, device=device)
            for a in range(cfg.grad_accum):
                lo = a * micro + dist.rank * local
                sl = slice(lo, lo + local)
                x0, y = data.latents[idx[sl]].to(device), y_all[sl].to(device)
                t, noise = t_all[sl].to(device), noise_all[sl].to(device)
                x_t = diffusion.q_sample(x0, t, noise)
                last = a == cfg.grad_accum - 1
                sync = contextlib.nullcontext() if (last and not manual_sync) or net is model else net.no_sync()
                with sync:
                    with autocast:
                        if mode == "lora":
                            terms = obj.lora_distill_loss(net, model, x_t, t, y, p, c, cfg.sigma_weight)
                        else:
                            terms = obj.shared_loss(net, model, diffusion, x0, x_t, t, noise, y, p, base,
                                                    model.config.learn_sigma, cfg.distill_weight, cfg.sigma_weight)
                        loss = terms["loss"].float().sum() / (B / dist.world)
                        if cfg.mmd_weight > 0:
                            weak = p if p != base else max(sizes)
                            tgt = torch.randint(len(data), (local,), generator=gen)
                            mmd = obj.bootstrap_mmd_loss(net, x0, y, data.latents[tgt].to(device), weak, base, chain,
                                                         cfg.mmd_weak_steps, cfg.mmd_powerful_steps, gen,
                                                         model.config.learn_sigma, cfg.t_bias_power)
                            loss = loss + cfg.mmd_weight * mmd / cfg.grad_accum
                    loss.backward()
                total += loss.detach().double()
            if manual_sync:
                for prm in params.values():
                    if prm.grad is None:
                        prm.grad = torch.zeros_like(prm)
                    dist.all_sum(prm.grad).div_(dist.world)
            step_loss = float(dist.all_sum(total).item()) / dist.world  # each process holds world x its share
            grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip or float("inf"))
            if not math.isfinite(step_loss) or not torch.isfinite(grad_norm):
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                value = step_loss if what == "loss" else float(grad_norm)
                kept = (f"the last good checkpoint ({STATE_NAME}, step {_saved_step(state_path)}) is kept in {out_dir}"
                        if state_path.exists() else "no checkpoint was written yet")
                raise FlexcliError(f"the {what} became {value} at step {step + 1}; training stopped and {kept}",
                                   "lower lr or set grad_clip in the recipe, then continue with --resume")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            step += 1
            last_loss = step_loss
            losses.append(step_loss)
            if log is not None:
                log.append(step, step_loss, p, lr, float(grad_norm), time.perf_counter() - t0)
            say("step", StepInfo(step, cfg.steps, step_loss, p, lr, float(grad_norm)))
            if step % cfg.ckpt_every == 0 and step < cfg.steps and (stop_after is None or step < stop_after):
                checkpoint_now()
        if eval_data is not None and dist.main and step >= cfg.steps:
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


def _saved_step(path: Path) -> int | str:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return "?"


def _save_output(model, ema, cfg, ckpt, checkpoint, sha, data, out_dir, step, last_loss, evaluation, final) -> Path:
    from flexcli.io.checkpoint import save_checkpoint

    training = {"recipe": cfg.recipe, "config": cfg.to_dict(), "steps": step, "complete": bool(final),
                "data": data.describe(), "final_loss": last_loss, "weights": cfg.save_weights if ema else "raw",
                "objective": "distillation (§3.2)" if model.flex.mode == "lora" else "DiT loss (§3.1)"
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
