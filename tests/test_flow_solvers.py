"""Flow-matching solvers (issue #14): parity with diffusers' schedulers driven by hand as WanPipeline drives them."""
import numpy as np
import pytest
import torch

from flexcli.diffusion.flow import flow_euler_sample, flow_scheduler, flow_sigmas, flow_timesteps, \
    flow_unipc_sample, run_flow_solver
from flexcli.diffusion.samplers import make_generators, per_sample_noise
from wan_helpers import tiny_wan

# scheduler/scheduler_config.json as shipped with Wan-AI/Wan2.1-T2V-1.3B-Diffusers (every field).
SHIPPED_UNIPC = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero", "flow_shift": 3.0, "lower_order_final": True, "num_train_timesteps": 1000,
    "predict_x0": True, "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0,
    "thresholding": False, "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False,
}
SHAPE = (2, 4, 3, 4, 6)  # (B, C, F, H, W) latents
STEPS = 6


@pytest.fixture(scope="module")
def model():
    return tiny_wan(seed=3)


@pytest.fixture(scope="module")
def text(model):
    return torch.randn(SHAPE[0], 5, model.config.text_dim, generator=torch.Generator().manual_seed(7))


def _reference_scheduler(solver, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if solver == "unipc":  # diffusers' Wan example: from_config(pipe.scheduler.config, flow_shift=...)
        return UniPCMultistepScheduler.from_config(SHIPPED_UNIPC, flow_shift=shift)
    return FlowMatchEulerDiscreteScheduler(shift=shift)


@torch.no_grad()
def _by_hand(model, text, solver, shift, noise):
    """WanPipeline.__call__'s denoising loop, without guidance."""
    scheduler = _reference_scheduler(solver, shift)
    scheduler.set_timesteps(STEPS, device="cpu")
    scheduler.set_begin_index(0)
    latents = noise.clone()
    for t in scheduler.timesteps:
        timestep = t.expand(latents.shape[0])
        v = model(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


def _denoiser(model, text, seen):
    @torch.no_grad()
    def denoise(x, step, t):
        seen.append((step, t))
        timestep = torch.full((x.shape[0],), t)
        return model(hidden_states=x, timestep=timestep, encoder_hidden_states=text[:x.shape[0]],
                     return_dict=False)[0]
    return denoise


@pytest.mark.parametrize("solver", ["unipc", "euler"])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_solver_equals_diffusers_scheduler_by_hand(model, text, solver, shift):
    noise = per_sample_noise(SHAPE, make_generators([11, 12]))
    seen, calls = [], []
    ours = run_flow_solver(solver, _denoiser(model, text, seen), noise.clone(), STEPS, shift,
                           callback=lambda s, n, info: calls.append((s, n, info)))
    theirs = _by_hand(model, text, solver, shift, noise)
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert rel <= 1e-6, rel
    assert [s for s, _ in seen] == list(range(STEPS))
    assert [t for _, t in seen] == flow_timesteps(solver, STEPS, shift)
    assert [c[0] for c in calls] == list(range(STEPS)) and all(c[1] == STEPS for c in calls)
    assert calls[-1][2]["sigma_next"] == 0.0 and calls[0][2]["t"] == seen[0][1]


def _shift(sigmas, s):
    return s * sigmas / (1 + (s - 1) * sigmas)


@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_schedules_in_closed_form(shift):
    """UniPC (flow sigmas): sigma = shift(linspace(1, 1/1000, n+1)[:-1]), the first nudged to 1 - 1e-6, and the
    model sees int(1000 sigma); Euler: float32 1000 sigma with sigma = shift(linspace(1, shift(1/1000), n)) (diffusers'
    FlowMatchEulerDiscreteScheduler applies the shift to its sigma_min too)."""
    n = 50
    sig = _shift(np.linspace(1, 1 / 1000, n + 1)[:-1], shift)
    sig[0] -= 1e-6
    assert flow_timesteps("unipc", n, shift) == [float(int(v)) for v in sig * 1000]
    assert flow_timesteps("unipc", n, 3.0)[:4] == [999.0, 993.0, 986.0, 979.0]
    np.testing.assert_allclose(flow_sigmas("unipc", n, shift), np.append(sig, 0.0), rtol=1e-6)
    euler = _shift(np.linspace(1, _shift(1 / 1000, shift), n), shift)
    np.testing.assert_allclose(flow_timesteps("euler", n, shift), euler * 1000, rtol=1e-5)
    assert flow_timesteps("euler", n, shift)[0] == 1000.0
    assert flow_sigmas("euler", n, shift)[-1] == 0.0


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_exact_velocity_of_a_point_mass_lands_on_it(solver):
    """For data concentrated at x0 the true velocity at x_sigma is (x - x0) / sigma; a consistent solver must end
    on x0 (Euler exactly, UniPC because its data prediction x - sigma v is x0 at every step)."""
    x0 = torch.randn(2, 4, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigmas = flow_sigmas(solver, 8, 3.0)
    out = run_flow_solver(solver, lambda x, step, t: (x - x0) / sigmas[step], noise, 8, 3.0)
    assert not torch.allclose(noise, x0, atol=0.1)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)


def test_per_sample_results_do_not_depend_on_the_batch(model, text):
    noise = per_sample_noise(SHAPE, make_generators([11, 12]))
    both = flow_unipc_sample(_denoiser(model, text, []), noise.clone(), STEPS)
    second = flow_unipc_sample(_denoiser(model, text[1:], []), per_sample_noise((1, *SHAPE[1:]),
                                                                                make_generators([12])), STEPS)
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-6)


def test_configuration_and_bad_arguments():
    unipc = flow_scheduler("unipc", 5.0)
    for key, value in SHIPPED_UNIPC.items():
        if not key.startswith("_") and key != "flow_shift":
            assert unipc.config[key] == value, key
    assert unipc.config.flow_shift == 5.0
    assert flow_scheduler("euler", 5.0).config.shift == 5.0
    with pytest.raises(ValueError, match="unknown flow solver"):
        flow_scheduler("ddim")
    with pytest.raises(ValueError, match="flow_shift must be positive"):
        flow_scheduler("euler", 0.0)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        flow_timesteps("unipc", 0)
    with pytest.raises(ValueError, match="the denoiser returned shape"):
        flow_euler_sample(lambda x, s, t: x[:, :1], torch.zeros(1, 2, 1, 2, 2), 2)
