"""Held-out quality of the weak modes: how far each weak patch size's prediction is from the powerful one."""
from __future__ import annotations

import torch

from flexcli.data import TensorData
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.train.objectives import distill_terms


@torch.no_grad()
def weak_vs_powerful_error(model, data: TensorData, patch_sizes: list[int] | None = None, samples: int = 256,
                           seed: int = 1234, batch: int = 64) -> dict:
    """Mean squared weak-vs-powerful difference of the eps channels (and the variance channels) on `data`
    noised at uniform t with fixed noise: {patch: {"eps": ..., "sigma": ...}}. Labels (or captions) are the
    real ones. Flow-matching models (Wan): the velocities' difference, under "eps", keyed "2x2x2"."""
    from flexcli.families import family_of

    if family_of(model).process == "flow":
        return _flow_error(model, data, patch_sizes, samples, seed, batch)
    g = torch.Generator().manual_seed(seed)
    diffusion = GaussianDiffusion()
    device = next(model.parameters()).device
    n = min(samples, len(data))
    idx = torch.randperm(len(data), generator=g)[:n]
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn((n, *data.latents.shape[1:]), generator=g)
    sizes = patch_sizes or model.patch_sizes[1:]
    sums = {p: {"eps": 0.0, "sigma": 0.0} for p in sizes}
    was_training = model.training
    model.eval()
    c = data.latents.shape[1]
    for i in range(0, n, batch):
        rows = idx[i:i + batch]
        x0 = data.latents[rows].to(device)
        y = data.conditions(rows).to(device) if hasattr(data, "conditions") else data.labels[rows].to(device)
        tt = t[i:i + batch].to(device)
        x_t = diffusion.q_sample(x0, tt, noise[i:i + batch].to(device))
        ref = model(x_t, tt, y).float()
        for p in sizes:
            terms = distill_terms(model(x_t, tt, y, patch_size=p).float(), ref, c, 1.0)
            sums[p]["eps"] += terms["eps"].sum().item()
            sums[p]["sigma"] += terms["sigma"].sum().item() if "sigma" in terms else 0.0
    model.train(was_training)
    return {int(p): {k: v / n for k, v in s.items()} for p, s in sums.items()}


@torch.no_grad()
def _flow_error(model, data, patch_sizes, samples: int, seed: int, batch: int) -> dict:
    from flexcli.flex.patches import label
    from flexcli.train.flow import noised

    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    n = min(samples, len(data))
    idx = torch.randperm(len(data), generator=g)[:n]
    sigma = torch.rand(n, generator=g).clamp_min(1e-3)
    noise = torch.randn((n, *data.latents.shape[1:]), generator=g)
    sizes = patch_sizes or model.patch_sizes[1:]
    sums = {p: 0.0 for p in sizes}
    was_training = model.training
    model.eval()
    for i in range(0, n, batch):
        j = idx[i:i + batch]
        cond = data.conditions(j).to(device)
        s = sigma[i:i + batch].to(device)
        x_t = noised(data.latents[j].to(device), s, noise[i:i + batch].to(device))
        ref = model(x_t, 1000 * s, cond).float()
        for p in sizes:
            sums[p] += distill_terms(model(x_t, 1000 * s, cond, patch_size=p).float(), ref, ref.shape[1],
                                     1.0)["eps"].sum().item()
    model.train(was_training)
    return {label(p): {"eps": v / n, "sigma": 0.0} for p, v in sums.items()}
