"""Flow-matching solvers (Wan 2.1) as plain functions over a velocity denoiser, driven by diffusers' schedulers
exactly as diffusers' `WanPipeline` drives them (issue #14).

Flow matching: x_sigma = (1 - sigma) x0 + sigma noise, sigma from 1 (noise) to 0 (data); the model predicts the
velocity v = noise - x0 (diffusers' prediction_type "flow_prediction").

A denoiser is `denoise(x, step, t) -> v`, as in `samplers.py`: `step` counts the sampling steps from 0 (the
noisiest), `t` is the timestep the model must see as a float, sigma * num_train_timesteps exactly as the pipeline
passes it: UniPC stores its timesteps as int64, so there t is sigma * 1000 truncated to an integer (999, 993, ...
for 50 steps at flow_shift 3); Euler keeps float32 values (1000.0, 993.124..., ...). A denoiser that builds
`torch.full((batch,), t)` gives the transformer's sinusoidal embedding exactly the pipeline's input.

Both solvers are deterministic: randomness is only the initial noise, which the caller draws per sample with
`samplers.per_sample_noise(shape, generators)` (one CPU generator per sample, as everywhere in flexcli).
`callback(step, total, info)` is called after every step with info {"t", "sigma", "sigma_next"}.
"""
from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, int, float], torch.Tensor]
Callback = Callable[[int, int, dict], None]

FLOW_SOLVERS = ("unipc", "euler")
# diffusers' Wan example and docs: flow_shift 5.0 for 720p, 3.0 for 480p (the shipped scheduler config has 3.0).
WAN_FLOW_SHIFT = {"480p": 3.0, "720p": 5.0}
# scheduler/scheduler_config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers and -14B-Diffusers (UniPCMultistepScheduler,
# diffusers 0.33.0.dev0), without its version and the values that equal diffusers' defaults.
WAN21_UNIPC_CONFIG = {
    "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
    "solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
    "final_sigmas_type": "zero", "timestep_spacing": "linspace", "thresholding": False, "disable_corrector": [],
    "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
}


def flow_scheduler(solver: str, flow_shift: float = 3.0, num_train_timesteps: int = 1000):
    """A fresh diffusers scheduler configured as for Wan 2.1:
    unipc: `UniPCMultistepScheduler.from_config(<shipped config>, flow_shift=flow_shift)` (diffusers' Wan example);
    euler: `FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift=flow_shift)` (the class WanPipeline is typed
    with; its `shift` is the flow shift, 3.0 by default for Wan in diffusers' docs)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if flow_shift <= 0:
        raise ValueError(f"flow_shift must be positive, got {flow_shift}")
    if solver == "unipc":
        config = {**WAN21_UNIPC_CONFIG, "num_train_timesteps": num_train_timesteps}
        return UniPCMultistepScheduler.from_config(config, flow_shift=flow_shift)
    if solver == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=flow_shift)
    raise ValueError(f"unknown flow solver {solver!r}; choose one of {FLOW_SOLVERS}")


def _prepared(solver: str, steps: int, flow_shift: float):
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    scheduler = flow_scheduler(solver, flow_shift)
    scheduler.set_timesteps(steps, device="cpu")
    scheduler.set_begin_index(0)  # as WanPipeline does: the step index counts from 0, whatever the timesteps
    return scheduler


def flow_timesteps(solver: str, steps: int, flow_shift: float = 3.0) -> list[float]:
    """The model timesteps (decreasing, in (0, 1000]) a solver visits: what `denoise` receives as `t`."""
    return [float(t) for t in _prepared(solver, steps, flow_shift).timesteps]


def flow_sigmas(solver: str, steps: int, flow_shift: float = 3.0) -> list[float]:
    """The steps + 1 noise levels (1 -> 0) the solver integrates between; the last one is 0 (the data)."""
    return [float(s) for s in _prepared(solver, steps, flow_shift).sigmas]


def _noop(step: int, total: int, info: dict) -> None:
    pass


def _drive(scheduler, denoise: Denoiser, x: torch.Tensor, callback: Callback | None) -> torch.Tensor:
    """WanPipeline's loop: v = model(x, t); x = scheduler.step(v, t, x); the guidance lives in `denoise`."""
    callback = callback or _noop
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for step, t in enumerate(timesteps):
        v = denoise(x, step, float(t))  # (B, C, F, H, W) velocity, same shape as x
        if v.shape != x.shape:
            raise ValueError(f"the denoiser returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
        x = scheduler.step(v, t, x, return_dict=False)[0]
        callback(step, total, {"t": float(t), "sigma": float(scheduler.sigmas[step]),
                               "sigma_next": float(scheduler.sigmas[step + 1])})
    return x


def flow_euler_sample(denoise: Denoiser, x: torch.Tensor, steps: int, flow_shift: float = 3.0,
                      callback: Callback | None = None) -> torch.Tensor:
    """Euler over the flow ODE, x <- x + (sigma_next - sigma) v, through FlowMatchEulerDiscreteScheduler.
    `x` is the initial noise (sigma = 1); returns the sample at sigma = 0."""
    return _drive(_prepared("euler", steps, flow_shift), denoise, x, callback)


def flow_unipc_sample(denoise: Denoiser, x: torch.Tensor, steps: int, flow_shift: float = 3.0,
                      callback: Callback | None = None) -> torch.Tensor:
    """UniPC (bh2, order 2 with a first-order first and last step, corrector on) through
    UniPCMultistepScheduler with flow sigmas: Wan 2.1's default sampler in diffusers."""
    return _drive(_prepared("unipc", steps, flow_shift), denoise, x, callback)


def run_flow_solver(solver: str, denoise: Denoiser, x: torch.Tensor, steps: int, flow_shift: float = 3.0,
                    callback: Callback | None = None) -> torch.Tensor:
    if solver == "unipc":
        return flow_unipc_sample(denoise, x, steps, flow_shift, callback)
    if solver == "euler":
        return flow_euler_sample(denoise, x, steps, flow_shift, callback)
    raise ValueError(f"unknown flow solver {solver!r}; choose one of {FLOW_SOLVERS}")
