"""Pre-train a base model from scratch: the built-in defaults' base models (issues #7, #13 and #15).

flexcli converts existing checkpoints; this job only exists so that the project can ship honestly trained small
bases in pixel space on Fashion-MNIST: the class-conditional `DiT-FMNIST/4` (labels), the text-to-image
`PixArt-FMNIST/4` (captions encoded by all-MiniLM-L6-v2, `flexcli.builtin.captions`) and the text-to-video
`Wan-FMNIST` (the same captions, on moving Fashion-MNIST clips, `flexcli.builtin.moving_fmnist`). One loop serves
all three; the model's family decides whether a batch is conditioned on labels or on captions, and whether the
objective is DiT's diffusion or flow matching.

    flexcli builtin train-base --recipe recipes/base/fashion_mnist_dit.yaml --out runs/base
    flexcli builtin train-base --recipe recipes/base/fashion_mnist_pixart.yaml --out runs/base-t2i
    flexcli builtin train-base --recipe recipes/base/moving_fmnist_wan.yaml --out runs/base-video

Objective: DiT's (MSE on eps + the VB term, learned sigma) with uniform timesteps for DiT and PixArt; for Wan,
flow matching: x_sigma = (1 - sigma) x0 + sigma noise, the model sees t = 1000 sigma and predicts the velocity
noise - x0 (MSE), sigma drawn as `flexcli.train.flow.sample_sigmas` with the recipe's `flow_shift`; with
`image_batch_size`, each step also trains single frames of further clips as 1-frame videos (Wan 2.1's joint
image-video training). Label (or caption) dropout for classifier-free guidance (a dropped caption becomes the
learned null caption, trained here, or for Wan the encoded empty caption), AdamW, linear warm-up then cosine
decay, gradient clipping and a warmed-up EMA (`flexcli.train.state.EMA`). On the CPU in fp32 the same seed gives
the same loss curve: every random draw comes from one seeded generator, and the model's own label dropout is off
(eval mode; we drop labels ourselves).

Outputs in --out (written atomically, refreshed every `ckpt_every` steps, so an interrupted run is usable):
`model.safetensors` (EMA weights, official DiT names, training metadata), `raw.safetensors` (raw weights),
`losses.csv` + `losses.png`, `config.yaml` (the resolved config) and `state.pt` (for --resume).
Progress goes to the `say(message)` callback.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flexcli import config
from flexcli.version import __version__
from flexcli.data import load_training_data
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.errors import FlexcliError
from flexcli.io.checkpoint import save_checkpoint
from flexcli.models.configs import NAMED_CONFIGS, named_config
from flexcli.models.dit import DiT
from flexcli.models.pixart_config import NAMED_CONFIGS as PIXART_CONFIGS, named_pixart_config
from flexcli.models.wan_config import NAMED_CONFIGS as WAN_CONFIGS, named_wan_config
from flexcli.train import objectives as obj
from flexcli.train.logs import LossLog, plot_losses
from flexcli.train.state import EMA, DataOrder, load_state, save_state, set_rng_state

CONFIG_NAME, CSV_NAME, PLOT_NAME = "config.yaml", "losses.csv", "losses.png"
EMA_NAME, RAW_NAME, STATE_NAME = "model.safetensors", "raw.safetensors", "state.pt"


@dataclass
class PretrainConfig:
    model: str = "DiT-FMNIST/4"  # a named config (flexcli.models.configs; pixart_config, wan_config for text)
    data: str = "fashion-mnist"  # flexcli.data.load_training_data (text: fashion-mnist-captions, moving-fashion-mnist)
    data_limit: int | None = None
    label_dropout: float = 0.1  # classifier-free guidance training: label or caption dropout
    flow_shift: float = 1.0  # flow matching (Wan) only: sigma = s u / (1 + (s - 1) u), u uniform; 1 = uniform
    steps: int = 4000
    batch_size: int = 128
    image_batch_size: int = 0  # video only: single frames of further clips trained beside each batch (Wan's joint
    #                            image-video training: 1-frame videos, a quarter of a 4-frame clip's tokens)
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio after the warm-up
    warmup_steps: int = 200
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n))
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None = torch's default
    log_every: int = 50
    ckpt_every: int = 500
    recipe: str | None = None  # provenance only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _validate(cfg: PretrainConfig, where: str) -> None:
    def need(cond: bool, problem: str, fix: str) -> None:
        if not cond:
            raise FlexcliError(f"{where}: {problem}", fix)
    need(cfg.model in {**NAMED_CONFIGS, **PIXART_CONFIGS, **WAN_CONFIGS}, f"unknown model '{cfg.model}'",
         f"choose one of: {', '.join(NAMED_CONFIGS)}, {', '.join(PIXART_CONFIGS)}, {', '.join(WAN_CONFIGS)}")
    need(cfg.flow_shift > 0, "flow_shift must be positive", "e.g. flow_shift: 1.0")
    need(cfg.steps >= 1 and cfg.batch_size >= 1, "steps and batch_size must be positive", "e.g. steps: 4000")
    need(cfg.image_batch_size >= 0, "image_batch_size must be 0 or more", "e.g. image_batch_size: 64")
    need(not cfg.image_batch_size or cfg.model in WAN_CONFIGS, f"image_batch_size trains single frames of video "
         f"clips, but {cfg.model} is not a video model", "drop image_batch_size, or train a Wan model")
    need(cfg.lr > 0 and 0 <= cfg.min_lr_ratio <= 1, "lr must be positive, min_lr_ratio in [0, 1]", "e.g. lr: 1.0e-3")
    need(0 <= cfg.label_dropout < 1, "label_dropout must lie in [0, 1)", "e.g. label_dropout: 0.1")
    need(0 <= cfg.ema_decay < 1, "ema_decay must lie in [0, 1)", "e.g. ema_decay: 0.999")
    need(cfg.warmup_steps >= 0 and cfg.log_every >= 1 and cfg.ckpt_every >= 1,
         "warmup_steps >= 0, log_every and ckpt_every >= 1", "e.g. ckpt_every: 500")
    need(len(cfg.betas) == 2, "betas needs two values", "e.g. betas: [0.9, 0.999]")


def resolve(recipe: str | Path | None = None, overrides: dict | None = None) -> PretrainConfig:
    """defaults < recipe YAML < overrides (None values mean 'not given')."""
    return config.resolve(PretrainConfig, recipe, overrides, validate=_validate)


def save_config(cfg: PretrainConfig, path: Path) -> Path:
    return config.save_resolved(cfg, path, "resolved flexcli pre-training config (defaults < recipe < command line)")


def lr_at(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to lr * min_lr_ratio at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class PretrainResult:
    out_dir: Path
    steps: int
    losses: list[float]
    seconds_per_step: float


def pretrain(cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
             say=None) -> PretrainResult:
    """Train `cfg.model` from scratch on `cfg.data`; `say(message)` gets progress lines (the library never prints)."""
    say = say or (lambda msg: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise FlexcliError(f"output folder {out_dir} is not empty", "pass --resume to continue it, or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, out_dir, resume, stop_after, say)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Run:
    """What one training run holds: model, data, optimizer, EMA, the generator of every draw, the step."""
    model_cfg: object  # DiTConfig, PixArtConfig or WanConfig
    model: torch.nn.Module
    data: object  # TensorData (labels) or flexcli.data.text_data.TextData (captions)
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA
    gen: torch.Generator
    order: DataOrder
    step: int = 0


def _build(cfg: PretrainConfig, out_dir: Path):
    """(model config, freshly initialised model in eval mode, training data) for `cfg.model`'s family."""
    if cfg.model in PIXART_CONFIGS or cfg.model in WAN_CONFIGS:
        from flexcli.data.text_data import load_text_data

        torch.manual_seed(cfg.seed)
        if cfg.model in WAN_CONFIGS:
            from flexcli.models.wan import Wan

            model_cfg = named_wan_config(cfg.model)
            model = Wan(model_cfg)
            model.initialize_weights()
        else:
            from flexcli.models.pixart import PixArt

            model_cfg = named_pixart_config(cfg.model, class_dropout_prob=cfg.label_dropout)
            model = PixArt(model_cfg)
            model.initialize_weights()
            if model.y_embedding is not None:  # PixArt keeps it a frozen buffer; from scratch it is learned
                null = model.y_embedding
                del model._buffers["y_embedding"]
                model.y_embedding = torch.nn.Parameter(null)
        data = load_text_data(cfg.data, model, cache_dir=out_dir / "cache", limit=cfg.data_limit)
        return model_cfg, model.eval(), data
    model_cfg = named_config(cfg.model, class_dropout_prob=cfg.label_dropout)
    data = load_training_data(cfg.data, model_cfg, limit=cfg.data_limit)
    torch.manual_seed(cfg.seed)
    return model_cfg, DiT(model_cfg).eval(), data  # eval: LabelEmbedder must not drop labels (we drop them)


def _setup(cfg: PretrainConfig, out_dir: Path, resume: bool) -> _Run:
    model_cfg, model, data = _build(cfg, out_dir)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    ema = EMA(params, cfg.ema_decay, cfg.ema_warmup)
    gen = torch.Generator().manual_seed(cfg.seed)
    run = _Run(model_cfg, model, data, params, optimizer, ema, gen, DataOrder(len(data), gen))
    if resume:
        state = load_state(out_dir / STATE_NAME)
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state["params"][k])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], gen)
        run.order.load_state_dict(state["data_order"])
        run.step = int(state["step"])
    return run


def _train_step(run: _Run, cfg: PretrainConfig, diffusion) -> tuple[float, float, float]:
    """One optimizer step at `run.step`: (loss, lr, gradient norm before clipping)."""
    lr = lr_at(cfg, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    idx = run.order.take(cfg.batch_size)
    x0 = run.data.latents[idx]
    if hasattr(run.data, "dropped"):  # captions: a dropped one becomes the learned null caption
        y = run.data.dropped(idx, cfg.label_dropout, run.gen, run.model.learned_null_caption())
    else:
        y = obj.drop_labels(run.data.labels[idx], cfg.label_dropout, run.model_cfg.num_classes, run.gen)
    loss = _loss(run, cfg, diffusion, x0, y)
    if cfg.image_batch_size:  # every example weighs the same, clip or frame
        loss = (cfg.batch_size * loss + cfg.image_batch_size * _frame_loss(run, cfg, diffusion)) / (
            cfg.batch_size + cfg.image_batch_size)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(run.params.values(), cfg.grad_clip if cfg.grad_clip else float("inf"))
    run.optimizer.step()
    run.ema.update()
    run.step += 1
    return float(loss.detach()), lr, float(gn)


def _frame_loss(run: _Run, cfg: PretrainConfig, diffusion) -> torch.Tensor:
    """Joint image-video training (Wan 2.1): the next `image_batch_size` clips of the data order, one frame of each
    (drawn uniformly) as a 1-frame video with its clip's caption, caption dropout as for the clips."""
    idx = run.order.take(cfg.image_batch_size)
    clips = run.data.latents[idx]  # (B, C, F, H, W)
    frame = torch.randint(clips.shape[2], (len(idx),), generator=run.gen)
    x0 = clips[torch.arange(len(idx)), :, frame].unsqueeze(2)  # (B, C, 1, H, W)
    y = run.data.dropped(idx, cfg.label_dropout, run.gen, run.model.learned_null_caption())
    return _loss(run, cfg, diffusion, x0, y)


def _loss(run: _Run, cfg: PretrainConfig, diffusion, x0: torch.Tensor, y) -> torch.Tensor:
    """The batch's mean loss: DiT's (MSE + VB) at uniform timesteps, or flow matching's velocity MSE (Wan)."""
    if _is_flow(run.model):
        from flexcli.diffusion.process import mean_flat
        from flexcli.train.flow import noised, sample_sigmas

        sigma = sample_sigmas(len(x0), run.gen, "uniform", shift=cfg.flow_shift)
        noise = torch.randn(x0.shape, generator=run.gen)
        out = run.model(noised(x0, sigma, noise), 1000.0 * sigma, y)
        return mean_flat((out.float() - (noise - x0)) ** 2).mean()
    t = obj.sample_timesteps(len(x0), run.gen)
    noise = torch.randn(x0.shape, generator=run.gen)
    x_t = diffusion.q_sample(x0, t, noise)
    out = run.model(x_t, t, y)
    return diffusion.training_losses(out, x0, t, noise, x_t=x_t, learn_sigma=run.model_cfg.learn_sigma)["loss"].mean()


def _is_flow(model) -> bool:
    from flexcli.families import family

    return family(model.family).process == "flow"


def _tokens(run: _Run) -> int:
    """Tokens per example at the pretrained patch size."""
    if len(run.model.base_patch) == 3:
        return run.model_cfg.tokens(tuple(run.data.latents.shape[2:]))
    return (run.model_cfg.input_size // run.model_cfg.patch_size) ** 2


def _pretrain(cfg: PretrainConfig, out_dir: Path, resume: bool, stop_after: int | None, say) -> PretrainResult:
    run = _setup(cfg, out_dir, resume)
    save_config(cfg, out_dir / CONFIG_NAME)
    log = LossLog(out_dir / CSV_NAME, resume_step=run.step if resume else None)
    diffusion = GaussianDiffusion()
    n_params = sum(t.numel() for t in run.params.values())
    say(f"{cfg.model}: {n_params / 1e6:.2f}M parameters, {_tokens(run)} tokens; {run.data.source}, "
        f"{len(run.data)} {'clips' if len(run.model.base_patch) == 3 else 'images'}; "
        f"steps {run.step}..{cfg.steps}, batch {cfg.batch_size}"
        + (f" + {cfg.image_batch_size} single frames" if cfg.image_batch_size else ""))
    patch = "x".join(map(str, run.model.base_patch)) if len(run.model.base_patch) == 3 else run.model_cfg.patch_size
    losses: list[float] = []
    last_loss, times = float("nan"), []

    def checkpoint(final: bool) -> None:
        save_state(out_dir / STATE_NAME, step=run.step, params=run.params, optimizer=run.optimizer, ema=run.ema,
                   generator=run.gen, data_order=run.order.state_dict(), source_sha256="", last_loss=last_loss)
        _save_weights(run.model, run.ema, cfg, run.data, out_dir, run.step, last_loss, final)
        plot_losses(out_dir / CSV_NAME, out_dir / PLOT_NAME)

    try:
        while run.step < cfg.steps and (stop_after is None or len(losses) < stop_after):
            t0 = time.perf_counter()
            last_loss, lr, gn = _train_step(run, cfg, diffusion)
            if not math.isfinite(last_loss):
                raise FlexcliError(f"the loss became {last_loss} at step {run.step}", "lower lr or set grad_clip")
            losses.append(last_loss)
            times.append(time.perf_counter() - t0)
            log.append(run.step, last_loss, patch, lr, gn, times[-1])
            if run.step % cfg.log_every == 0 or run.step == cfg.steps:
                recent = losses[-cfg.log_every:]
                say(f"step {run.step}/{cfg.steps}  loss {sum(recent) / len(recent):.4f}  lr {lr:.2e}  "
                    f"{sum(times[-cfg.log_every:]) / len(times[-cfg.log_every:]):.3f} s/step")
            if run.step % cfg.ckpt_every == 0 and run.step < cfg.steps:
                checkpoint(final=False)
        checkpoint(final=run.step >= cfg.steps)
    finally:
        log.close()
    return PretrainResult(out_dir, run.step, losses, sum(times) / max(1, len(times)))


def _save_weights(model, ema, cfg, data, out_dir: Path, step: int, last_loss: float, final: bool) -> None:
    kind = ("flow matching: velocity MSE" if _is_flow(model) else "DiT objective: MSE + VB, learned sigma")
    training = {"kind": f"pre-training ({kind})", "recipe": cfg.recipe,
                "config": cfg.to_dict(), "steps": step, "complete": bool(final), "data": data.describe(),
                "final_loss": last_loss, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "flexcli_version": __version__}
    for name, weights, ctx in ((EMA_NAME, "ema", ema.swapped_in()), (RAW_NAME, "raw", contextlib.nullcontext())):
        with ctx:
            save_checkpoint(model, out_dir / name, {"source": f"flexcli builtin train-base ({weights} weights)",
                                                    "training": dict(training, weights=weights)})
