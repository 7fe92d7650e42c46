"""What a sampling run needs beyond images: the solver family of the model (DDPM or flow matching), the flow
shift, and the video latent (`--frames/--height/--width`, checked against every patch size the run uses)."""
from __future__ import annotations

from flexcli.errors import FlexcliError

WAN_DEFAULT_CLIP = (81, 480, 832)  # frames, height, width: diffusers' WanPipeline defaults (480p)
DEFAULT_SOLVER = {"ddpm": "ddpm", "flow": "flow-unipc"}


def process_of(model) -> str:
    from flexcli.families import family_of

    return family_of(model).process


def solver_of(cfg, model) -> str:
    """The run's solver: the one given, checked against what the model predicts, or the family's default."""
    process = process_of(model)
    solver = cfg.solver or DEFAULT_SOLVER[process]  # PixArt's iddpm/dpm-solver/sa-solver are DDPM solvers too
    if (process == "flow") != solver.startswith("flow-"):
        if process == "flow":
            raise FlexcliError(f"--solver {solver} is a DDPM solver but this is a flow-matching model",
                               "pass --solver flow-unipc (Wan's default) or flow-euler")
        raise FlexcliError(f"--solver {solver} is a flow-matching solver but this model predicts noise (DDPM)",
                           "pass --solver ddpm, ddim or dpm++2m")
    return solver


def flow_shift_of(cfg, latent_shape: tuple) -> float:
    """--flow-shift, or diffusers' Wan choice: 3.0 for 480p, 5.0 for larger clips (shorter side above 480 px)."""
    if cfg.flow_shift is not None:
        return float(cfg.flow_shift)
    from flexcli.io.video import SPATIAL_COMPRESSION

    return 3.0 if min(latent_shape[-2:]) * SPATIAL_COMPRESSION <= 480 else 5.0


def run_timesteps(solver: str, steps: int, flow_shift: float | None) -> list:
    """The timesteps a solver visits, increasing (the record reverses them into sampling order)."""
    if solver.startswith("flow-"):
        from flexcli.diffusion.flow import flow_timesteps

        return list(reversed(flow_timesteps(solver[len("flow-"):], steps, flow_shift)))
    from flexcli.diffusion.samplers import solver_timesteps
    from flexcli.diffusion.t2i_solvers import T2I_SOLVERS, t2i_timesteps

    if solver in T2I_SOLVERS:  # PixArt's protocol (App. B.5)
        return sorted(t2i_timesteps(solver, steps))
    return solver_timesteps(solver, steps)


def pixel_space(model) -> bool:
    """Whether a video model sees its clips directly (1 or 3 channels, no VAE: the built-in Wan-FMNIST), as an
    image model does; Wan 2.1 sees 16-channel video-VAE latents."""
    return model.config.in_channels in (1, 3)


def latent_shape_of(cfg, model, patch_sizes) -> tuple:
    """(C, *spatial) of one sample: the model's latent for images; for video the clip's latent, after checking
    that the VAE and every patch size in `patch_sizes` tile it (one-line error naming the nearest valid values).
    A pixel-space video model's clip is its latent (frames, height and width in pixels, no VAE); its default
    size is the config's `latent_size`."""
    video = len(model.base_patch) == 3
    given = [f for f, v in (("--frames", cfg.frames), ("--height", cfg.height), ("--width", cfg.width)) if v]
    if not video:
        if given:
            raise FlexcliError(f"{given[0]} is for video models; this checkpoint makes images",
                               "drop --frames/--height/--width")
        return tuple(model.latent_shape)
    from flexcli.io.video import check_video_shape

    pixels = pixel_space(model)
    default = (model.config.latent_size or WAN_DEFAULT_CLIP) if pixels else WAN_DEFAULT_CLIP
    frames, height, width = (v if v is not None else d for v, d in zip((cfg.frames, cfg.height, cfg.width), default))
    no_vae = {"temporal_compression": 1, "spatial_compression": 1} if pixels else {}
    return (model.config.in_channels, *check_video_shape(frames, height, width, patch_sizes, **no_vae))
