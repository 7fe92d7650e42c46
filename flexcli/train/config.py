"""The distillation run's settings: defaults < recipe YAML < CLI flags; the resolved config is saved with the run.

Recipes are plain YAML mappings whose keys are `DistillConfig` fields, resolved by `flexcli.config`: an unknown
key or a value of the wrong type is an error that names the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from flexcli import config
from flexcli.errors import FlexcliError
from flexcli.recipes import read_recipe

TIMESTEP_SAMPLING = ("uniform", "low")
PRECISIONS = ("auto", "fp32", "bf16")
SAVE_WEIGHTS = ("ema", "raw")


@dataclass
class DistillConfig:
    # data
    data: str = "fashion-mnist"  # a built-in set, a latent shard (.safetensors/.npz), or a folder
    data_limit: int | None = None  # use only the first N examples (the paper needs < 5000 images)
    vae: str | None = None  # local diffusers AutoencoderKL folder, for image folders with latent models
    text_encoder: str | None = None  # text-to-image: a local T5 folder (or pipeline folder) or "minilm", for captions
    eval_data: str | None = None  # held-out data: weak-vs-powerful error reported before and after
    eval_samples: int = 256
    # objective
    mode: str = "auto"  # auto = the checkpoint's flex mode; lora (§3.2 distillation) or shared (§3.1)
    patch_sizes: list | None = None  # sizes to train (lora: weak sizes; shared: any), e.g. [4] or [[2, 2, 2]]; None = all
    sigma_weight: float = 1.0  # lora: weight of the learned-sigma (variance) channels in the distillation loss
    label_dropout: float | None = None  # None = the checkpoint's class_dropout_prob (text: caption dropout)
    distill_weight: float = 0.0  # shared: weight of the weak-vs-powerful distillation term
    mmd_weight: float = 0.0  # shared: weight of App. B.1's bootstrapped MMD loss (0 = off)
    mmd_weak_steps: int = 2
    mmd_powerful_steps: int = 2
    mmd_respacing: int = 250  # the DDPM schedule of the bootstrap chain (the inference schedule)
    timesteps: str = "uniform"  # uniform or low (t = floor(1000 * u**t_bias_power): biased to small t, C.2)
    t_bias_power: float = 2.0
    flow_shift: float = 3.0  # flow-matching models (Wan): sigma = s u / (1 + (s - 1) u), as the 480p sampler
    # optimisation
    steps: int = 1000
    batch_size: int = 32  # global batch (over all processes and accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = None
    warmup_steps: int = 0
    ema_decay: float = 0.9999  # 0 = no EMA
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n)): short runs do not lag
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    seed: int = 0
    # outputs
    ckpt_every: int = 500
    save_weights: str = "ema"
    recipe: str | None = None  # the recipe file this config came from (provenance only)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate(cfg: DistillConfig, where: str = "config") -> DistillConfig:
    def need(cond: bool, problem: str, fix: str):
        if not cond:
            raise FlexcliError(f"{where}: {problem}", fix)

    need(cfg.mode in ("auto", "lora", "shared"), f"mode '{cfg.mode}' is unknown", "use auto, lora or shared")
    need(cfg.timesteps in TIMESTEP_SAMPLING, f"timesteps '{cfg.timesteps}' is unknown", "use uniform or low")
    need(cfg.precision in PRECISIONS, f"precision '{cfg.precision}' is unknown", "use auto, fp32 or bf16")
    need(cfg.save_weights in SAVE_WEIGHTS, f"save_weights '{cfg.save_weights}' is unknown", "use ema or raw")
    need(cfg.steps > 0, "steps must be positive", "set steps >= 1")
    need(cfg.batch_size > 0 and cfg.grad_accum > 0, "batch_size and grad_accum must be positive", "fix them")
    need(cfg.batch_size % cfg.grad_accum == 0, f"batch_size {cfg.batch_size} is not divisible by grad_accum "
         f"{cfg.grad_accum}", "choose a batch size that is a multiple of grad_accum")
    need(cfg.lr > 0, "lr must be positive", "set lr, e.g. 1e-4")
    need(cfg.weight_decay >= 0, "weight_decay must not be negative", "set weight_decay >= 0")
    need(len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), "betas must be two numbers in [0, 1)",
         "e.g. betas: [0.9, 0.999]")
    need(cfg.grad_clip is None or cfg.grad_clip > 0, "grad_clip must be positive (or empty for none)", "fix it")
    need(0 <= cfg.ema_decay < 1, "ema_decay must lie in [0, 1)", "e.g. 0.9999; 0 turns EMA off")
    need(cfg.ckpt_every > 0, "ckpt_every must be positive", "e.g. 500")
    need(cfg.t_bias_power > 0, "t_bias_power must be positive", "e.g. 2")
    need(cfg.flow_shift > 0, "flow_shift must be positive", "e.g. 3 (480p) or 5 (720p)")
    need(cfg.label_dropout is None or 0 <= cfg.label_dropout < 1, "label_dropout must lie in [0, 1)", "fix it")
    need(cfg.mmd_weight >= 0 and cfg.distill_weight >= 0 and cfg.sigma_weight >= 0,
         "loss weights must not be negative", "fix them")
    need(cfg.mmd_weak_steps >= 1 and cfg.mmd_powerful_steps >= 0, "mmd_weak_steps must be >= 1 and "
         "mmd_powerful_steps >= 0", "fix them")
    need(cfg.mmd_respacing > cfg.mmd_weak_steps + cfg.mmd_powerful_steps,
         "mmd_respacing must exceed the bootstrap chain length", "raise mmd_respacing")
    need(cfg.eval_samples > 0, "eval_samples must be positive", "fix it")
    return cfg


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML file (safe_load) -> a mapping of settings."""
    return read_recipe(path)


def resolve(recipe: str | Path | None = None, overrides: dict | None = None, *, base: DistillConfig | None = None,
            where: str = "command line") -> DistillConfig:
    """`base` (default: the defaults) < recipe < overrides (CLI flags; None values mean 'not given')."""
    return config.resolve(DistillConfig, recipe, overrides, base=base, validate=validate, where=where)


def read_config(path: str | Path) -> DistillConfig:
    """A run's saved config.yaml (to resume it)."""
    return config.load_resolved(DistillConfig, path, validate=validate)


def save_config(cfg: DistillConfig, path: Path) -> Path:
    return config.save_resolved(cfg, path, "resolved flexcli distill config (defaults < recipe < command line)")
