"""What a sampling run records (`run.json`): the resolved config, seeds, labels, schedule, per-step costs,
the compute fraction and the cost of each packing option, wall time, device and versions."""
from __future__ import annotations

import platform
import sys

import torch

from flexcli.compute import model_step_cost
from flexcli.diffusion import schedule as G
from flexcli.sampling.config import SampleConfig
from flexcli.sampling.plan import Plan


def _versions() -> dict:
    import numpy
    from flexcli.version import __version__

    v = {"flexcli": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
         "python": platform.python_version()}
    try:
        import diffusers
        v["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_record(cfg: SampleConfig, model, plan: Plan, wall: float, device, world: int) -> dict:
    base_total = plan.baseline_step_macs * plan.schedule.steps
    total = sum(plan.step_macs)
    steps = []
    for k, (pc, pu) in enumerate(plan.schedule.pairs()):
        steps.append({"step": k, "t": plan.timesteps[::-1][k], "p_cond": pc, "p_uncond": pu if plan.guided else None,
                      "guide_label": ("cond" if G.uses_weak_guidance(pc, pu, cfg.guidance) else "null")
                      if plan.guided else None, "macs": plan.step_macs[k], "flops": 2 * plan.step_macs[k]})
    packing = {}
    if plan.guided:
        for name, pack, dense in (("separate", "separate", True), ("packed_dense", "packed", True),
                                  ("packed_block_sparse", "packed", False)):
            fn = model_step_cost(model, pack, dense, input_size=plan.input_size)
            packing[name] = 2 * sum(fn(c, u) for c, u in plan.schedule.pairs())
    return {
        "config": cfg.to_dict(), "model": {"config": model.config.to_dict(), "patch_sizes": model.patch_sizes,
                                           "flex": model.flex.describe() if model.flex is not None else None},
        "seeds": [cfg.seed + i for i in range(cfg.num_samples)], **plan.conditioning.record(),
        "timesteps": plan.timesteps[::-1], "schedule": plan.schedule.to_dict(),
        "solver": {"name": plan.solver, **({"flow_shift": plan.flow_shift} if plan.flow_shift is not None else {})},
        "latent_shape": list(plan.latent_shape),
        "guidance": {"enabled": plan.guided, "mode": cfg.guidance, "s_cfg1": plan.s1, "s_cfg2": plan.s2,
                     "s_cfg0": plan.s1 if plan.s0 is None else plan.s0,
                     "guided_channels": cfg.guided_channels or plan.latent_shape[0]},
        "steps": steps,
        "flops": {"convention": "per sample, denoiser matmuls only; FLOPs = 2 x MACs; guidance branches included",
                  "total": 2 * total, "baseline_all_powerful": 2 * base_total,
                  "compute_fraction": total / base_total, "packing_options_total": packing},
        "wall_time_s": wall, "processes": world, "device": _device_name(device), "versions": _versions(),
        "command": " ".join(sys.argv),
    }
