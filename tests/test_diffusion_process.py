"""DiT's diffusion process against diffusers' schedulers and ADM's published behaviour."""
import torch

from flexcli.diffusion.process import GaussianDiffusion, space_timesteps


def test_respacing_keeps_dits_timesteps():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps[:3] == [0, 4, 8] and steps[-2:] == [995, 999]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    d = GaussianDiffusion.respaced(250)
    assert d.num_timesteps == 250 and d.timestep_map[-1] == 999
    # Respacing preserves alpha-bar at the kept timesteps.
    full = GaussianDiffusion()
    assert torch.allclose(d.alphas_cumprod, full.alphas_cumprod[torch.tensor(steps)], rtol=1e-12)


def test_schedule_matches_diffusers_ddpm():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    d = GaussianDiffusion()
    assert torch.allclose(d.alphas_cumprod.float(), s.alphas_cumprod, atol=1e-6)


def test_posterior_and_eps_round_trip():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g)
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(d.predict_xstart_from_eps(xt, t, noise), x0, atol=2e-3)
    # With the true eps and v = +1 (beta_t), the mean is the true posterior mean.
    out = d.p_mean_variance(torch.cat([noise, torch.ones_like(noise)], 1), xt, t)
    mean, _, _ = d.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(out["mean"], mean, atol=1e-3)
    assert torch.allclose(out["variance"][:, 0, 0, 0], d.betas[t].float(), rtol=1e-5)


def test_training_loss_has_vb_term_only_through_sigma():
    d = GaussianDiffusion()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 8, 8, generator=g).clamp(-1, 1)
    noise = torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([0, 300])
    out = torch.randn(2, 6, 8, 8, generator=g, requires_grad=True)
    terms = d.training_losses(out, x0, t, noise)
    terms["vb"].sum().backward()
    assert out.grad[:, :3].abs().max() == 0 and out.grad[:, 3:].abs().max() > 0
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])


def test_one_step_process_samples():
    """A 1-step respacing (t = 999 only) has no t = 1 posterior value: the log variance falls back to beta."""
    d = GaussianDiffusion.respaced(1)
    x = torch.randn(2, 3, 4, 4)
    out = d.p_mean_variance(torch.zeros(2, 6, 4, 4), x, torch.tensor([0, 0]))
    assert torch.isfinite(out["mean"]).all() and torch.isfinite(out["log_variance"]).all()
    out = d.p_mean_variance(torch.zeros(2, 3, 4, 4), x, torch.tensor([0, 0]), learn_sigma=False)
    assert torch.isfinite(out["variance"]).all()
