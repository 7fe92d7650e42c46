"""The training objectives of `flexcli distill` (paper §3.1, §3.2, App. B.1), as per-sample losses.

* LoRA mode (§3.2): || eps(x_t; p_powerful) - eps(x_t; p_weak) ||^2 with the teacher = the same model at the
  pretrained size under no_grad. With the LoRAs of the pretrained size absent, that is exactly the original model.
  **Learned sigma**: the weak de-embedding also produces the C variance channels v (DiT's learned-range
  interpolation, in [-1, 1]). We distil them too, by MSE with weight `sigma_weight` (default 1): the teacher's v
  is the variance the original sampler uses, the LoRAs change the features v is read from, so without a target
  the weak mode's variance would drift freely; v has the same order of magnitude as eps, and
  `sigma_weight: 0` gives the paper's literal eps-only objective.
* Shared mode (§3.1): DiT's loss (MSE on eps + the VB term on the mean-detached output, learned sigma) at the
  patch size drawn for the batch, plus optionally `distill_weight` x the same distillation term (the teacher is
  the current model's powerful prediction, detached) and App. B.1's bootstrapped MMD loss.

Labels are dropped by the caller (one draw shared by teacher and student, dit-facts pitfall 9) and the model
runs in eval mode so that LabelEmbedder does not drop again. A DiT has no dropout layers; label dropout is the
only thing train mode changes.
"""
from __future__ import annotations

import torch

from flexcli.diffusion.process import GaussianDiffusion, mean_flat


def sample_timesteps(n: int, generator: torch.Generator, how: str = "uniform", power: float = 2.0,
                     num_timesteps: int = 1000) -> torch.Tensor:
    """(n,) int64 timesteps: uniform on 0..T-1, `low` = floor(T * u**power) (biased toward small t, C.2), or
    `high` = T - 1 - floor(T * u**power) (its mirror image, biased toward large t: where weak-first schedules run
    the weak mode)."""
    if how == "uniform":
        return torch.randint(0, num_timesteps, (n,), generator=generator)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    low = (num_timesteps * u ** power).long().clamp_(0, num_timesteps - 1)
    return num_timesteps - 1 - low if how == "high" else low


def drop_labels(labels: torch.Tensor, prob: float, null_class: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null class with probability `prob` (classifier-free guidance training)."""
    drop = torch.rand(labels.shape[0], generator=generator) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def distill_terms(student: torch.Tensor, teacher: torch.Tensor, channels: int, sigma_weight: float) -> dict:
    """Per-sample eps and variance-channel MSEs between student and teacher outputs (N, C or 2C, H, W)."""
    s, t = student.float(), teacher.float()
    terms = {"eps": mean_flat((s[:, :channels] - t[:, :channels]) ** 2)}
    loss = terms["eps"]
    if s.shape[1] > channels:
        terms["sigma"] = mean_flat((s[:, channels:] - t[:, channels:]) ** 2)
        loss = loss + sigma_weight * terms["sigma"]
    terms["loss"] = loss
    return terms


def lora_distill_loss(model, teacher_model, x_t, t, y, patch_size: int, channels: int, sigma_weight: float) -> dict:
    """§3.2: the student (weak patch) matches the frozen powerful mode of the same model."""
    with torch.no_grad():
        teacher = teacher_model(x_t, t, y)  # pretrained patch size: LoRAs inactive = the original model
    student = model(x_t, t, y, patch_size=patch_size)
    return distill_terms(student, teacher, channels, sigma_weight)


def shared_loss(model, teacher_model, diffusion: GaussianDiffusion, x0, x_t, t, noise, y, patch_size: int,
                base_patch: int, learn_sigma: bool, distill_weight: float, sigma_weight: float) -> dict:
    """§3.1: DiT's objective at the drawn patch size (+ optional distillation toward the powerful mode)."""
    out = model(x_t, t, y, patch_size=patch_size).float()
    terms = diffusion.training_losses(out, x0, t, noise, x_t=x_t, learn_sigma=learn_sigma)
    if distill_weight > 0 and patch_size != base_patch:
        with torch.no_grad():
            teacher = teacher_model(x_t, t, y)
        d = distill_terms(out, teacher, x0.shape[1], sigma_weight)
        terms["distill"] = d["loss"]
        terms["loss"] = terms["loss"] + distill_weight * d["loss"]
    return terms


# --------------------------------------------------------------------------------------------------
def mmd2(x: torch.Tensor, y: torch.Tensor, scales=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """Biased squared MMD with a sum of Gaussian kernels; bandwidths = scales x the median pooled distance."""
    x, y = x.flatten(1).float(), y.flatten(1).float()
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    n = x.shape[0]
    off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    base = off.detach().median().clamp_min(1e-8)
    k = sum(torch.exp(-d2 / (s * base)) for s in scales)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def bootstrap_mmd_loss(model, x0_chain, y_chain, x0_target, weak_patch: int, base_patch: int,
                       diffusion: GaussianDiffusion, weak_steps: int, powerful_steps: int, generator: torch.Generator,
                       learn_sigma: bool, power: float = 2.0) -> torch.Tensor:
    """App. B.1: noise real data to spaced step i_lo + s_w + s_p, denoise s_w steps at the weak patch size and
    s_p at the powerful one (DDPM on `diffusion`, the inference schedule), and return the MMD between the results
    and other real data noised to i_lo. i_lo is biased toward small t (the MMD is larger there, C.2).

    Gradients flow through the whole chain. One i_lo per batch (a batch of chains shares its time).
    """
    k = weak_steps + powerful_steps
    span = diffusion.num_timesteps - k
    i_lo = min(int(span * torch.rand((), generator=generator, dtype=torch.float64).item() ** power), span - 1)
    n, device = x0_chain.shape[0], x0_chain.device
    noise = torch.randn(x0_chain.shape, generator=generator).to(device)
    idx = torch.full((n,), i_lo + k, dtype=torch.long, device=device)
    x = diffusion.q_sample(x0_chain, idx, noise)
    for j in range(k):
        i = i_lo + k - j
        idx = torch.full((n,), i, dtype=torch.long, device=device)
        p = weak_patch if j < weak_steps else base_patch
        out = model(x, diffusion.original_timesteps(idx), y_chain, patch_size=p).float()
        pmv = diffusion.p_mean_variance(out, x, idx, learn_sigma=learn_sigma)
        z = torch.randn(x.shape, generator=generator).to(device)
        x = pmv["mean"] + torch.exp(0.5 * pmv["log_variance"]) * z  # i >= 1 here: always noise
    target_noise = torch.randn(x0_target.shape, generator=generator).to(device)
    target = diffusion.q_sample(x0_target, torch.full((x0_target.shape[0],), i_lo, dtype=torch.long, device=device),
                                target_noise)
    return mmd2(x, target)
