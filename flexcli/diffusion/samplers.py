"""Solvers as plain functions over a denoiser callable (k-diffusion style), built on `GaussianDiffusion`.

A denoiser is `denoise(x, step, t) -> model output`: `step` counts the sampling steps from 0 (the noisiest),
`t` is the original timestep (0..999) the model must see. The output holds eps in its first C channels and,
with learned sigma, the variance interpolation v in the next C (ADM's learned range).

Randomness is per sample: `generators[i]` (a CPU `torch.Generator`) draws sample i's initial noise and every
per-step noise, so a sample does not depend on the batch it runs in, the device or the number of processes.

`callback(step, total, info)` is called after every step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from flexcli.diffusion.process import GaussianDiffusion, space_timesteps

Denoiser = Callable[[torch.Tensor, int, int], torch.Tensor]
Callback = Callable[[int, int, dict], None]

SOLVERS = ("ddpm", "ddim", "dpm++2m")


def solver_timesteps(solver: str, steps: int, num_timesteps: int = 1000) -> list[int]:
    """The increasing original timesteps a solver visits for `steps` steps.

    ddpm and ddim: DiT's respacing (250 -> 0, 4, ..., 995, 999), as DiT's sample.py does for both.
    dpm++2m: diffusers' DPMSolverMultistepScheduler default ("linspace": 999, ..., the last one above 0, then
    the clean sample), which PixArt's and DiT's diffusers pipelines use.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    if steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be in 1..{num_timesteps}, got {steps}")
    if solver == "dpm++2m":
        ts = np.linspace(0, num_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        return sorted(int(t) for t in ts)
    return space_timesteps(num_timesteps, str(steps))


def make_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def per_sample_noise(shape, generators: list[torch.Generator], device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, *shape[1:]) standard normal noise, row i from generators[i] (drawn on the CPU, then moved)."""
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per sample ({shape[0]}), got {len(generators)}")
    rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _idx(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


def _noop(step: int, total: int, info: dict) -> None:
    pass


def ddpm_sample(denoise: Denoiser, x: torch.Tensor, diffusion: GaussianDiffusion,
                generators: list[torch.Generator], callback: Callback | None = None) -> torch.Tensor:
    """ADM's p_sample_loop (DiT's default sampler): ancestral steps with the learned-range variance when the
    model outputs 2C channels (else the fixed large variance). No clipping, as in DiT."""
    callback = callback or _noop
    n, c = diffusion.num_timesteps, x.shape[1]
    for step, i in enumerate(reversed(range(n))):
        t = int(diffusion.timestep_map[i])
        out = denoise(x, step, t)
        pm = diffusion.p_mean_variance(out, x, _idx(i, x), learn_sigma=out.shape[1] == 2 * c)
        x = pm["mean"]
        if i > 0:
            x = x + torch.exp(0.5 * pm["log_variance"]) * per_sample_noise(x.shape, generators, x.device, x.dtype)
        callback(step, n, {"t": t})
    return x


def ddim_sample(denoise: Denoiser, x: torch.Tensor, diffusion: GaussianDiffusion,
                generators: list[torch.Generator], eta: float = 0.0, callback: Callback | None = None) -> torch.Tensor:
    """DDIM (ADM's ddim_sample with the model's eps; eta = 0 is deterministic). The last step lands on x0."""
    callback = callback or _noop
    n, c = diffusion.num_timesteps, x.shape[1]
    for step, i in enumerate(reversed(range(n))):
        t = int(diffusion.timestep_map[i])
        eps = denoise(x, step, t)[:, :c]
        ab = float(diffusion.alphas_cumprod[i])
        ab_prev = float(diffusion.alphas_cumprod_prev[i])
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        sigma = eta * ((1 - ab_prev) / (1 - ab)) ** 0.5 * (1 - ab / ab_prev) ** 0.5
        x = ab_prev ** 0.5 * x0 + (1 - ab_prev - sigma ** 2) ** 0.5 * eps
        if i > 0 and eta > 0:
            x = x + sigma * per_sample_noise(x.shape, generators, x.device, x.dtype)
        callback(step, n, {"t": t})
    return x


def dpmpp_2m_sample(denoise: Denoiser, x: torch.Tensor, diffusion: GaussianDiffusion,
                    generators: list[torch.Generator] | None = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) with data prediction, as diffusers' DPMSolverMultistepScheduler(algorithm_type=
    "dpmsolver++", solver_order=2, solver_type="midpoint", final_sigmas_type="zero"): first-order first step,
    second-order multistep after, and a first-order (lower_order_final) last step onto sigma = 0, i.e. x0."""
    callback = callback or _noop
    n, c = diffusion.num_timesteps, x.shape[1]
    ac = diffusion.alphas_cumprod
    alpha, sigma = ac.sqrt(), (1 - ac).sqrt()
    lam = alpha.log() - sigma.log()
    m_prev, h_prev = None, None
    for step, i in enumerate(reversed(range(n))):
        t = int(diffusion.timestep_map[i])
        eps = denoise(x, step, t)[:, :c]
        x0 = (x - float(sigma[i]) * eps) / float(alpha[i])
        if i == 0:
            x = x0  # sigma_next = 0: the first-order update gives the data prediction itself
        else:
            j = i - 1
            h = float(lam[j] - lam[i])
            ratio, phi = float(sigma[j] / sigma[i]), float(alpha[j]) * (np.exp(-h) - 1.0)
            if m_prev is None:
                x = ratio * x - phi * x0
            else:
                d1 = (x0 - m_prev) * (h / h_prev)
                x = ratio * x - phi * x0 - 0.5 * phi * d1
            m_prev, h_prev = x0, h
        callback(step, n, {"t": t})
    return x


def run_solver(solver: str, denoise: Denoiser, x: torch.Tensor, diffusion: GaussianDiffusion,
               generators: list[torch.Generator], *, eta: float = 0.0,
               callback: Callback | None = None) -> torch.Tensor:
    if solver == "ddpm":
        return ddpm_sample(denoise, x, diffusion, generators, callback)
    if solver == "ddim":
        return ddim_sample(denoise, x, diffusion, generators, eta, callback)
    if solver == "dpm++2m":
        return dpmpp_2m_sample(denoise, x, diffusion, generators, callback)
    raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
