"""What `flexcli profile` measures: its settings, the CSV columns, the shapes of the rows, and random-weight
models for named configs. Shared by forward rows (`flexcli.profiling.forward`) and whole sampling runs
(`flexcli.profiling.schedules`)."""
from __future__ import annotations

import dataclasses
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flexcli.errors import FlexcliError
from flexcli.models.configs import named_config
from flexcli.models.dit import DiT
from flexcli.profiling import latency as lat

FLOPS_COLUMNS = [
    "kind", "model", "source", "lora", "depth", "width", "heads", "latent", "patch_size", "tokens", "batch",
    "dtype", "macs", "flops", "gmacs", "gflops", "batch_macs", "batch_flops", "param_count", "param_bytes",
    "arithmetic_intensity", "schedule", "steps", "packing",
]
TIMING_COLUMNS = [
    "device", "device_name", "threads", "compile", "attention_backend", "torch", "latency_ms", "latency_ms_p25",
    "latency_ms_p75", "latency_ms_std", "latency_ms_min", "repeats", "warmup", "achieved_tflops", "peak_tflops",
    "peak_bandwidth_tbps", "pct_of_peak", "peak_mem_mb",
]
META_COLUMNS = ["run_id", "flexcli", "git_sha", "date", "notes"]
COMPILE_WARMUP = 3  # compilation and CUDA-graph recording happen in the first calls
DEFAULT_REPEATS = 20  # timed forward passes per row


@dataclass
class ProfileSpec:
    """Everything `flexcli profile` takes; see the module docstring."""

    model: str | None = None  # a named config (DiT-XL/2, PixArt-XL/2-1024, Emu/2, ...), random weights (default DiT-XL/2)
    checkpoint: str | Path | None = None
    patch_sizes: list | None = None  # ints (images) or (p_t, p_h, p_w) tuples (video)
    seq_lengths: list[int] | None = None
    latent: str | None = None  # "32" or "32x48"; video "21x60x104"
    image_size: str | None = None  # "256" or "256x512"; latent = image / 8
    fit_latent: bool = False
    depth: int | None = None
    width: int | None = None
    heads: int | None = None
    batch: int = 2
    dtype: str | None = None
    compile: bool = False
    device: str | None = None
    repeats: int | None = None  # default 20 per forward row, 3 per schedule
    warmup: int = 3
    peak_tflops: float | None = None
    peak_bandwidth: float | None = None  # TB/s
    analytic: bool = False
    seed: int = 0
    # schedule-level profiling (`flexcli.profiling.schedules`): whole sampling runs instead of forward rows
    schedules: list[str] | None = None
    steps: int | None = None  # default 250
    solver: str | None = None  # default ddpm
    cfg_scale: float | None = None  # default 4.0; 1 disables guidance
    weak_patch: int | None = None  # random weights: the in-memory flexify's weak size (default 2x the base)
    merge_lora: bool = False  # also profile the LoRAs merged


@dataclass(frozen=True)
class Shape:
    patch_size: int
    height: int  # latent height and width
    width: int

    @property
    def tokens(self) -> int:
        return (self.height // self.patch_size) * (self.width // self.patch_size)

    @property
    def latent(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def spatial(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def label(self) -> int:
        return self.patch_size

    def example_inputs(self, cfg, batch: int, generator: torch.Generator, device, dtype):
        x = torch.randn(batch, cfg.in_channels, self.height, self.width, generator=generator).to(device, dtype)
        t = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        y = random_condition(cfg, batch, generator)
        y = y.to(device) if isinstance(y, torch.Tensor) else type(y)(y.embeds.to(device, dtype), y.mask.to(device))
        return x, t, y


# ------------------------------------------------------------------------------------------------------
def parse_int_list(text: str | None, option: str) -> list[int] | None:
    """"1024,256,64" -> [1024, 256, 64] (positive, de-duplicated, in order)."""
    if text is None:
        return None
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) <= 0:
            raise FlexcliError(f"{option} '{text}' is not a list of positive integers", f"e.g. {option} 1024,256")
        if int(part) not in out:
            out.append(int(part))
    if not out:
        raise FlexcliError(f"{option} is empty", f"e.g. {option} 1024,256")
    return out


def parse_patch_list(text: str | None, option: str) -> list | None:
    """"2,4" -> [2, 4]; video "1x2x2,2x2x2" -> [(1, 2, 2), (2, 2, 2)] (de-duplicated, in order)."""
    if text is None or "x" not in str(text):
        return parse_int_list(text, option)
    out: list = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        axes = part.split("x")
        if not all(a.isdigit() and int(a) > 0 for a in axes):
            raise FlexcliError(f"{option} '{text}' is not a list of patch sizes", f"e.g. {option} 1x2x2,1x4x4")
        p = tuple(int(a) for a in axes) if len(axes) > 1 else int(axes[0])
        if p not in out:
            out.append(p)
    if not out:
        raise FlexcliError(f"{option} is empty", f"e.g. {option} 1x2x2,1x4x4")
    return out


def _parse_size(text: str, option: str) -> tuple[int, int]:
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise FlexcliError(f"{option} '{text}' is not a size", f"use N or HxW, e.g. {option} 32 or {option} 32x48")
    h, w = int(parts[0]), int(parts[-1])
    return h, w


def parse_latent(latent: str | None, image_size: str | None) -> tuple[int, int] | None:
    if latent is not None and image_size is not None:
        raise FlexcliError("--latent and --image-size both given", "pass one of them (latent = image size / 8)")
    if latent is not None:
        return _parse_size(latent, "--latent")
    if image_size is not None:
        h, w = _parse_size(image_size, "--image-size")
        if h % 8 or w % 8:
            raise FlexcliError(f"--image-size {image_size} is not a multiple of 8 (the SD-VAE's down-sampling)",
                               "use e.g. --image-size 256 or 512")
        return h // 8, w // 8
    return None


def random_config(spec: ProfileSpec):
    """The named config (DiT or PixArt family) with the depth/width/heads overrides (heads kept when they divide
    a new width)."""
    from flexcli.models.pixart_config import NAMED_CONFIGS as PIXART, named_pixart_config

    name = spec.model or "DiT-XL/2"
    cfg = named_pixart_config(name) if name in PIXART else named_config(name)
    for option, value in (("--depth", spec.depth), ("--width", spec.width), ("--heads", spec.heads)):
        if value is not None and value <= 0:
            raise FlexcliError(f"{option} {value} is not positive", f"pass a positive {option}")
    width = spec.width or cfg.hidden_size
    heads = spec.heads or cfg.num_heads
    if width % heads:
        raise FlexcliError(f"width {width} is not divisible by {heads} heads", "pass --heads that divides --width")
    if name in PIXART:
        return dataclasses.replace(cfg, num_layers=spec.depth or cfg.depth, num_attention_heads=heads,
                                   attention_head_dim=width // heads, cross_attention_dim=width)
    return dataclasses.replace(cfg, depth=spec.depth or cfg.depth, hidden_size=width, num_heads=heads)


def plan_shapes(spec: ProfileSpec, latent: tuple[int, int], base_patch: int,
                allowed: list[int] | None) -> list[Shape]:
    """The (patch size, latent) of every row; `allowed` is a checkpoint's patch sizes (None: any)."""
    h, w = latent
    if spec.patch_sizes and spec.seq_lengths:
        raise FlexcliError("--patch-sizes and --seq-lengths both given", "pass one of them")
    if spec.fit_latent:
        if not spec.seq_lengths:
            raise FlexcliError("--fit-latent needs --seq-lengths", "e.g. --seq-lengths 4096,33792 --fit-latent")
        return [_fitted_shape(s, base_patch) for s in spec.seq_lengths]
    candidates = allowed or [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
    if spec.seq_lengths:
        by_tokens = {Shape(p, h, w).tokens: p for p in candidates if h % p == 0 and w % p == 0}
        shapes = []
        for s in spec.seq_lengths:
            if s not in by_tokens:
                have = ", ".join(f"p{p}: {t}" for t, p in sorted(by_tokens.items(), key=lambda kv: kv[1])[:8])
                fix = "choose one of those" + ("" if allowed else ", set --latent, or size the latent per row "
                                                                   "with --fit-latent")
                raise FlexcliError(f"sequence length {s} is not given by any patch size of the {h}x{w} latent "
                                   f"(tokens {have})", fix)
            shapes.append(Shape(by_tokens[s], h, w))
        return shapes
    if spec.patch_sizes:
        for p in spec.patch_sizes:
            if allowed is not None and p not in allowed:
                raise FlexcliError(f"the checkpoint does not run at patch size {p}",
                                   f"choose from its patch sizes {allowed}")
            if h % p or w % p:
                raise FlexcliError(f"patch size {p} does not divide the {h}x{w} latent",
                                   "choose a patch size that divides the latent, or change --latent")
        return [Shape(p, h, w) for p in spec.patch_sizes]
    if allowed is not None:
        return [Shape(p, h, w) for p in allowed]
    return [Shape(p, h, w) for p in (base_patch, 2 * base_patch) if h % p == 0 and w % p == 0]


def _fitted_shape(tokens: int, p: int) -> Shape:
    """The most square token grid gh x gw = tokens, as a latent of (gh p) x (gw p)."""
    gh = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return Shape(p, gh * p, (tokens // gh) * p)


def random_condition(cfg, batch: int, g: torch.Generator):
    """What a profiled forward pass is conditioned on: class labels, or random captions of full length."""
    if hasattr(cfg, "caption_channels"):
        from flexcli.flex.conditions import TextCondition

        L = cfg.model_max_length
        return TextCondition(torch.randn(batch, L, cfg.caption_channels, generator=g), torch.ones(batch, L))
    return torch.randint(0, cfg.num_classes, (batch,), generator=g)


def random_model(cfg, shape: Shape, device: torch.device, seed: int):
    """A model with random weights whose own patch size and latent are the row's (meta device: no memory)."""
    from flexcli.models.posembed import sincos_2d

    if hasattr(cfg, "caption_channels"):
        return _random_pixart(cfg, shape, device, seed)
    torch.manual_seed(seed)
    meta = device.type == "meta"  # only counted: skip the (large) sin-cos table, keep its shape
    square = shape.height == shape.width and not meta
    with torch.device(device):  # a rectangular table replaces the square one: start from a 1-token one
        model = DiT(dataclasses.replace(cfg, patch_size=shape.patch_size,
                                        input_size=shape.height if square else shape.patch_size))
    if meta:
        model.pos_embed = torch.nn.Parameter(torch.empty(1, shape.tokens, cfg.hidden_size, device=device),
                                             requires_grad=False)
    elif not square:  # a rectangular token grid: its own 2-D sin-cos table
        p = shape.patch_size
        table = sincos_2d(cfg.hidden_size, np.arange(shape.height // p), np.arange(shape.width // p))
        model.pos_embed = torch.nn.Parameter(torch.from_numpy(table).unsqueeze(0).to(device), requires_grad=False)
    if not meta:
        with torch.no_grad():  # DiT's init zeroes adaLN and the final layer: use dense random weights
            for param in model.parameters():
                if param.requires_grad:
                    param.normal_(0, 0.02)
    return model.eval()


def _random_pixart(cfg, shape: Shape, device: torch.device, seed: int):
    """PixArt at the row's patch size; a latent other than the config's runs on PixArt's own position rule for
    other grids (learned positions, the Emu class, exist for the native grid only: sin-cos stands in)."""
    from flexcli.models.pixart import PixArt

    native = (shape.height, shape.width) == (cfg.sample_size, cfg.sample_size)
    cfg = dataclasses.replace(cfg, patch_size=shape.patch_size, sample_size=shape.height,
                              pos_embed_type=cfg.pos_embed_type if native else "sincos")
    torch.manual_seed(seed)
    with torch.device(device):
        model = PixArt(cfg)
    if device.type != "meta":
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, 0.02)
    return model.eval()


def _git_sha() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _param_stats(model: torch.nn.Module, dtype: str) -> dict:
    count = sum(p.numel() for p in model.parameters())
    return {"param_count": count, "param_bytes": count * lat.DTYPES[dtype].itemsize}


def _cost_fields(per_sample, batched, params: dict) -> dict:
    return {"macs": per_sample.macs, "flops": per_sample.flops, "gmacs": per_sample.gmacs,
            "gflops": per_sample.gflops, "batch_macs": batched.macs, "batch_flops": batched.flops, **params,
            "arithmetic_intensity": batched.flops / params["param_bytes"]}


def _check_numbers(spec: ProfileSpec) -> None:
    for name, value, low in (("--batch", spec.batch, 1), ("--repeats", spec.repeats, 1), ("--warmup", spec.warmup, 0)):
        if value is not None and value < low:
            raise FlexcliError(f"{name} {value} is below {low}", f"pass {name} {max(low, 1)} or more")
    for name, value in (("--peak-tflops", spec.peak_tflops), ("--peak-bandwidth", spec.peak_bandwidth)):
        if value is not None and not value > 0:
            raise FlexcliError(f"{name} {value} is not positive", f"pass a positive {name} or leave it out")
    sampling = [n for n, v in (("--steps", spec.steps), ("--solver", spec.solver), ("--cfg-scale", spec.cfg_scale),
                                ("--weak-patch", spec.weak_patch)) if v is not None]
    if spec.merge_lora:
        sampling.append("--merge-lora")
    if spec.schedules is None and sampling:
        raise FlexcliError(f"{', '.join(sampling)} only apply to --schedules",
                           "add e.g. --schedules 250/250,130/130,70/70, or drop them")
    if spec.schedules is not None:
        forward = [n for n, v in (("--seq-lengths", spec.seq_lengths), ("--patch-sizes", spec.patch_sizes))
                   if v is not None] + (["--fit-latent"] if spec.fit_latent else [])
        if forward:
            raise FlexcliError(f"{', '.join(forward)} cannot be combined with --schedules (forward rows and "
                               f"sampling runs are separate profiles)", "run flexcli profile twice and merge the "
                               "CSVs with benchmarks/profile_summary.py")
