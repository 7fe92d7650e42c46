"""Schedule-level profiling for `flexcli profile --schedules` (paper §4.4, App. B.2 Fig. 12).

A row (`kind="schedule"`) is one whole sampling run of `batch` samples: `steps` solver steps with the given patch
schedule, classifier-free guidance (unless `--cfg-scale 1`) and one packing option for the steps whose two
branches run at different patch sizes:
* `separate`: two forward passes (conditional, guidance) at their own sizes;
* `packed`: one forward pass over both sequences with a block-diagonal mask (`flexcli.flex.packing`).

FLOPs come from the sampler itself: `flexcli.sampling.make_plan` gives the exact MACs of every step (the numbers
`run.json` records), and a row's `macs`/`flops` are their sum per sample, `batch_macs`/`batch_flops` that times
the batch. `patch_size`, `tokens` and `arithmetic_intensity` are left empty (a run mixes sizes).

Timing covers `flexcli.sampling.sample_latents` only: the per-sample noise, every step, the solver and the copy
of the final latents to the host; no VAE, no PNGs. Before timing, `warmup` short samples run each distinct
(cond, guidance) patch-size pair once per packing (compilation included); then every run is timed `repeats`
times, round-robin over schedules and packings so that drift in machine speed hits all alike (CUDA events around
each run on GPU, synchronised `perf_counter` on CPU); the median and spread are reported. A schedule without
mixed-size steps (every x/x schedule, or no guidance) runs the same code for both packings: it is timed once and
both rows carry that measurement (the `notes` say so).

Models: a checkpoint (a FlexiDiT; with `merge_lora`, a LoRA one is profiled unmerged and merged), or a named
config with random weights flexified in memory in LoRA mode with one weak patch size (`weak_patch`, default twice
the base). Weights are cast to the profile dtype; with bf16/fp16 the sampler's own autocast runs the model and the
solver state stays in fp32, as in `flexcli sample --dtype bfloat16`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from flexcli.errors import FlexcliError
from flexcli.profiling import latency as lat

SAMPLER_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PACKINGS = ("separate", "packed")
DEFAULT_REPEATS = 3
DEFAULT_STEPS = 250


@dataclass
class _Variant:
    label: str
    source: str
    lora: str  # none, unmerged, merged
    model: torch.nn.Module


@dataclass
class _Run:
    variant: _Variant
    schedule: str
    packing: str
    config: object  # SampleConfig
    plan: object  # Plan
    mixed: bool  # some step runs its two branches at different sizes


def _lora_flex(model) -> bool:
    return model.flex is not None and model.flex.mode == "lora"


def _random_variants(spec, device: torch.device) -> list[_Variant]:
    from flexcli.flex.core import flexify_model
    from flexcli.flex.layers import merge_loras
    from flexcli.profiling.spec import Shape, parse_latent, random_config, random_model

    from flexcli.profiling.video import is_video_model

    if is_video_model(spec.model):
        raise FlexcliError("--schedules profiles image models; video sampling runs are not profiled yet",
                           "profile Wan's forward rows (--patch-sizes or --seq-lengths), or sample with --compute")
    cfg = random_config(spec)
    if hasattr(cfg, "caption_channels"):
        raise FlexcliError(f"schedule profiling of the text-to-image {spec.model} is not supported yet",
                           "profile its forward passes (drop --schedules), or sample with flexcli sample")
    latent = parse_latent(spec.latent, spec.image_size)
    if latent is not None and latent[0] != latent[1]:
        raise FlexcliError(f"schedule profiling needs a square latent, not {latent[0]}x{latent[1]}",
                           "pass --latent N or --image-size N")
    side = latent[0] if latent else cfg.input_size
    p0 = cfg.patch_size
    weak = spec.weak_patch if spec.weak_patch is not None else 2 * p0
    if weak <= 0 or weak == p0:
        raise FlexcliError(f"--weak-patch {weak} is not a weak patch size for base patch {p0}",
                           f"pass a positive size other than {p0}, e.g. --weak-patch {2 * p0}")
    for p in (p0, weak):
        if side % p:
            raise FlexcliError(f"patch size {p} does not divide the {side}x{side} latent",
                               "choose --weak-patch or --latent so that both sizes divide the latent side")
    cfg = dataclasses.replace(cfg, input_size=side)
    meta = device.type == "meta"
    # random weights at the base size (the meta device holds only shapes, for --analytic), then flexified
    model = random_model(cfg, Shape(p0, side, side), torch.device("cpu") if meta else device, spec.seed)
    flexify_model(model, [weak], "lora")
    if not meta:
        g = torch.Generator().manual_seed(spec.seed + 2)
        with torch.no_grad():  # flexify starts LoRA B at zero: random, so merged weights differ from the base
            for name, p in model.named_parameters():
                if ".lora_B" in name:
                    p.copy_(0.02 * torch.randn(p.shape, generator=g))
    label = spec.model or "DiT-XL/2"
    if (spec.depth, spec.width, spec.heads) != (None, None, None):
        label += f" (depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads})"
    source = f"random weights, flexified in memory (LoRA r{model.flex.lora_rank}, weak p{weak})"
    variants = [_Variant(label, source, "unmerged", model.eval())]
    if spec.merge_lora:
        merged = copy.deepcopy(model)
        merge_loras(merged)
        variants.append(_Variant(label, source, "merged", merged.eval()))
    return variants


def _checkpoint_variants(spec) -> list[_Variant]:
    from flexcli.api import load_model

    given = [n for n, v in (("--latent", spec.latent), ("--image-size", spec.image_size), ("--depth", spec.depth),
                            ("--width", spec.width), ("--heads", spec.heads)) if v is not None]
    if given:
        raise FlexcliError(f"{', '.join(given)} cannot be used with --checkpoint (the checkpoint fixes its shape)",
                           "drop them, or profile a named config with --model")
    path = Path(spec.checkpoint)
    model = load_model(path).eval()
    if spec.merge_lora and not _lora_flex(model):
        kind = "not flexified" if model.flex is None else f"flexified in {model.flex.mode} mode"
        raise FlexcliError(f"--merge-lora needs a LoRA-flexified checkpoint; {path.name} is {kind}",
                           "drop --merge-lora")
    lora = "unmerged" if _lora_flex(model) else "none"
    variants = [_Variant(path.name, str(path), lora, model)]
    if spec.merge_lora:
        variants.append(_Variant(path.name, str(path), "merged", load_model(path, merge_lora=True).eval()))
    return variants


def _plans(spec, variants: list[_Variant], dtype: str, device: torch.device | None) -> list[_Run]:
    """One run per (variant, schedule, packing); every schedule is resolved against the model before timing."""
    from flexcli.sampling import SampleConfig, make_plan, validate

    runs = []
    for variant in variants:
        for schedule in spec.schedules:
            for packing in PACKINGS:
                cfg = SampleConfig(
                    num_samples=spec.batch, batch_size=spec.batch, steps=spec.steps or DEFAULT_STEPS,
                    solver=spec.solver or "ddpm", cfg_scale=4.0 if spec.cfg_scale is None else spec.cfg_scale,
                    schedule=schedule, weak_patch=spec.weak_patch if spec.checkpoint is not None else None,
                    packing=packing, merge_lora=variant.lora == "merged", seed=spec.seed,
                    device=str(device) if device is not None else "cpu", dtype=SAMPLER_DTYPES[dtype])
                validate(cfg)
                plan = make_plan(cfg, variant.model)
                mixed = plan.guided and any(c != u for c, u in plan.schedule.pairs())
                runs.append(_Run(variant, schedule, packing, cfg, plan, mixed))
    return runs


def _warmup_plan(run: _Run):
    """A short sample that runs each distinct (cond, guidance) size pair of the run once."""
    from flexcli.sampling import make_plan

    pairs = list(dict.fromkeys(run.plan.schedule.pairs()))
    pairs = pairs * 2 if len(pairs) == 1 else pairs  # at least 2 steps: a 1-step DDPM process has no posterior
    cfg = dataclasses.replace(run.config, schedule=None, steps=len(pairs),
                              schedule_steps={"cond": [c for c, _ in pairs], "uncond": [u for _, u in pairs]})
    return cfg, make_plan(cfg, run.variant.model)


class _CompiledModel:
    """The model with its forward compiled (fullgraph, reduce-overhead), for the sampler's plain forward calls.

    Outputs are cloned, so a CUDA-graph replay can never overwrite an output the sampler still holds. The packed
    forward (`forward_packed`, mixed-size steps with packing) reaches the submodules directly and runs eagerly.
    """

    def __init__(self, model, device: torch.device):
        self._model = model
        self._fn = torch.compile(model.forward, fullgraph=True, mode="reduce-overhead", dynamic=False)
        self._cuda = device.type == "cuda"

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        if self._cuda:
            torch.compiler.cudagraph_mark_step_begin()
        return self._fn(*args, **kwargs).clone()


def _key(run: _Run) -> tuple:
    return (id(run.variant), run.schedule, run.packing if run.mixed else "separate")


def run_schedules(spec, device: torch.device | None, dtype: str, common: dict,
                  say: Callable[[str], None], notice: str | None = None) -> list[dict]:
    """The schedule rows of `spec` (device None: --analytic, FLOPs only); `notice` is said once all is checked."""
    if spec.checkpoint is not None:
        if spec.model is not None:
            raise FlexcliError("--model and --checkpoint both given", "pass one: a named config or a checkpoint")
        variants = _checkpoint_variants(spec)
    else:
        variants = _random_variants(spec, device or torch.device("meta"))
    runs = _plans(spec, variants, dtype, device)  # bad schedules fail here, before anything is timed
    if notice:
        say(notice)
    rows = [(run, *_flops_row(spec, run, dtype)) for run in runs]
    if device is None:
        return [{**row, **common, "notes": "; ".join(notes)} for _, row, notes in rows]
    samples, peak_mem, warmup = _time_runs(spec, variants, runs, device, dtype, say)
    out = []
    for run, row, notes in rows:
        row.update(_timing_columns(spec, run, row["batch_flops"], samples[_key(run)],
                                   peak_mem.get(_key(run), math.nan), warmup, device, dtype, notes))
        out.append({**row, **common, "notes": "; ".join(notes)})
    return out


def _flops_row(spec, run: _Run, dtype: str) -> tuple[dict, list[str]]:
    """The FLOPs columns of one run: the sampler's own per-step costs, summed (what run.json records)."""
    from flexcli.profiling.spec import _param_stats

    v, plan, cfg = run.variant, run.plan, run.config
    mc = v.model.config
    macs = sum(plan.step_macs)
    base = plan.baseline_step_macs * plan.schedule.steps
    weak = sorted(plan.schedule.sizes() - {mc.patch_size})
    notes = [f"{cfg.solver}, {cfg.steps} steps, cfg scale {cfg.cfg_scale}" + ("" if plan.guided else " (no guidance)"),
             f"compute fraction {macs / base:.4f} of all-powerful" + (f", weak p{weak[0]}" if len(weak) == 1 else "")]
    row = {"kind": "schedule", "model": v.label, "source": v.source, "lora": v.lora, "depth": mc.depth,
           "width": mc.hidden_size, "heads": mc.num_heads, "latent": f"{mc.input_size}x{mc.input_size}",
           "patch_size": "", "tokens": "", "batch": spec.batch, "dtype": dtype, "macs": macs, "flops": 2 * macs,
           "gmacs": macs / 1e9, "gflops": 2 * macs / 1e9, "batch_macs": spec.batch * macs,
           "batch_flops": 2 * spec.batch * macs, **_param_stats(v.model, dtype), "arithmetic_intensity": math.nan,
           "schedule": run.schedule, "steps": cfg.steps, "packing": run.packing}
    if v.model.flex is not None and v.model.flex.mode == "shared":
        notes.append("shared mode: the weight projection is counted per sample, as in run.json")
    return row, notes


def _time_runs(spec, variants: list[_Variant], runs: list[_Run], device: torch.device, dtype: str,
               say: Callable[[str], None]) -> tuple[dict, dict, int]:
    """Warm up, then time every distinct code path `repeats` times, round-robin -> (times, peak memory, warmup)."""
    from flexcli.profiling.spec import COMPILE_WARMUP
    from flexcli.sampling import sample_latents

    torch_dtype = lat.DTYPES[dtype]
    on_cuda = device.type == "cuda"
    name = lat.device_name(device)
    warmup = max(spec.warmup, COMPILE_WARMUP) if spec.compile else spec.warmup
    repeats = spec.repeats or DEFAULT_REPEATS
    samples: dict[tuple, list[float]] = {}
    peak_mem: dict[tuple, float] = {}
    indices = list(range(spec.batch))
    for v in variants:
        v.model = v.model.to(device=device, dtype=torch_dtype)
        timed: dict[tuple, _Run] = {}
        for r in (r for r in runs if r.variant is v):  # one timing per distinct code path (x/x: both packings)
            timed.setdefault(_key(r), r)
        sampler_model = v.model
        if spec.compile:
            torch._dynamo.reset()  # fresh compile caches per model: no recompilation limits, no stale graphs
            sampler_model = _CompiledModel(v.model, device)
        with lat.measuring(spec.compile, device.type, f"out of memory on {name} sampling a batch of {spec.batch}",
                           "lower --batch"):
            for key, r in timed.items():
                say(f"warm-up: {v.label} lora={v.lora} {r.schedule} {key[2]} ({warmup} short samples)")
                wcfg, wplan = _warmup_plan(r)
                for _ in range(warmup):
                    sample_latents(sampler_model, wcfg, wplan, indices, device)
            for i in range(repeats):
                for key, r in timed.items():
                    say(f"[{i + 1}/{repeats}] {v.label} lora={v.lora} schedule {r.schedule} packing {key[2]}: "
                        f"{r.config.steps} steps, batch {spec.batch}")
                    if on_cuda:
                        torch.cuda.synchronize(device)
                        torch.cuda.reset_peak_memory_stats(device)
                    t = lat.measure(lambda: sample_latents(sampler_model, r.config, r.plan, indices, device),
                                    device, 0, 1)
                    samples.setdefault(key, []).extend(t.samples_ms)
                    if on_cuda:
                        peak_mem[key] = max(peak_mem.get(key, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
    if spec.compile:
        torch._dynamo.reset()
    return samples, peak_mem, warmup


def _timing_columns(spec, run: _Run, batch_flops: int, times: list[float], peak_mem: float, warmup: int,
                    device: torch.device, dtype: str, notes: list[str]) -> dict:
    """The timing columns of one run's row (and its notes)."""
    timing = lat.Timing(tuple(times))
    torch_dtype, on_cuda, name = lat.DTYPES[dtype], device.type == "cuda", lat.device_name(device)
    repeats = spec.repeats or DEFAULT_REPEATS
    mc = run.variant.model.config
    if run.packing == "packed" and not run.mixed:
        notes.append("no mixed-size steps: both packings run the same code, one measurement for both rows")
    if spec.compile and run.packing == "packed" and run.mixed:
        notes.append("--compile: the packed forward of mixed-size steps runs eagerly")
    if dtype != "fp32":
        notes.append(f"weights in {dtype}, the sampler's {run.config.dtype} autocast, fp32 solver state")
    notes.append("timed: sample_latents (noise, steps, solver), no VAE or PNG writing")
    if not on_cuda:
        notes.append("peak memory is measured on CUDA only")
    peak_tflops, peak_tbps = lat.resolve_peaks(name, dtype, on_cuda, spec.peak_tflops, spec.peak_bandwidth, notes)
    achieved = batch_flops / (timing.median / 1e3) / 1e12
    return {
        "device": str(device), "device_name": name, "threads": torch.get_num_threads(), "compile": spec.compile,
        "attention_backend": lat.attention_backend(device, torch_dtype, mc.tokens(), mc.num_heads,
                                                   mc.hidden_size // mc.num_heads, 2 * spec.batch),
        "torch": torch.__version__, "latency_ms": timing.median, "latency_ms_p25": timing.quantile(0.25),
        "latency_ms_p75": timing.quantile(0.75), "latency_ms_std": timing.std,
        "latency_ms_min": min(timing.samples_ms), "repeats": repeats, "warmup": warmup,
        "achieved_tflops": achieved, "peak_tflops": peak_tflops, "peak_bandwidth_tbps": peak_tbps,
        "pct_of_peak": 100 * achieved / peak_tflops, "peak_mem_mb": peak_mem,
    }
