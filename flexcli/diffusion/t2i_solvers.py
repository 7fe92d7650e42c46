"""The solvers of PixArt-alpha's text-to-image protocol (FlexiDiT paper App. B.5): iDDPM for 100 steps,
DPM-Solver for 20, SA-Solver for 25. Plain functions over a denoiser callable, like `samplers.py`.

* iddpm: PixArt's `IDDPM(str(steps))` is ADM's respaced diffusion (linear betas 1e-4..0.02, learned-range
  variance, no clipping), i.e. flexcli's `ddpm_sample` on `GaussianDiffusion.respaced(steps)`.
* dpm-solver: diffusers' `DPMSolverMultistepScheduler()` with its default config, which is what PixArt's
  diffusers conversion script puts in the pipeline and what PixArt's demo app sets (DPM-Solver++(2M), linear
  betas, "linspace" timesteps 999, 949, ..., 50, lower-order final step onto sigma 0).
* sa-solver: diffusers' `SASolverScheduler.from_config(<that DPM config>, algorithm_type="data_prediction",
  tau_func=1 if 200 <= t <= 800 else 0, predictor_order=2, corrector_order=2)`, as PixArt's demo app sets it.

As in diffusers' PixArtAlphaPipeline, a learned-sigma model's output is cut to its eps half before the
DPM/SA-Solver step (iDDPM uses both halves). Randomness is per sample: `generators[i]` draws sample i's noise,
and the list goes to the scheduler's `step(generator=...)`, whose `randn_tensor` draws row i from generator i,
exactly as `per_sample_noise` does; SA-Solver draws one noise tensor at every step, the last one included.
The original PixArt repository's scripts use other, continuous-time implementations of DPM-Solver and
SA-Solver (time-uniform grids from t=1 to t=1e-3); those are not reproduced here.
"""
from __future__ import annotations

import torch

from flexcli.diffusion.process import GaussianDiffusion, space_timesteps
from flexcli.diffusion.samplers import Callback, Denoiser, ddpm_sample

T2I_SOLVERS = {"iddpm": 100, "dpm-solver": 20, "sa-solver": 25}  # solver -> PixArt's default step count


def _noop(step: int, total: int, info: dict) -> None:
    pass


def pixart_dpm_solver_scheduler():
    """diffusers' DPMSolverMultistepScheduler with its defaults (spelled out): PixArt's pipeline scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
        lower_order_final=True, final_sigmas_type="zero", timestep_spacing="linspace")


def pixart_tau(t) -> int:
    """SA-Solver's stochasticity: SDE (tau 1) for 200 <= t <= 800, ODE (tau 0) elsewhere (PixArt app.py)."""
    return 1 if 200 <= int(t) <= 800 else 0


def pixart_sa_solver_scheduler():
    from diffusers import SASolverScheduler

    return SASolverScheduler.from_config(pixart_dpm_solver_scheduler().config, algorithm_type="data_prediction",
                                         tau_func=pixart_tau, predictor_order=2, corrector_order=2)


def eps_half(out: torch.Tensor, channels: int) -> torch.Tensor:
    """The pipeline's `noise_pred.chunk(2, dim=1)[0]` for learned-sigma outputs (2C channels); C passes."""
    if out.shape[1] == 2 * channels:
        return out[:, :channels]
    if out.shape[1] != channels:
        raise ValueError(f"model output has {out.shape[1]} channels for {channels}-channel latents")
    return out


def scheduler_sample(denoise: Denoiser, x: torch.Tensor, scheduler, steps: int,
                     generators: list[torch.Generator] | None = None,
                     callback: Callback | None = None) -> torch.Tensor:
    """Drive a fresh diffusers scheduler as PixArtAlphaPipeline's denoising loop does (guidance lives in
    `denoise`); x is the initial noise."""
    callback = callback or _noop
    if generators is not None and len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per sample ({x.shape[0]}), got {len(generators)}")
    scheduler.set_timesteps(steps)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    x = x * scheduler.init_noise_sigma
    total = len(scheduler.timesteps)
    for step, t in enumerate(scheduler.timesteps):
        out = denoise(scheduler.scale_model_input(x, t), step, int(t))
        eps = eps_half(out, x.shape[1]).to(x.dtype)
        x = scheduler.step(eps, t, x, generator=generators, return_dict=False)[0]
        callback(step, total, {"t": int(t)})
    return x


def dpm_solver_sample(denoise: Denoiser, x: torch.Tensor, generators: list[torch.Generator] | None = None,
                      steps: int = 20, callback: Callback | None = None) -> torch.Tensor:
    return scheduler_sample(denoise, x, pixart_dpm_solver_scheduler(), steps, generators, callback)


def sa_solver_sample(denoise: Denoiser, x: torch.Tensor, generators: list[torch.Generator],
                     steps: int = 25, callback: Callback | None = None) -> torch.Tensor:
    return scheduler_sample(denoise, x, pixart_sa_solver_scheduler(), steps, generators, callback)


def iddpm_sample(denoise: Denoiser, x: torch.Tensor, generators: list[torch.Generator],
                 steps: int = 100, callback: Callback | None = None) -> torch.Tensor:
    """PixArt's `IDDPM(str(steps))` + `p_sample_loop(clip_denoised=False)`: flexcli's DDPM on the respacing."""
    return ddpm_sample(denoise, x, GaussianDiffusion.respaced(steps), generators, callback)


def t2i_timesteps(solver: str, steps: int | None = None) -> list[int]:
    """The original timesteps the model sees, noisiest first."""
    steps = steps or T2I_SOLVERS.get(solver, 0)
    if solver == "iddpm":
        return sorted(space_timesteps(1000, str(steps)), reverse=True)
    if solver in ("dpm-solver", "sa-solver"):
        scheduler = pixart_dpm_solver_scheduler() if solver == "dpm-solver" else pixart_sa_solver_scheduler()
        scheduler.set_timesteps(steps)
        return [int(t) for t in scheduler.timesteps]
    raise ValueError(f"unknown text-to-image solver {solver!r}; choose one of {sorted(T2I_SOLVERS)}")


def run_t2i_solver(solver: str, denoise: Denoiser, x: torch.Tensor, generators: list[torch.Generator],
                   steps: int | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Run `solver` for `steps` (default: PixArt's 100 / 20 / 25)."""
    fns = {"iddpm": iddpm_sample, "dpm-solver": dpm_solver_sample, "sa-solver": sa_solver_sample}
    if solver not in fns:
        raise ValueError(f"unknown text-to-image solver {solver!r}; choose one of {sorted(T2I_SOLVERS)}")
    return fns[solver](denoise, x, generators, steps or T2I_SOLVERS[solver], callback)
