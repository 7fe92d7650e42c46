"""The output folder of a video sampling run (Wan): latents.npz always; with a local video VAE (`--vae DIR`, or
the vae/ of `--pipeline DIR`) one MP4 and one GIF per sample and a grid of frames (`flexcli.io.video`);
run.json. A pixel-space model's latents are its clips (in [-1, 1]): one GIF per sample and the grid, no VAE.
Under torchrun every rank samples its indices and rank 0 gathers, decodes and writes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from flexcli.sampling.denoiser import sample_latents
from flexcli.sampling.video import pixel_space
from flexcli.sampling.outputs import run_record


def vae_path(cfg) -> str | None:
    """--vae, else a --pipeline folder's vae/ (decoded videos), else None (latents only)."""
    if cfg.vae is not None:
        return cfg.vae
    if cfg.pipeline is not None and (Path(cfg.pipeline) / "vae").is_dir():
        return cfg.pipeline
    return None


def run_video(cfg, model, plan, out: Path, device, rank: int, world: int, progress, notes) -> Path | None:
    import torch.distributed as dist

    from flexcli.io.atomic import atomic_dir
    from flexcli.io.video import clip_frames, decode_latents, load_wan_vae, mp4_available, write_video_outputs

    pixels = pixel_space(model)
    path = None if pixels else vae_path(cfg)
    vae = load_wan_vae(path, device) if path is not None else None
    if rank == 0:
        c, f, h, w = plan.latent_shape
        if pixels:
            notes(f"pixel-space clips {c}x{f}x{h}x{w}: GIFs, grid.png and latents.npz (the clips in [-1, 1])" +
                  ("; --vae is not used" if vae_path(cfg) is not None else ""))
        else:
            notes(f"latent {c}x{f}x{h}x{w} (frames x height x width after the video VAE); " +
                  ("decoding with " + str(path) if vae is not None else "no --vae given: saving latents only "
                   "(latents.npz, N x C x F x H x W); pass --vae DIR (AutoencoderKLWan) for videos"))
        notes(f"{plan.solver} (flow shift {plan.flow_shift}), schedule {plan.schedule.spec}: compute fraction "
              f"{sum(plan.step_macs) / (plan.baseline_step_macs * plan.schedule.steps):.4f} of all-powerful")
    indices = list(range(rank, cfg.num_samples, world))
    start = time.perf_counter()
    latents = sample_latents(model, cfg, plan, indices, device, progress if rank == 0 else None)
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((indices, latents), parts, dst=0)
        if rank != 0:
            dist.barrier()
            return None
        full = torch.empty(cfg.num_samples, *latents.shape[1:], dtype=latents.dtype)
        for idx, lat in parts:
            full[idx] = lat
        latents = full
    with atomic_dir(out) as tmp:
        if pixels:
            write_video_outputs(tmp, clip_frames(latents.float()), latents, mp4=False)
        elif vae is not None:
            write_video_outputs(tmp, decode_latents(vae, latents.float()), latents, mp4=mp4_available())
        else:
            np.savez(tmp / "latents.npz", arr_0=latents.float().numpy())
        record = run_record(cfg, model, plan, time.perf_counter() - start, device, world)
        record["outputs"] = {"videos": pixels or vae is not None, "vae": path, "pixel_space": pixels,
                             "mp4": vae is not None and mp4_available()}
        (tmp / "run.json").write_text(json.dumps(record, indent=2))
    if world > 1:
        dist.barrier()
    return out
