"""`flexcli profile`: exact FLOPs beside measured latency, per sequence length (paper §4.4, Fig. 9).

What a row is. One forward pass of `batch` samples (2 = one classifier-free-guidance step) at one patch size
on one latent. Its FLOPs come from `flexcli.profiling.flops` (never from a counter at run time); its latency
is measured as described in `flexcli.profiling.latency`.

Which rows:
* `patch_sizes`: each must divide the latent (a checkpoint: one of its own patch sizes).
* `seq_lengths`: each must be the token count (H/p)(W/p) of one such patch size.
* `seq_lengths` with `fit_latent` (random weights only): the latent is sized per row so that the model's own
  patch size gives exactly that many tokens: a square latent when the count is a square, else the most
  square rectangle (33792 tokens at p=2: a 352x384 latent, a 176x192 token grid). The positional table is
  then the 2-D sin-cos of that grid. This is how the paper's T2I (4096) and T2V (33792) sequence lengths are
  profiled with a 2-D DiT: the transformer sees a token sequence of that length, as in Fig. 9.
* neither: a checkpoint's patch sizes; for a named config its patch size and twice it (the FlexiDiT pair).

Random-weight models (`model`, a named config with optional depth/width/heads/latent overrides) are built per
row with the row's patch size as their own, so the cost is `forward_cost(config, p, batch, input_size=(H, W))`.
A checkpoint is loaded once; a FlexiDiT checkpoint in lora mode is profiled twice, LoRAs unmerged and merged
(`lora` column). Arithmetic intensity follows the paper (App., Fig. 9): FLOPs of the timed call per byte of
the model's parameters in the run dtype.

The CSV is one row per measurement. Forward rows have `kind="forward"`. With `schedules`, the rows are
instead whole sampling runs (`kind="schedule"`, `flexcli.profiling.schedules`) that fill `schedule`, `steps` and
`packing`, with `macs`/`flops` for the whole run per sample, `batch_flops` and `latency_ms` for the whole batch
and `patch_size`/`tokens` empty. The plots (`flexcli.profiling.plots`) group rows by these columns and handle
both kinds.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import math
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flexcli import __version__
from flexcli.errors import FlexcliError
from flexcli.models.configs import DiTConfig, named_config
from flexcli.models.dit import DiT
from flexcli.profiling import latency as lat
from flexcli.profiling.flops import forward_cost, model_cost

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

    model: str | None = None  # a named config, random weights (default DiT-XL/2 without a checkpoint)
    checkpoint: str | Path | None = None
    patch_sizes: list[int] | None = None
    seq_lengths: list[int] | None = None
    latent: str | None = None  # "32" or "32x48"
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


def random_config(spec: ProfileSpec) -> DiTConfig:
    """The named config with the depth/width/heads overrides (heads kept when they divide a new width)."""
    cfg = named_config(spec.model or "DiT-XL/2")
    for name, value in (("--depth", spec.depth), ("--width", spec.width), ("--heads", spec.heads)):
        if value is not None and value <= 0:
            raise FlexcliError(f"{name} {value} is not positive", f"pass a positive {name}")
    width = spec.width or cfg.hidden_size
    heads = spec.heads or cfg.num_heads
    if width % heads:
        raise FlexcliError(f"width {width} is not divisible by {heads} heads", "pass --heads that divides --width")
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


def random_model(cfg: DiTConfig, shape: Shape, device: torch.device, seed: int) -> DiT:
    """A DiT with random weights whose own patch size and latent are the row's (meta device: no memory)."""
    from flexcli.models.posembed import sincos_2d

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


# ------------------------------------------------------------------------------------------------------
class _Variant:
    """A model to profile: a named config with random weights (built per row) or a loaded checkpoint."""

    def __init__(self, label: str, source: str, lora: str, cfg: DiTConfig, model: DiT | None = None):
        self.label, self.source, self.lora, self.cfg, self.model = label, source, lora, cfg, model

    def build(self, shape: Shape, device: torch.device, seed: int) -> DiT:
        return self.model if self.model is not None else random_model(self.cfg, shape, device, seed)

    def cost(self, model: DiT, shape: Shape, batch: int):
        if self.model is not None:
            return model_cost(model, shape.patch_size, batch, merged=self.lora == "merged")
        return forward_cost(self.cfg, shape.patch_size, batch, input_size=(shape.height, shape.width))


def _variants(spec: ProfileSpec) -> tuple[list[_Variant], list[Shape]]:
    latent = parse_latent(spec.latent, spec.image_size)
    if spec.checkpoint is None:
        cfg = random_config(spec)
        shapes = plan_shapes(spec, latent or (cfg.input_size, cfg.input_size), cfg.patch_size, None)
        label = spec.model or "DiT-XL/2"
        if (spec.depth, spec.width, spec.heads) != (None, None, None):
            label += f" (depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads})"
        return [_Variant(label, "random weights", "none", cfg)], shapes
    if spec.model is not None:
        raise FlexcliError("--model and --checkpoint both given", "pass one: a named config or a checkpoint")
    given = [n for n, v in (("--latent", spec.latent), ("--image-size", spec.image_size), ("--depth", spec.depth),
                            ("--width", spec.width), ("--heads", spec.heads)) if v is not None]
    if spec.fit_latent:
        given.append("--fit-latent")
    if given:
        raise FlexcliError(f"{', '.join(given)} cannot be used with --checkpoint (the checkpoint fixes its shape)",
                           "drop them, or profile a named config with --model")
    from flexcli.api import load_model

    path = Path(spec.checkpoint)
    model = load_model(path)
    shapes = plan_shapes(spec, (model.config.input_size,) * 2, model.config.patch_size, model.patch_sizes)
    if model.flex is not None and model.flex.mode == "lora":
        merged = load_model(path, merge_lora=True)
        return [_Variant(path.name, str(path), "unmerged", model.config, model),
                _Variant(path.name, str(path), "merged", model.config, merged)], shapes
    return [_Variant(path.name, str(path), "none", model.config, model)], shapes


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


def run_profile(spec: ProfileSpec, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Profile every row of `spec`; returns the rows (dicts keyed by the CSV columns)."""
    say = progress or (lambda message: None)
    _check_numbers(spec)
    device, notice = lat.resolve_device(spec.device) if not spec.analytic else (None, None)
    dtype = lat.parse_dtype(spec.dtype, device)
    common = {"run_id": uuid.uuid4().hex[:8], "flexcli": __version__, "git_sha": _git_sha(),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if spec.schedules is not None:
        from flexcli.profiling.schedules import run_schedules

        return run_schedules(spec, device, dtype, common, say, notice)  # checks every input before the notice
    variants, shapes = _variants(spec)  # every input is checked before anything is printed or built
    if notice:
        say(notice)
    rows = []
    total = len(variants) * len(shapes)
    for variant in variants:
        for shape in shapes:
            cfg = variant.cfg
            row = {"kind": "forward", "model": variant.label, "source": variant.source, "lora": variant.lora,
                   "depth": cfg.depth, "width": cfg.hidden_size, "heads": cfg.num_heads, "latent": shape.latent,
                   "patch_size": shape.patch_size, "tokens": shape.tokens, "batch": spec.batch, "dtype": dtype,
                   "schedule": "", "steps": "", "packing": ""}
            notes = []
            if shape.height != shape.width and variant.model is None:
                notes.append(f"rectangular latent: 2-D sin-cos positions on a {shape.height // shape.patch_size}x"
                             f"{shape.width // shape.patch_size} token grid")
            say(f"[{len(rows) + 1}/{total}] {variant.label} lora={variant.lora} p={shape.patch_size} "
                f"latent {shape.latent}: {shape.tokens} tokens")
            model = variant.build(shape, device or torch.device("meta"), spec.seed)
            row.update(_cost_fields(variant.cost(model, shape, 1), variant.cost(model, shape, spec.batch),
                                    _param_stats(model, dtype)))
            if not spec.analytic:
                row.update(_time_row(spec, variant, model, shape, device, dtype, notes))
                if variant.model is None:
                    del model
                    _free(device)
            rows.append({**row, **common, "notes": "; ".join(notes)})
    return rows


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time_row(spec: ProfileSpec, variant: _Variant, model: DiT, shape: Shape, device: torch.device, dtype: str,
              notes: list[str]) -> dict:
    torch_dtype = lat.DTYPES[dtype]
    model = model.to(device=device, dtype=torch_dtype)
    cfg = variant.cfg
    g = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(spec.batch, cfg.in_channels, shape.height, shape.width, generator=g).to(device, torch_dtype)
    t = torch.randint(0, 1000, (spec.batch,), generator=g).to(device)
    y = torch.randint(0, cfg.num_classes, (spec.batch,), generator=g).to(device)
    p = shape.patch_size
    warmup = max(spec.warmup, COMPILE_WARMUP) if spec.compile else spec.warmup
    repeats = spec.repeats or DEFAULT_REPEATS
    before = None
    if spec.compile:
        torch._dynamo.reset()  # a fresh compile per row: no recompilation limits, no stale CUDA graphs
        forward = torch.compile(lambda a, b, c: model(a, b, c, patch_size=p), fullgraph=True, mode="reduce-overhead")
        if device.type == "cuda":
            before = torch.compiler.cudagraph_mark_step_begin
        else:
            notes.append("reduce-overhead's CUDA graphs do not apply on the CPU")
    else:
        forward = lambda a, b, c: model(a, b, c, patch_size=p)  # noqa: E731
    name = lat.device_name(device)
    on_cuda = device.type == "cuda"

    def reset_memory() -> None:
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)

    with lat.measuring(spec.compile, device.type, f"out of memory on {name} at {shape.tokens} tokens, batch {spec.batch}",
                       "lower --batch or the sequence length"), torch.no_grad():
        timing = lat.measure(lambda: forward(x, t, y), device, warmup, repeats, before_call=before,
                             after_warmup=reset_memory)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else math.nan
    if not on_cuda:
        notes.append("peak memory is measured on CUDA only")
    peak_tflops, peak_tbps = lat.resolve_peaks(name, dtype, on_cuda, spec.peak_tflops, spec.peak_bandwidth, notes)
    batch_flops = variant.cost(model, shape, spec.batch).flops
    achieved = batch_flops / (timing.median / 1e3) / 1e12
    return {
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(), "compile": spec.compile,
        "attention_backend": lat.attention_backend(device, torch_dtype, shape.tokens, cfg.num_heads,
                                                   cfg.hidden_size // cfg.num_heads, spec.batch),
        "torch": torch.__version__, "latency_ms": timing.median, "latency_ms_p25": timing.quantile(0.25),
        "latency_ms_p75": timing.quantile(0.75), "latency_ms_std": timing.std, "latency_ms_min": min(timing.samples_ms),
        "repeats": repeats, "warmup": warmup, "achieved_tflops": achieved, "peak_tflops": peak_tflops,
        "peak_bandwidth_tbps": peak_tbps, "pct_of_peak": 100 * achieved / peak_tflops, "peak_mem_mb": peak_mem,
    }


# ------------------------------------------------------------------------------------------------------
def profile(spec: ProfileSpec, out: str | Path, force: bool = False,
            progress: Callable[[str], None] | None = None) -> tuple[list[dict], list[Path]]:
    """Check the outputs, profile, then write the CSV and (timed runs) the two plots drawn from it."""
    from flexcli.profiling.report import resolve_outputs, write_outputs

    outputs = resolve_outputs(out, force, timed=not spec.analytic, roofline=spec.schedules is None)
    rows = run_profile(spec, progress)
    columns = FLOPS_COLUMNS + ([] if spec.analytic else TIMING_COLUMNS) + META_COLUMNS
    return rows, write_outputs(rows, columns, outputs)
