"""The settings of `flexcli sample` (defaults < recipe < flags) and the checks that need no model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flexcli.diffusion import schedule as G
from flexcli.diffusion.flow import FLOW_SOLVERS
from flexcli.diffusion.samplers import SOLVERS
from flexcli.diffusion.t2i_solvers import T2I_SOLVERS
from flexcli.diffusion.schedule import ORDERS
from flexcli import checks, config
from flexcli.errors import FlexcliError

PACKING = ("separate", "packed")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCHEDULE_KEYS = ("schedule", "schedule_steps", "compute")
# DDPM solvers (DiT), PixArt's text-to-image ones, and flow-unipc/flow-euler for flow-matching models (Wan)
ALL_SOLVERS = SOLVERS + tuple(T2I_SOLVERS) + tuple(f"flow-{s}" for s in FLOW_SOLVERS)


@dataclass
class SampleConfig:
    checkpoint: str = ""
    out: str = ""
    num_samples: int = 8
    steps: int = 250
    solver: str | None = None  # None: the family's (ddpm for DiT, flow-unipc for Wan)
    flow_shift: float | None = None  # flow-matching solvers: None = diffusers' Wan choice (3.0 at 480p, 5.0 above)
    eta: float = 0.0  # DDIM only
    cfg_scale: float = 4.0  # s_cfg1; 1 disables guidance
    cfg_scale_weak: float | None = None  # s_cfg2; default from (1 - s1) / (1 - s2) = 2.5
    cfg_scale_all_weak: float | None = None  # s_cfg0: CFG of the steps where both branches are weak; default s1
    guidance: str = "weak"  # weak (paper §3.4) or cfg
    guided_channels: int | None = None  # None: all eps channels; 3: DiT's released-FID variant
    class_labels: list[int] | None = None  # cycled over samples; None: drawn from the seed
    # text-conditional families (PixArt, Wan): prompts cycled over samples, and where their embeddings come from
    prompts: list[str] | None = None  # --prompt (repeatable)
    prompts_file: str | None = None  # one prompt per line
    text_encoder: str | None = None  # a local encoder folder (T5/umT5), or "minilm" (the packaged all-MiniLM-L6-v2)
    pipeline: str | None = None  # a local diffusers pipeline folder: its text_encoder/ and tokenizer/ (and vae/)
    prompt_embeds: str | None = None  # precomputed embeddings (flexcli.text prompt-embeds file)
    negative_prompt: str = ""  # the null caption of checkpoints without a learned one (diffusers' default "")
    seed: int = 0
    schedule: str | None = None  # x/y, x, P:N,... (see flexcli.diffusion.schedule)
    schedule_steps: Any = None  # explicit per-step list (recipes)
    compute: float | None = None  # target compute fraction
    weak_patch: Any = None  # the weak size of x/y and --compute (4; video 2,2,2); default the smallest weak size
    order: str = "weak-first"
    packing: str = "separate"
    batch_size: int = 16
    # video families (Wan): the clip's size in pixels; the latent is (frames - 1) / 4 + 1 x height / 8 x width / 8
    # (a pixel-space model's clip is its latent; default its config's latent_size)
    frames: int | None = None  # default 81
    height: int | None = None  # default 480
    width: int | None = None  # default 832
    vae: str | None = None
    merge_lora: bool = False
    device: str = "auto"
    dtype: str = "float32"  # float32, float64 (model and solver state), bfloat16/float16 (CUDA autocast)
    force: bool = False
    allow_nonfinite: bool = False  # use a checkpoint with NaN/inf weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_config(cli: dict, recipe: str | Path | None = None) -> SampleConfig:
    """defaults < recipe < CLI flags (`cli` holds only the flags actually given, i.e. not None), through the one
    resolver (`flexcli.config`): one way to choose the schedule per level; `out` and `force` are flags only."""
    cfg = config.resolve(SampleConfig, recipe, cli, exclusive=[SCHEDULE_KEYS], flag_only=("out", "force"),
                         validate=lambda cfg, where: validate(cfg))
    given = cli.get("steps") is not None or (recipe is not None and "steps" in config.read_recipe(recipe))
    if cfg.solver in T2I_SOLVERS and not given:  # PixArt's protocol: iDDPM 100, DPM-Solver 20, SA-Solver 25 steps
        cfg.steps = T2I_SOLVERS[cfg.solver]
    return cfg


def validate(cfg: SampleConfig) -> None:
    """Checks that need no model."""
    def need(cond, problem, fix):
        if not cond:
            raise FlexcliError(problem, fix)
    checks.finite_fields(cfg, lambda key: "--" + key.replace("_", "-"))
    need(isinstance(cfg.num_samples, int) and cfg.num_samples >= 1, f"--num-samples {cfg.num_samples} is not positive",
         "pass --num-samples 1 or more")
    need(isinstance(cfg.steps, int) and 1 <= cfg.steps <= 1000, f"--steps {cfg.steps} is not in 1..1000",
         "e.g. --steps 250")
    need(cfg.solver is None or cfg.solver in ALL_SOLVERS, f"unknown solver '{cfg.solver}'",
         f"use one of: {', '.join(ALL_SOLVERS)}")
    need(cfg.flow_shift is None or cfg.flow_shift > 0, f"--flow-shift {cfg.flow_shift} is not positive",
         "pass e.g. --flow-shift 3 (480p) or 5 (720p)")
    need(cfg.guidance in G.GUIDANCE_MODES, f"unknown guidance '{cfg.guidance}'", "use weak or cfg")
    need(cfg.order in ORDERS, f"unknown order '{cfg.order}'", f"use one of: {', '.join(ORDERS)}")
    need(cfg.packing in PACKING, f"unknown packing '{cfg.packing}'", f"use one of: {', '.join(PACKING)}")
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, f"--batch-size {cfg.batch_size} is not positive",
         "pass --batch-size 1 or more")
    need(cfg.dtype in DTYPES, f"unknown dtype '{cfg.dtype}'", f"use one of: {', '.join(DTYPES)}")
    checks.number("--eta", cfg.eta, 0, fix="pass --eta 0 (deterministic DDIM) or more")
    checks.sample_settings(cfg)
    if cfg.vae is not None and not Path(cfg.vae).exists():
        raise FlexcliError(f"--vae path {cfg.vae} not found", "pass a local diffusers AutoencoderKL folder "
                           "(e.g. a saved stabilityai/sd-vae-ft-ema; for Wan its AutoencoderKLWan vae/ folder); "
                           "nothing is downloaded")
    if cfg.class_labels is not None:
        need(len(cfg.class_labels) > 0, "--class-labels is empty", "pass e.g. --class-labels 207,360")
    for flag, path in (("--prompts-file", cfg.prompts_file), ("--prompt-embeds", cfg.prompt_embeds),
                       ("--pipeline", cfg.pipeline)):
        need(path is None or Path(path).exists(), f"{flag} {path} not found", f"check the {flag} path")
    need(cfg.text_encoder in (None, "minilm") or Path(cfg.text_encoder).exists(),
         f"--text-encoder {cfg.text_encoder} not found", "pass a local encoder folder, or --text-encoder minilm")
    need(cfg.prompts is None or cfg.prompts_file is None, "--prompt and --prompts-file are both given",
         "give the prompts one way")
