"""The solvers against diffusers' schedulers on a fixed toy denoiser, with the same timesteps and noise."""
import math

import pytest
import torch

from flexcli.diffusion.process import GaussianDiffusion, space_timesteps
from flexcli.diffusion.samplers import (
    ddim_sample, ddpm_sample, dpmpp_2m_sample, make_generators, per_sample_noise, solver_timesteps)

SHAPE = (3, 4, 6, 6)
SEEDS = [11, 12, 13]


_AC = GaussianDiffusion().alphas_cumprod


def toy(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed 'model' that keeps samples O(1): the ideal eps for x0 ~ N(0, 0.5^2) plus a smooth nonlinear
    perturbation, and a learned-range v in [-1, 1] (2C channels)."""
    ab, s = float(_AC[t]), t / 1000.0
    eps = (1 - ab) ** 0.5 * x / (0.25 * ab + 1 - ab) + 0.1 * torch.tanh(x.roll(1, dims=-1) + s)
    v = torch.tanh(0.3 * x - s) * math.cos(3 * s)
    return torch.cat([eps, v], dim=1)


def _diffusers_loop(scheduler, timesteps, with_generators: bool, learned: bool):
    gens = make_generators(SEEDS)
    x = per_sample_noise(SHAPE, gens)
    for t in timesteps:
        out = toy(x, int(t))
        if not learned:
            out = out[:, :SHAPE[1]]
        kwargs = {"generator": gens} if with_generators else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def _ours(fn, timesteps, **kw):
    gens = make_generators(SEEDS)
    x = per_sample_noise(SHAPE, gens)
    d = GaussianDiffusion.from_timesteps(timesteps)
    seen = []
    out = fn(lambda x, step, t: (seen.append(t), toy(x, t))[1], x, d, gens, callback=None, **kw)
    assert seen == sorted(timesteps, reverse=True)  # the model sees the original timesteps, noisiest first
    return out


def test_ddpm_matches_diffusers_learned_range():
    from diffusers import DDPMScheduler

    timesteps = space_timesteps(1000, "50")  # DiT's respacing: 0, 20, ..., 999 (fractional stride)
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      variance_type="learned_range", clip_sample=False)
    s.set_timesteps(timesteps=sorted(timesteps, reverse=True))
    ref = _diffusers_loop(s, s.timesteps, True, learned=True)
    ours = _ours(ddpm_sample, timesteps)
    assert (ours - ref).abs().max() < 1e-5


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
    s.set_timesteps(25)
    timesteps = sorted(int(t) for t in s.timesteps)
    assert timesteps == space_timesteps(1000, "ddim25")

    gens = make_generators(SEEDS)
    x = per_sample_noise(SHAPE, gens)
    for t in s.timesteps:
        x = s.step(toy(x, int(t))[:, :4], t, x, eta=eta, generator=gens if eta > 0 else None).prev_sample
    ours = _ours(ddim_sample, timesteps, eta=eta)
    assert (ours - x).abs().max() < 1e-5


@pytest.mark.parametrize("steps", [10, 20])  # < 15 and >= 15: diffusers' lower_order_final rules differ
def test_dpmpp_2m_matches_diffusers(steps):
    from diffusers import DPMSolverMultistepScheduler

    s = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, algorithm_type="dpmsolver++", solver_order=2,
                                    lower_order_final=True)
    s.set_timesteps(steps)
    timesteps = solver_timesteps("dpm++2m", steps)
    assert timesteps == sorted(int(t) for t in s.timesteps)
    ref = _diffusers_loop(s, s.timesteps, False, learned=False)
    ours = _ours(dpmpp_2m_sample, timesteps)
    assert (ours - ref).abs().max() < 1e-5


def test_per_sample_noise_is_batch_independent():
    a = per_sample_noise((3, 2, 4, 4), make_generators([5, 6, 7]))
    b = per_sample_noise((1, 2, 4, 4), make_generators([6]))
    assert torch.equal(a[1:2], b)
    with pytest.raises(ValueError):
        per_sample_noise((2, 2, 4, 4), make_generators([1]))


def test_solver_timesteps():
    assert solver_timesteps("ddpm", 250)[:3] == [0, 4, 8] and solver_timesteps("ddpm", 250)[-1] == 999
    assert solver_timesteps("ddim", 250) == solver_timesteps("ddpm", 250)
    assert solver_timesteps("dpm++2m", 20)[-1] == 999 and len(solver_timesteps("dpm++2m", 20)) == 20
    with pytest.raises(ValueError):
        solver_timesteps("euler", 10)
