"""The whole `flexcli sample` job, in one process or sharded over torchrun ranks (NCCL on GPUs, gloo on CPU):
sample i always has seed base + i, rank r takes the indices r, r + world, ...; rank 0 owns the output folder,
written atomically."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from flexcli.io.samples import decode, finalize_folder, load_vae, to_uint8, write_images
from flexcli.sampling.config import SampleConfig
from flexcli.sampling.denoiser import Progress, sample_latents
from flexcli.sampling.outputs import run_record
from flexcli.sampling.plan import make_plan


def _dist():
    """(rank, world, local_rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: SampleConfig, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def run(cfg: SampleConfig, progress: Progress | None = None, notes: Callable[[str], None] | None = None) -> Path | None:
    """The whole `flexcli sample` job. Returns the output folder on rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    from flexcli.io.atomic import check_output

    notes = notes or (lambda s: None)
    rank, world, local = _dist()
    out = Path(cfg.out)
    check_output(out, cfg.force)
    device = _device(cfg, local)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            return _run(cfg, out, device, rank, world, progress, notes)
        finally:
            dist.destroy_process_group()
    return _run(cfg, out, device, rank, world, progress, notes)


def _run(cfg: SampleConfig, out: Path, device, rank: int, world: int, progress, notes) -> Path | None:
    import torch.distributed as dist

    from flexcli.api import load_model
    from flexcli.io.atomic import atomic_dir

    model = load_model(cfg.checkpoint, merge_lora=cfg.merge_lora).to(device)
    if cfg.dtype == "float64":
        model = model.double()
    plan = make_plan(cfg, model)
    if len(model.base_patch) == 3:  # video: its own outputs (flexcli.sampling.video_outputs)
        from flexcli.sampling.video_outputs import run_video

        return run_video(cfg, model, plan, out, device, rank, world, progress, notes)
    pixel = model.config.in_channels in (1, 3)
    vae = None
    if not pixel and cfg.vae is not None:
        vae = load_vae(cfg.vae, device)
    if rank == 0:
        if pixel and cfg.vae is not None:
            notes("pixel-space model: --vae is not used")
        elif not pixel and vae is None:
            notes("no --vae given: saving latents only (latents.npz, NCHW); pass --vae DIR for images")
        notes(f"schedule {plan.schedule.spec}: compute fraction "
              f"{sum(plan.step_macs) / (plan.baseline_step_macs * plan.schedule.steps):.4f} of all-powerful")
    with_images = pixel or vae is not None
    indices = list(range(rank, cfg.num_samples, world))
    start = time.perf_counter()

    def body(tmp: Path) -> torch.Tensor:
        lat = sample_latents(model, cfg, plan, indices, device, progress if rank == 0 else None)
        if with_images:
            images = to_uint8(lat.float()) if pixel else decode(lat, vae, device, cfg.batch_size)
            write_images(tmp, indices, images)
        return lat

    if world == 1:
        with atomic_dir(out) as tmp:
            latents = body(tmp)
            record = run_record(cfg, model, plan, time.perf_counter() - start, device, world)
            finalize_folder(tmp, cfg.num_samples, record, None if with_images else latents, with_images)
        return out
    # torchrun: rank 0 owns the temporary folder; every rank writes its own PNGs into it, rank 0 gathers.
    if rank == 0:
        with atomic_dir(out) as tmp:
            dist.broadcast_object_list([str(tmp)], src=0)
            latents = body(tmp)
            parts = [None] * world
            dist.gather_object((indices, latents), parts, dst=0)
            full = torch.empty(cfg.num_samples, *latents.shape[1:], dtype=latents.dtype)
            for idx, lat in parts:
                full[idx] = lat
            record = run_record(cfg, model, plan, time.perf_counter() - start, device, world)
            finalize_folder(tmp, cfg.num_samples, record, None if with_images else full, with_images)
        dist.barrier()
        return out
    box = [None]
    dist.broadcast_object_list(box, src=0)
    latents = body(Path(box[0]))
    dist.gather_object((indices, latents), None, dst=0)
    dist.barrier()
    return None
