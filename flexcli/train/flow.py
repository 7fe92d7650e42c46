"""Distillation draws for flow-matching text-to-video models (Wan, issue #14).

x_sigma = (1 - sigma) x0 + sigma noise and the model sees t = 1000 sigma (as at inference). sigma is drawn as
Wan's sampler spaces it: u uniform (or u^power for `timesteps: low`, biased to small sigma, App. C.2), then
shifted, sigma = s u / (1 + (s - 1) u), with the run's flow shift s (3.0: the 480p sampling shift). The
objective is the paper's §3.2 distillation with velocities for eps: || v(x; p_powerful) - v(x; p_weak) ||^2,
the teacher being the same model at its pretrained size (frozen, LoRAs inactive); shared mode adds the
flow-matching loss || v(x; p) - (noise - x0) ||^2. Captions are dropped to the null caption with probability
`label_dropout` (both branches of guidance then have a weak model to run).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flexcli.diffusion.process import mean_flat
from flexcli.flex.conditions import TextCondition


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


def drop_captions(embeds: torch.Tensor, mask: torch.Tensor, negative, prob: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption replaced by the null caption with probability `prob` (one draw per sample, always drawn)."""
    drop = torch.rand(embeds.shape[0], generator=generator) < prob
    if negative is None or prob <= 0 or not bool(drop.any()):
        return embeds, mask
    ne, nm = negative
    L = max(embeds.shape[1], ne.shape[1])
    embeds, mask = F.pad(embeds, (0, 0, 0, L - embeds.shape[1])), F.pad(mask, (0, L - mask.shape[1]))
    ne, nm = F.pad(ne, (0, 0, 0, L - ne.shape[1])), F.pad(nm, (0, L - nm.shape[1]))
    return torch.where(drop[:, None, None], ne, embeds), torch.where(drop[:, None], nm, mask)


def condition(embeds: torch.Tensor, mask: torch.Tensor, sl: slice, device) -> TextCondition:
    return TextCondition(embeds[sl].to(device), mask[sl].to(device))


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
