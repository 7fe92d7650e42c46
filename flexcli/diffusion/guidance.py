"""Classifier-free guidance and the paper's weak guidance (§3.4, App. B.4), on model outputs.

Outputs hold eps in their first C channels and, with learned sigma, the variance channels after them. Only
the first `guided_channels` eps channels are guided (all C by default; 3 reproduces DiT's released FIDs,
dit-facts pitfall 4). The other channels are taken from the conditional branch, as in DiT's forward_with_cfg.

Per step, with patch sizes p_cond and p_uncond:
* p_cond == p_uncond: eps(null; p_u) + s1 (eps(c; p_c) - eps(null; p_u))   (standard CFG)
* p_cond <  p_uncond (fewer cells per token), weak guidance: eps(c; p_u) + s2 (eps(c; p_c) - eps(c; p_u)): the guidance branch is the
  WEAK model's CONDITIONAL prediction.
* otherwise (plain CFG mode, or p_cond > p_uncond): standard CFG with s1 and the null label at p_u.
"""
from __future__ import annotations

import torch

GUIDANCE_MODES = ("weak", "cfg")
PAPER_LINK = 2.5  # (1 - s1) / (1 - s2), App. B.4


def linked_weak_scale(s1: float, link: float = PAPER_LINK) -> float:
    """s2 from (1 - s1) / (1 - s2) = link."""
    return 1.0 - (1.0 - s1) / link


def patch_volume(p) -> int:
    """Latent cells per token: p^2 for a square image patch p, the product of a video patch's axes."""
    if isinstance(p, int):
        return p * p
    out = 1
    for v in p:
        out *= int(v)
    return out


def uses_weak_guidance(p_cond, p_uncond, mode: str = "weak") -> bool:
    """Whether this step's guidance branch is the weak conditional prediction (label c instead of null): the
    guidance branch runs at a larger patch (more cells per token) than the conditional one."""
    return mode == "weak" and patch_volume(p_cond) < patch_volume(p_uncond)


def step_scale(p_cond: int, p_uncond: int, s1: float, s2: float, mode: str = "weak") -> float:
    return s2 if uses_weak_guidance(p_cond, p_uncond, mode) else s1


def combine(cond: torch.Tensor, guide: torch.Tensor, scale: float, eps_channels: int,
            guided_channels: int | None = None) -> torch.Tensor:
    """guide + scale (cond - guide) on the first `guided_channels` eps channels; the rest from `cond`."""
    n = guided_channels or eps_channels
    g = guide[:, :n] + scale * (cond[:, :n] - guide[:, :n])
    return torch.cat([g, cond[:, n:]], dim=1)
