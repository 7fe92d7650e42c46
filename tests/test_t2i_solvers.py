"""PixArt's T2I solvers against diffusers' schedulers driven by hand, as PixArtAlphaPipeline drives them, on the
same learned-sigma toy denoiser and the same per-sample noise."""
import math

import pytest
import torch

from flexcli.diffusion.process import GaussianDiffusion, space_timesteps
from flexcli.diffusion.samplers import dpmpp_2m_sample, make_generators, per_sample_noise
from flexcli.diffusion.t2i_solvers import run_t2i_solver, t2i_timesteps

SHAPE = (3, 4, 6, 6)
SEEDS = [21, 22, 23]
_AC = GaussianDiffusion().alphas_cumprod


def toy(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed learned-sigma 'model' (2C channels) acting on each sample alone: the ideal eps for
    x0 ~ N(0, 0.5^2) plus a smooth nonlinear perturbation, and a variance interpolation v in [-1, 1]."""
    ab, s = float(_AC[int(t)]), int(t) / 1000.0
    eps = (1 - ab) ** 0.5 * x / (0.25 * ab + 1 - ab) + 0.1 * torch.tanh(x.roll(1, dims=-1) + s)
    v = torch.tanh(0.3 * x - s) * math.cos(3 * s)
    return torch.cat([eps, v], dim=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _pipeline_loop(scheduler, steps: int, seeds=SEEDS, learned_sigma_cut: bool = True):
    """PixArtAlphaPipeline's loop: latents from randn_tensor(generator=list), eps half, step(generator=list)."""
    from diffusers.utils.torch_utils import randn_tensor

    gens = make_generators(seeds)
    scheduler.set_timesteps(steps)
    x = randn_tensor((len(seeds),) + SHAPE[1:], generator=gens) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = toy(scheduler.scale_model_input(x, t), int(t))
        if learned_sigma_cut:
            out = out.chunk(2, dim=1)[0]
        x = scheduler.step(out, t, x, generator=gens).prev_sample
    return x, gens


def _ours(solver: str, steps: int | None = None, seeds=SEEDS, nan_variance: bool = False):
    gens = make_generators(seeds)
    x = per_sample_noise((len(seeds),) + SHAPE[1:], gens)
    seen = []

    def denoise(x, step, t):
        assert step == len(seen)
        seen.append(t)
        out = toy(x, t)
        if nan_variance:
            out[:, SHAPE[1]:] = float("nan")  # the variance half must never reach DPM/SA-Solver
        return out

    out = run_t2i_solver(solver, denoise, x, gens, steps)
    assert seen == t2i_timesteps(solver, steps)
    return out, gens


def _dpm():  # exactly what PixArt's conversion script and demo app construct
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler()


def _sa():  # PixArt-alpha app/app.py, "SA-Solver"
    from diffusers import SASolverScheduler

    return SASolverScheduler.from_config(_dpm().config, algorithm_type="data_prediction",
                                         tau_func=lambda t: 1 if 200 <= t <= 800 else 0,
                                         predictor_order=2, corrector_order=2)


def test_dpm_solver_20_equals_the_pipeline_loop():
    ref, _ = _pipeline_loop(_dpm(), 20)
    ours, _ = _ours("dpm-solver", nan_variance=True)
    assert _rel(ours, ref) < 1e-6
    # flexcli's own DPM-Solver++(2M) (class-conditional DiT path) is the same solver on the same grid
    gens = make_generators(SEEDS)
    mine = dpmpp_2m_sample(lambda x, step, t: toy(x, t), per_sample_noise(SHAPE, gens),
                           GaussianDiffusion.from_timesteps(t2i_timesteps("dpm-solver")), gens)
    assert _rel(mine, ref) < 1e-5


def test_sa_solver_25_equals_the_pipeline_loop_with_its_noise():
    ref, ref_gens = _pipeline_loop(_sa(), 25)
    ours, gens = _ours("sa-solver", nan_variance=True)
    assert _rel(ours, ref) < 1e-6
    # the same draws: initial noise, then one tensor per step (25), from each sample's own generator
    fresh = make_generators(SEEDS)
    for _ in range(1 + 25):
        per_sample_noise(SHAPE, fresh)
    for g, r, f in zip(gens, ref_gens, fresh):
        probe = torch.randn(5, generator=g)
        assert torch.equal(probe, torch.randn(5, generator=r)) and torch.equal(probe, torch.randn(5, generator=f))


def test_sa_solver_noise_is_per_sample_and_matters():
    batch, _ = _ours("sa-solver")
    alone, _ = _ours("sa-solver", seeds=SEEDS[1:2])
    assert torch.allclose(batch[1:2], alone, atol=1e-6, rtol=0)  # sample 1 does not depend on its batch
    other, _ = _ours("sa-solver", seeds=[SEEDS[0], 99, SEEDS[2]])
    assert torch.equal(other[0], batch[0]) and not torch.allclose(other[1], batch[1], atol=1e-3)
    ode = _sa()
    ode.tau_func = lambda t: 0  # without the SDE segment the result changes: the per-step noise is used
    no_noise, _ = _pipeline_loop(ode, 25)
    assert _rel(no_noise, batch) > 1e-3


def test_iddpm_100_is_dits_ddpm_and_equals_diffusers_learned_range():
    from diffusers import DDPMScheduler

    steps = space_timesteps(1000, "100")  # PixArt's IDDPM("100") respacing: 0, 10, ..., 999 (fractional stride)
    assert steps[:3] == [0, 10, 20] and steps[-1] == 999 and len(steps) == 100
    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                      variance_type="learned_range", clip_sample=False)
    s.set_timesteps(timesteps=sorted(steps, reverse=True))
    stock, _ = _ddpm_loop(s)
    ours, _ = _ours("iddpm")
    assert _rel(ours, stock) < 1e-4  # diffusers keeps its schedule in float32; ADM/PixArt (and flexcli) in float64
    s.betas = GaussianDiffusion().betas  # the same float64 schedule in diffusers' step formula
    s.alphas = 1.0 - s.betas
    s.alphas_cumprod = torch.cumprod(s.alphas, 0)
    same_schedule, _ = _ddpm_loop(s)
    assert _rel(ours, same_schedule) < 1e-6


def _ddpm_loop(s):
    gens = make_generators(SEEDS)
    x = per_sample_noise(SHAPE, gens)
    for t in s.timesteps:
        x = s.step(toy(x, int(t)), t, x, generator=gens).prev_sample  # both halves: the learned variance
    return x, gens


def test_timesteps_and_defaults():
    assert t2i_timesteps("dpm-solver")[:3] == [999, 949, 899] and t2i_timesteps("dpm-solver")[-1] == 50
    assert len(t2i_timesteps("dpm-solver")) == 20
    sa = t2i_timesteps("sa-solver")
    assert len(sa) == 25 and sa[:2] == [999, 959] and sa[-1] == 40
    assert len(t2i_timesteps("iddpm")) == 100 and t2i_timesteps("iddpm")[0] == 999
    with pytest.raises(ValueError):
        t2i_timesteps("euler")
