"""The sampling loop: a denoiser callable per step (the patch schedule picks the patch size of each branch,
weak guidance or CFG combines them, packing runs both branches in one pass), driven by a plain solver."""
from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from flexcli.diffusion import schedule as G
from flexcli.diffusion.flow import run_flow_solver
from flexcli.diffusion.samplers import make_generators, per_sample_noise, run_solver
from flexcli.diffusion.t2i_solvers import T2I_SOLVERS, run_t2i_solver
from flexcli.io.samples import decode, to_uint8
from flexcli.sampling.config import DTYPES, SampleConfig
from flexcli.sampling.outputs import run_record
from flexcli.sampling.plan import Plan, make_plan

Progress = Callable[[dict], None]


def make_denoiser(model, cfg: SampleConfig, plan: Plan, y, null) -> Callable:
    """denoise(x, step, t): the guided prediction of step `step` for samples conditioned on `y` (`null`: the
    guidance branch's conditioning), each branch at the patch size the schedule gives it."""
    from flexcli.flex.core import forward_packed

    c = plan.latent_shape[0]
    half = DTYPES[cfg.dtype] in (torch.bfloat16, torch.float16)

    def denoise(x: torch.Tensor, step: int, t: int) -> torch.Tensor:
        if half:
            with torch.autocast(x.device.type, dtype=DTYPES[cfg.dtype]):
                return _denoise(x, step, t).to(x.dtype)
        return _denoise(x, step, t)

    def _denoise(x: torch.Tensor, step: int, t) -> torch.Tensor:
        pc, pu = plan.schedule.cond[step], plan.schedule.uncond[step]
        # DDPM solvers give integer timesteps; flow-matching ones the float the pipeline passes (sigma x 1000)
        tt = torch.full((x.shape[0],), t, dtype=torch.float32 if isinstance(t, float) else torch.long,
                        device=x.device)
        if not plan.guided:
            return model(x, tt, y, patch_size=pc)
        yg = y if G.uses_weak_guidance(pc, pu, cfg.guidance) else null
        if pc == pu:
            both = model.cat_conditions([y, yg])
            cond, guide = model(torch.cat([x, x]), torch.cat([tt, tt]), both, patch_size=pc).chunk(2)
        elif cfg.packing == "packed":
            cond, guide = forward_packed(model, [(x, tt, y, pc), (x, tt, yg, pu)])
        else:
            cond, guide = model(x, tt, y, patch_size=pc), model(x, tt, yg, patch_size=pu)
        scale = G.step_scale(pc, pu, plan.s1, plan.s2, cfg.guidance, plan.s0, model.patch_sizes[0])
        return G.combine(cond, guide, scale, c, cfg.guided_channels)
    return denoise


@torch.no_grad()
def sample_latents(model, cfg: SampleConfig, plan: Plan, indices: list[int], device,
                   progress: Progress | None = None, done_offset: int = 0) -> torch.Tensor:
    """Final latents (len(indices), C, *S) for the given global sample indices, in batches of cfg.batch_size."""
    out = []
    cum = list(itertools.accumulate(plan.step_macs))  # MACs done after each step
    for start in range(0, len(indices), cfg.batch_size):
        idx = indices[start:start + cfg.batch_size]
        gens = make_generators([cfg.seed + i for i in idx])
        state = torch.float64 if cfg.dtype == "float64" else torch.float32
        x = per_sample_noise((len(idx), *plan.latent_shape), gens, device, state)
        y, null = plan.conditioning.batch(idx, device)

        def callback(step, total, info, _n=len(idx), _s=start):
            if progress:
                progress({"samples_done": done_offset + _s + (_n if step == total - 1 else 0), "batch": _n,
                          "step": step + 1, "steps": total, "t": info["t"],
                          "compute_fraction": cum[step] / ((step + 1) * plan.baseline_step_macs)})
        denoise = make_denoiser(model, cfg, plan, y, null)
        if plan.flow_shift is not None:  # flow matching: deterministic, randomness only in the initial noise
            out.append(run_flow_solver(plan.solver[len("flow-"):], denoise, x, cfg.steps, plan.flow_shift,
                                       callback=callback).cpu())
        elif plan.solver in T2I_SOLVERS:
            out.append(run_t2i_solver(plan.solver, denoise, x, gens, cfg.steps, callback).cpu())
        else:
            out.append(run_solver(plan.solver, denoise, x, plan.diffusion, gens, eta=cfg.eta,
                                  callback=callback).cpu())
    return torch.cat(out) if out else torch.empty(0)


def sample(model, cfg: SampleConfig, progress: Progress | None = None, device=None,
           vae=None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Sample cfg.num_samples in this process with a loaded model: (latents, uint8 NHWC images or None, record).

    Images come from `vae` (an AutoencoderKL) or, for pixel-space models, from the samples themselves; video
    models give latents only (a pixel-space model's latents are its clips).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = make_plan(cfg, model)
    start = time.perf_counter()
    latents = sample_latents(model, cfg, plan, list(range(cfg.num_samples)), device, progress)
    images = None
    video = len(plan.latent_shape) == 4  # video: the latents only (a pixel-space model's clips, or VAE latents)
    if not video and plan.latent_shape[0] in (1, 3):
        images = to_uint8(latents.float())
    elif not video and vae is not None:
        images = decode(latents, vae, device, cfg.batch_size)
    return latents, images, run_record(cfg, model, plan, time.perf_counter() - start, device, 1)
