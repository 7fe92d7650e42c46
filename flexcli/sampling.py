"""Sampling with patch schedules (paper §3.3, §3.4, App. B.2): the library behind `flexcli sample`.

`run(config, progress)` does everything: resolve the schedule, sample (sharded over torchrun ranks), decode,
and write the output folder atomically. `sample_latents(model, plan, indices, ...)` is the core loop: sample i
always uses seed base + i for its initial and per-step noise, whatever the batch or the number of processes.
The library never prints: progress goes to the `progress(info)` callback.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from flexcli.diffusion import guidance as G
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.diffusion.samplers import SOLVERS, make_generators, per_sample_noise, run_solver, solver_timesteps
from flexcli.diffusion.schedule import ORDERS, PatchSchedule, for_compute, from_list, parse_schedule
from flexcli.errors import FlexcliError
from flexcli.recipes import read_recipe
from flexcli.io.samples import VAE_SCALE, decode, finalize_folder, load_vae, to_uint8, write_images  # noqa: F401

PACKING = ("separate", "packed")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCHEDULE_KEYS = ("schedule", "schedule_steps", "compute")
Progress = Callable[[dict], None]


@dataclass
class SampleConfig:
    checkpoint: str = ""
    out: str = ""
    num_samples: int = 8
    steps: int = 250
    solver: str = "ddpm"
    eta: float = 0.0  # DDIM only
    cfg_scale: float = 4.0  # s_cfg1; 1 disables guidance
    cfg_scale_weak: float | None = None  # s_cfg2; default from (1 - s1) / (1 - s2) = 2.5
    guidance: str = "weak"  # weak (paper §3.4) or cfg
    guided_channels: int | None = None  # None: all eps channels; 3: DiT's released-FID variant
    class_labels: list[int] | None = None  # cycled over samples; None: drawn from the seed
    seed: int = 0
    schedule: str | None = None  # x/y, x, P:N,... (see flexcli.diffusion.schedule)
    schedule_steps: Any = None  # explicit per-step list (recipes)
    compute: float | None = None  # target compute fraction
    weak_patch: int | None = None  # the weak size of x/y and --compute; default the smallest weak size
    order: str = "weak-first"
    packing: str = "separate"
    batch_size: int = 16
    vae: str | None = None
    merge_lora: bool = False
    device: str = "auto"
    dtype: str = "float32"  # float32, float64 (model and solver state), bfloat16/float16 (CUDA autocast)
    force: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------
def load_recipe(path: str | Path) -> dict:
    data = read_recipe(path)
    known = {f.name for f in dataclasses.fields(SampleConfig)} - {"out", "force"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise FlexcliError(f"recipe {path} has unknown keys {unknown}", f"use only: {', '.join(sorted(known))}")
    return data


def resolve_config(cli: dict, recipe: str | Path | None = None) -> SampleConfig:
    """defaults < recipe < CLI flags (`cli` holds only the flags actually given, i.e. not None)."""
    merged = SampleConfig().to_dict()
    layer = load_recipe(recipe) if recipe else {}
    cli = {k: v for k, v in cli.items() if v is not None}
    for level in (layer, cli):
        given = [k for k in SCHEDULE_KEYS if level.get(k) is not None]
        if len(given) > 1:
            raise FlexcliError(f"{' and '.join(given)} are both given", "give only one way to choose the schedule")
        if given:
            merged.update({k: None for k in SCHEDULE_KEYS})
        merged.update(level)
    cfg = SampleConfig(**merged)
    validate(cfg)
    return cfg


def validate(cfg: SampleConfig) -> None:
    """Checks that need no model."""
    def need(cond, problem, fix):
        if not cond:
            raise FlexcliError(problem, fix)
    need(isinstance(cfg.num_samples, int) and cfg.num_samples >= 1, f"--num-samples {cfg.num_samples} is not positive",
         "pass --num-samples 1 or more")
    need(isinstance(cfg.steps, int) and 1 <= cfg.steps <= 1000, f"--steps {cfg.steps} is not in 1..1000",
         "e.g. --steps 250")
    need(cfg.solver in SOLVERS, f"unknown solver '{cfg.solver}'", f"use one of: {', '.join(SOLVERS)}")
    need(cfg.guidance in G.GUIDANCE_MODES, f"unknown guidance '{cfg.guidance}'", "use weak or cfg")
    need(cfg.order in ORDERS, f"unknown order '{cfg.order}'", f"use one of: {', '.join(ORDERS)}")
    need(cfg.packing in PACKING, f"unknown packing '{cfg.packing}'", f"use one of: {', '.join(PACKING)}")
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, f"--batch-size {cfg.batch_size} is not positive",
         "pass --batch-size 1 or more")
    need(cfg.dtype in DTYPES, f"unknown dtype '{cfg.dtype}'", f"use one of: {', '.join(DTYPES)}")
    need(cfg.eta >= 0, f"--eta {cfg.eta} is negative", "pass --eta 0 (deterministic DDIM) or more")
    if cfg.vae is not None and not Path(cfg.vae).exists():
        raise FlexcliError(f"--vae path {cfg.vae} not found", "pass a local diffusers AutoencoderKL folder "
                           "(e.g. a saved stabilityai/sd-vae-ft-ema); nothing is downloaded")
    if cfg.class_labels is not None:
        need(len(cfg.class_labels) > 0, "--class-labels is empty", "pass e.g. --class-labels 207,360")


# ------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    schedule: PatchSchedule
    timesteps: list[int]
    diffusion: GaussianDiffusion
    labels: list[int]
    guided: bool
    s1: float
    s2: float
    step_macs: list[int]
    baseline_step_macs: int
    notes: list[str] = field(default_factory=list)


def step_cost_fn(config, *, lora_rank: int = 0, shared: bool = False, packing: str = "separate",
                 dense: bool = True) -> Callable[[int, int | None], int]:
    """MACs of one sampling step per sample: (p_cond, p_uncond or None without guidance) -> MACs.

    Both branches at one size run as one forward pass of batch 2; different sizes run as two passes
    ("separate") or one packed pass ("packed": dense attention over the packed row unless dense=False).
    """
    from flexcli.profiling.flops import forward_cost, packed_forward_cost

    def one(p: int, batch: int) -> int:
        return forward_cost(config, p, batch, lora_rank=lora_rank, shared_projection=shared).macs

    def cost(pc: int, pu: int | None) -> int:
        if pu is None:
            return one(pc, 1)
        if pc == pu:
            return one(pc, 2)
        if packing == "packed":
            return packed_forward_cost(config, [pc, pu], 1, lora_rank=lora_rank, shared_projection=shared,
                                       dense_attention=dense).macs
        return one(pc, 1) + one(pu, 1)
    return cost


def _step_cost_fn(model, cfg: SampleConfig, packing: str | None = None, dense: bool = True):
    flex = model.flex
    rank = flex.lora_rank if (flex is not None and flex.mode == "lora" and not cfg.merge_lora) else 0
    shared = flex is not None and flex.mode == "shared"
    return step_cost_fn(model.config, lora_rank=rank, shared=shared, packing=packing or cfg.packing, dense=dense)


def make_plan(cfg: SampleConfig, model) -> Plan:
    """Resolve the schedule, labels, scales and per-step costs against a loaded model."""
    mc = model.config
    p0, sizes = mc.patch_size, model.patch_sizes
    weak_sizes = sorted(p for p in sizes if p != p0)
    weak = cfg.weak_patch if cfg.weak_patch is not None else (weak_sizes[0] if weak_sizes else None)
    if weak is not None and weak not in sizes:
        raise FlexcliError(f"--weak-patch {weak} is not a patch size of this checkpoint (it has {sizes})",
                           "flexify with that size or pick one of its sizes")
    guided = cfg.cfg_scale != 1.0
    if guided and model.y_embedder.embedding_table.num_embeddings <= mc.num_classes:
        raise FlexcliError("the checkpoint has no null class, so it cannot do classifier-free guidance",
                           "pass --cfg-scale 1")
    step_cost = _step_cost_fn(model, cfg)
    if cfg.compute is not None:
        schedule = for_compute(cfg.compute, cfg.steps, step_cost, p0, weak, guided)
    elif cfg.schedule_steps is not None:
        schedule = from_list(cfg.schedule_steps, cfg.steps)
    elif cfg.schedule is not None:
        schedule = parse_schedule(cfg.schedule, cfg.steps, p0, weak)
    else:
        schedule = parse_schedule(f"{cfg.steps}/{cfg.steps}", cfg.steps, p0, weak)
    if cfg.order == "weak-last":
        schedule = schedule.reversed()
    used = schedule.sizes() if guided else set(schedule.cond)
    missing = sorted(used - set(sizes))
    if missing:
        raise FlexcliError(f"the schedule uses patch size {missing[0]} but the checkpoint has only {sizes}",
                           "flexify it with that size (flexcli flexify CKPT -p P) or change --schedule")
    for p in used:
        if mc.input_size % p:
            raise FlexcliError(f"patch size {p} does not divide the {mc.input_size}x{mc.input_size} latent",
                               "choose sizes that divide the latent side")
    if cfg.class_labels is not None:
        bad = [y for y in cfg.class_labels if not 0 <= y < mc.num_classes]
        if bad:
            raise FlexcliError(f"class label {bad[0]} is out of range for {mc.num_classes} classes",
                               f"use labels in 0..{mc.num_classes - 1}")
        labels = [cfg.class_labels[i % len(cfg.class_labels)] for i in range(cfg.num_samples)]
    else:
        g = torch.Generator().manual_seed(cfg.seed)
        labels = torch.randint(0, mc.num_classes, (cfg.num_samples,), generator=g).tolist()
    timesteps = solver_timesteps(cfg.solver, cfg.steps)
    s2 = cfg.cfg_scale_weak if cfg.cfg_scale_weak is not None else G.linked_weak_scale(cfg.cfg_scale)
    step_macs = [step_cost(c, u if guided else None) for c, u in schedule.pairs()]
    base = step_cost(p0, p0 if guided else None)
    return Plan(schedule, timesteps, GaussianDiffusion.from_timesteps(timesteps), labels, guided, cfg.cfg_scale, s2,
                step_macs, base)


def make_denoiser(model, cfg: SampleConfig, plan: Plan, y: torch.Tensor) -> Callable:
    from flexcli.flex.core import forward_packed

    c = model.config.in_channels
    null = torch.full_like(y, model.config.num_classes)
    half = DTYPES[cfg.dtype] in (torch.bfloat16, torch.float16)

    def denoise(x: torch.Tensor, step: int, t: int) -> torch.Tensor:
        if half:
            with torch.autocast(x.device.type, dtype=DTYPES[cfg.dtype]):
                return _denoise(x, step, t).to(x.dtype)
        return _denoise(x, step, t)

    def _denoise(x: torch.Tensor, step: int, t: int) -> torch.Tensor:
        pc, pu = plan.schedule.cond[step], plan.schedule.uncond[step]
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if not plan.guided:
            return model(x, tt, y, patch_size=pc)
        yg = y if G.uses_weak_guidance(pc, pu, cfg.guidance) else null
        if pc == pu:
            cond, guide = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, yg]), patch_size=pc).chunk(2)
        elif cfg.packing == "packed":
            cond, guide = forward_packed(model, [(x, tt, y, pc), (x, tt, yg, pu)])
        else:
            cond, guide = model(x, tt, y, patch_size=pc), model(x, tt, yg, patch_size=pu)
        scale = G.step_scale(pc, pu, plan.s1, plan.s2, cfg.guidance)
        return G.combine(cond, guide, scale, c, cfg.guided_channels)
    return denoise


@torch.no_grad()
def sample_latents(model, cfg: SampleConfig, plan: Plan, indices: list[int], device,
                   progress: Progress | None = None, done_offset: int = 0) -> torch.Tensor:
    """Final latents (len(indices), C, H, W) for the given global sample indices, in batches of cfg.batch_size."""
    mc = model.config
    out = []
    cum = list(itertools.accumulate(plan.step_macs))  # MACs done after each step
    for start in range(0, len(indices), cfg.batch_size):
        idx = indices[start:start + cfg.batch_size]
        gens = make_generators([cfg.seed + i for i in idx])
        state = torch.float64 if cfg.dtype == "float64" else torch.float32
        x = per_sample_noise((len(idx), mc.in_channels, mc.input_size, mc.input_size), gens, device, state)
        y = torch.tensor([plan.labels[i] for i in idx], dtype=torch.long, device=device)

        def callback(step, total, info, _n=len(idx), _s=start):
            if progress:
                progress({"samples_done": done_offset + _s + (_n if step == total - 1 else 0), "batch": _n,
                          "step": step + 1, "steps": total, "t": info["t"],
                          "compute_fraction": cum[step] / ((step + 1) * plan.baseline_step_macs)})
        out.append(run_solver(cfg.solver, make_denoiser(model, cfg, plan, y), x, plan.diffusion, gens,
                              eta=cfg.eta, callback=callback).cpu())
    return torch.cat(out) if out else torch.empty(0)


def sample(model, cfg: SampleConfig, progress: Progress | None = None, device=None,
           vae=None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Sample cfg.num_samples in this process with a loaded model: (latents, uint8 NHWC images or None, record).

    Images come from `vae` (an AutoencoderKL) or, for pixel-space models, from the samples themselves.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = make_plan(cfg, model)
    start = time.perf_counter()
    latents = sample_latents(model, cfg, plan, list(range(cfg.num_samples)), device, progress)
    images = None
    if model.config.in_channels in (1, 3):
        images = to_uint8(latents.float())
    elif vae is not None:
        images = decode(latents, vae, device, cfg.batch_size)
    return latents, images, run_record(cfg, model, plan, time.perf_counter() - start, device, 1)


# ------------------------------------------------------------------------------------------------------
def _versions() -> dict:
    import numpy
    from flexcli import __version__

    v = {"flexcli": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    try:
        import diffusers
        v["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_record(cfg: SampleConfig, model, plan: Plan, wall: float, device, world: int) -> dict:
    base_total = plan.baseline_step_macs * plan.schedule.steps
    total = sum(plan.step_macs)
    steps = []
    for k, (pc, pu) in enumerate(plan.schedule.pairs()):
        steps.append({"step": k, "t": plan.timesteps[::-1][k], "p_cond": pc, "p_uncond": pu if plan.guided else None,
                      "guide_label": ("cond" if G.uses_weak_guidance(pc, pu, cfg.guidance) else "null")
                      if plan.guided else None, "macs": plan.step_macs[k], "flops": 2 * plan.step_macs[k]})
    packing = {}
    if plan.guided:
        for name, pack, dense in (("separate", "separate", True), ("packed_dense", "packed", True),
                                  ("packed_block_sparse", "packed", False)):
            fn = _step_cost_fn(model, cfg, pack, dense)
            packing[name] = 2 * sum(fn(c, u) for c, u in plan.schedule.pairs())
    return {
        "config": cfg.to_dict(), "model": {"config": model.config.to_dict(), "patch_sizes": model.patch_sizes,
                                           "flex": model.flex.describe() if model.flex is not None else None},
        "seeds": [cfg.seed + i for i in range(cfg.num_samples)], "labels": plan.labels,
        "timesteps": plan.timesteps[::-1], "schedule": plan.schedule.to_dict(),
        "guidance": {"enabled": plan.guided, "mode": cfg.guidance, "s_cfg1": plan.s1, "s_cfg2": plan.s2,
                     "guided_channels": cfg.guided_channels or model.config.in_channels},
        "steps": steps,
        "flops": {"convention": "per sample, denoiser matmuls only; FLOPs = 2 x MACs; guidance branches included",
                  "total": 2 * total, "baseline_all_powerful": 2 * base_total,
                  "compute_fraction": total / base_total, "packing_options_total": packing},
        "wall_time_s": wall, "processes": world, "device": _device_name(device), "versions": _versions(),
        "command": " ".join(sys.argv),
    }


# ------------------------------------------------------------------------------------------------------
def _dist():
    """(rank, world, local_rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: SampleConfig, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def run(cfg: SampleConfig, progress: Progress | None = None, notes: Callable[[str], None] | None = None) -> Path | None:
    """The whole `flexcli sample` job. Returns the output folder on rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    from flexcli.io.atomic import check_output

    notes = notes or (lambda s: None)
    rank, world, local = _dist()
    out = Path(cfg.out)
    check_output(out, cfg.force)
    device = _device(cfg, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return _run(cfg, out, device, rank, world, progress, notes)
        finally:
            dist.destroy_process_group()
    return _run(cfg, out, device, rank, world, progress, notes)


def _run(cfg: SampleConfig, out: Path, device, rank: int, world: int, progress, notes) -> Path | None:
    import torch.distributed as dist

    from flexcli.api import load_model
    from flexcli.io.atomic import atomic_dir

    model = load_model(cfg.checkpoint, merge_lora=cfg.merge_lora).to(device)
    if cfg.dtype == "float64":
        model = model.double()
    plan = make_plan(cfg, model)
    pixel = model.config.in_channels in (1, 3)
    vae = None
    if not pixel and cfg.vae is not None:
        vae = load_vae(cfg.vae, device)
    if rank == 0:
        if pixel and cfg.vae is not None:
            notes("pixel-space model: --vae is not used")
        elif not pixel and vae is None:
            notes("no --vae given: saving latents only (latents.npz, NCHW); pass --vae DIR for images")
        notes(f"schedule {plan.schedule.spec}: compute fraction "
              f"{sum(plan.step_macs) / (plan.baseline_step_macs * plan.schedule.steps):.4f} of all-powerful")
    with_images = pixel or vae is not None
    indices = list(range(rank, cfg.num_samples, world))
    start = time.perf_counter()

    def body(tmp: Path) -> torch.Tensor:
        lat = sample_latents(model, cfg, plan, indices, device, progress if rank == 0 else None)
        if with_images:
            images = to_uint8(lat.float()) if pixel else decode(lat, vae, device, cfg.batch_size)
            write_images(tmp, indices, images)
        return lat

    if world == 1:
        with atomic_dir(out) as tmp:
            latents = body(tmp)
            record = run_record(cfg, model, plan, time.perf_counter() - start, device, world)
            finalize_folder(tmp, cfg.num_samples, record, None if with_images else latents, with_images)
        return out
    # torchrun: rank 0 owns the temporary folder; every rank writes its own PNGs into it, rank 0 gathers.
    if rank == 0:
        with atomic_dir(out) as tmp:
            dist.broadcast_object_list([str(tmp)], src=0)
            latents = body(tmp)
            parts = [None] * world
            dist.gather_object((indices, latents), parts, dst=0)
            full = torch.empty(cfg.num_samples, *latents.shape[1:], dtype=latents.dtype)
            for idx, lat in parts:
                full[idx] = lat
            record = run_record(cfg, model, plan, time.perf_counter() - start, device, world)
            finalize_folder(tmp, cfg.num_samples, record, None if with_images else full, with_images)
        dist.barrier()
        return out
    box = [None]
    dist.broadcast_object_list(box, src=0)
    latents = body(Path(box[0]))
    dist.gather_object((indices, latents), None, dst=0)
    dist.barrier()
    return None
