"""Distillation draws for flow-matching text-to-video models (Wan, issue #14).

x_sigma = (1 - sigma) x0 + sigma noise and the model sees t = 1000 sigma (as at inference). sigma is drawn as
Wan's sampler spaces it: u uniform (or u^power for `timesteps: low`, biased to small sigma, App. C.2), then
shifted, sigma = s u / (1 + (s - 1) u), with the run's flow shift s (3.0: the 480p sampling shift). The
objective is the paper's §3.2 distillation with velocities for eps: || v(x; p_powerful) - v(x; p_weak) ||^2,
the teacher being the same model at its pretrained size (frozen, LoRAs inactive); shared mode adds the
flow-matching loss || v(x; p) - (noise - x0) ||^2. Captions drop to the null caption as for text-to-image
(`flexcli.data.text_data.TextData.dropped`, 10 % by default), so both guidance branches have a weak model.
"""
from __future__ import annotations

import torch

from flexcli.diffusion.process import mean_flat


def sample_sigmas(n: int, generator: torch.Generator, how: str = "uniform", power: float = 2.0,
                  shift: float = 3.0) -> torch.Tensor:
    """(n,) float32 noise levels in (0, 1]."""
    u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)  # (0, 1]
    if how == "low":
        u = u ** power
    return (shift * u / (1 + (shift - 1) * u)).float()


def noised(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *[1] * (x0.dim() - 1)).to(x0)
    return (1 - s) * x0 + s * noise


def flow_shared_loss(model, teacher_model, x0, x_t, t, noise, cond, patch_size, base_patch, distill_weight: float,
                     sigma_weight: float) -> dict:
    """§3.1 for flow matching: the velocity loss at the drawn patch size (+ distillation toward the powerful mode)."""
    from flexcli.train.objectives import distill_terms

    out = model(x_t, t, cond, patch_size=patch_size).float()
    terms = {"mse": mean_flat((out - (noise - x0).float()) ** 2)}
    terms["loss"] = terms["mse"]
    if distill_weight > 0 and patch_size != base_patch:
        with torch.no_grad():
            teacher = teacher_model(x_t, t, cond)
        d = distill_terms(out, teacher, x0.shape[1], sigma_weight)
        terms["distill"] = d["loss"]
        terms["loss"] = terms["loss"] + distill_weight * d["loss"]
    return terms
