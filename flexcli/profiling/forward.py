"""Forward rows of `flexcli profile`: exact FLOPs beside measured latency, per sequence length (§4.4, Fig. 9).

What a row is. One forward pass of `batch` samples (2 = one classifier-free-guidance step) at one patch size
on one latent. Its FLOPs come from `flexcli.compute` (never from a counter at run time); its latency
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
* video (a Wan config or checkpoint): 3-D latents and patch sizes, see `flexcli.profiling.video`.

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

import gc
import math
from pathlib import Path
from typing import Callable

import torch

from flexcli.compute import forward_cost, model_cost
from flexcli.errors import FlexcliError
from flexcli.profiling import latency as lat
from flexcli.profiling.spec import (COMPILE_WARMUP, DEFAULT_REPEATS, ProfileSpec, _cost_fields, _param_stats,
                                    parse_latent, plan_shapes, random_config, random_model)
from flexcli.profiling.video import (WAN_480P_81, is_video_model, parse_video_latent, plan_video_shapes,
                                     random_wan, video_config)


class _Variant:
    """A model to profile: a named config with random weights (built per row) or a loaded checkpoint."""

    def __init__(self, label: str, source: str, lora: str, cfg, model=None, video: bool = False):
        self.label, self.source, self.lora, self.cfg, self.model, self.video = label, source, lora, cfg, model, video

    def build(self, shape, device: torch.device, seed: int):
        if self.model is not None:
            return self.model
        return (random_wan if self.video else random_model)(self.cfg, shape, device, seed)

    def cost(self, model, shape, batch: int):
        if self.model is not None:
            return model_cost(model, shape.patch_size, batch, merged=self.lora == "merged",
                              input_size=shape.spatial if self.video else None)
        return forward_cost(self.cfg, shape.patch_size, batch, input_size=shape.spatial)


def _label(spec: ProfileSpec, cfg, default: str) -> str:
    label = spec.model or default
    if (spec.depth, spec.width, spec.heads) != (None, None, None):
        label += f" (depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads})"
    return label


def _variants(spec: ProfileSpec) -> tuple[list[_Variant], list]:
    if spec.checkpoint is None and is_video_model(spec.model):
        if spec.image_size is not None:
            raise FlexcliError("--image-size is for image models", "give a video latent with --latent FxHxW")
        cfg = video_config(spec)
        shapes = plan_video_shapes(spec, parse_video_latent(spec.latent, WAN_480P_81), cfg.patch_size, None)
        return [_Variant(_label(spec, cfg, ""), "random weights", "none", cfg, video=True)], shapes
    if spec.checkpoint is None:
        latent = parse_latent(spec.latent, spec.image_size)
        cfg = random_config(spec)
        shapes = plan_shapes(spec, latent or (cfg.input_size, cfg.input_size), cfg.patch_size, None)
        return [_Variant(_label(spec, cfg, "DiT-XL/2"), "random weights", "none", cfg)], shapes
    if spec.model is not None:
        raise FlexcliError("--model and --checkpoint both given", "pass one: a named config or a checkpoint")
    from flexcli.api import load_model

    path = Path(spec.checkpoint)
    model = load_model(path)
    video = len(model.base_patch) == 3
    given = [n for n, v in (("--latent", None if video else spec.latent), ("--image-size", spec.image_size),
                            ("--depth", spec.depth), ("--width", spec.width), ("--heads", spec.heads)) if v is not None]
    if spec.fit_latent:
        given.append("--fit-latent")
    if given:
        raise FlexcliError(f"{', '.join(given)} cannot be used with --checkpoint (the checkpoint fixes its shape)",
                           "drop them, or profile a named config with --model")
    if video:
        from flexcli.families import family_of

        latent = parse_video_latent(spec.latent, family_of(model.config).cost.spatial(model.config))
        shapes = plan_video_shapes(spec, latent, model.base_patch, model.patch_sizes)
    else:
        shapes = plan_shapes(spec, (model.config.input_size,) * 2, model.config.patch_size, model.patch_sizes)
    if model.flex is not None and model.flex.mode == "lora":
        merged = load_model(path, merge_lora=True)
        return [_Variant(path.name, str(path), "unmerged", model.config, model, video),
                _Variant(path.name, str(path), "merged", model.config, merged, video)], shapes
    return [_Variant(path.name, str(path), "none", model.config, model, video)], shapes


def run_forward(spec: ProfileSpec, device: torch.device | None, dtype: str, common: dict,
                say: Callable[[str], None], notice: str | None = None) -> list[dict]:
    """The forward rows of `spec` (device None: --analytic, FLOPs only); `notice` is said once all is checked."""
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
                   "patch_size": shape.label, "tokens": shape.tokens, "batch": spec.batch, "dtype": dtype,
                   "schedule": "", "steps": "", "packing": ""}
            notes = []
            if shape.height != shape.width and variant.model is None and not variant.video:
                notes.append(f"rectangular latent: 2-D sin-cos positions on a {shape.height // shape.patch_size}x"
                             f"{shape.width // shape.patch_size} token grid")
            say(f"[{len(rows) + 1}/{total}] {variant.label} lora={variant.lora} p={shape.label} "
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


def _time_row(spec: ProfileSpec, variant: _Variant, model, shape, device: torch.device, dtype: str,
              notes: list[str]) -> dict:
    torch_dtype = lat.DTYPES[dtype]
    model = model.to(device=device, dtype=torch_dtype)
    cfg = variant.cfg
    g = torch.Generator().manual_seed(spec.seed + 1)
    x, t, y = shape.example_inputs(cfg, spec.batch, g, device, torch_dtype)
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
