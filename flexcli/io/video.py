"""Video shapes, the Wan video VAE and video outputs (issue #14).

Frame arithmetic (diffusers' WanPipeline.prepare_latents; Wan-Video/Wan2.1 text2video.py with vae_stride
(4, 8, 8)): the causal video VAE keeps the first frame and compresses each following 4 frames into one latent
frame, and space by 8, so `frames` must be 4k + 1 and latent_frames = (frames - 1) // 4 + 1 (81 -> 21);
decoding L latent frames gives 4 (L - 1) + 1 frames. Every patch size a run uses must tile the latent grid:
a temporal patch 2 needs an even latent frame count (81 frames -> 21: use 77 or 85), a spatial patch p needs
height and width multiples of 8 p.

Outputs of a video run: one GIF (Pillow) and one MP4 (H.264 through PyAV, when installed) per sample, a PNG
grid of frames (rows = samples), and latents.npz (`arr_0`, the float32 latents as sampled).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from flexcli.errors import FlexcliError

TEMPORAL_COMPRESSION = 4  # AutoencoderKLWan scale_factor_temporal
SPATIAL_COMPRESSION = 8  # AutoencoderKLWan scale_factor_spatial
WAN_FPS = 16  # Wan 2.1 sample_fps (wan/configs/shared_config.py); diffusers' examples export at fps=16
_VAE_FIX = "pass --vae DIR: a local AutoencoderKLWan folder (the vae/ of a Wan diffusers pipeline, or the pipeline)"


def _around(value: int, step: int, first: int) -> str:
    """The valid values nearest `value` on the lattice first, first + step, ... ("77 or 85", or one value)."""
    below = first + (value - first) // step * step
    options = [v for v in (below, below + step) if v >= first]
    return " or ".join(str(v) for v in options)


def check_video_shape(frames: int, height: int, width: int, patch_sizes, *,
                      temporal_compression: int = TEMPORAL_COMPRESSION,
                      spatial_compression: int = SPATIAL_COMPRESSION) -> tuple[int, int, int]:
    """The latent (frames, height, width) of a video, after checking that the VAE and every patch size in
    `patch_sizes` ((p_t, p_h, p_w) tuples) tile it; else a one-line FlexcliError naming the nearest valid values."""
    patch_sizes = [tuple(int(p) for p in ps) for ps in patch_sizes]
    if not patch_sizes or any(len(ps) != 3 or min(ps) < 1 for ps in patch_sizes):
        raise ValueError(f"patch_sizes must be (p_t, p_h, p_w) tuples of positive integers, got {patch_sizes}")
    for flag, value in (("--frames", frames), ("--height", height), ("--width", width)):
        if value < 1:
            raise FlexcliError(f"{flag} {value} is not a positive number", f"pass a positive {flag}")
    p_t, p_h, p_w = (math.lcm(*(ps[axis] for ps in patch_sizes)) for axis in range(3))
    tc, names = temporal_compression, ", ".join(str(ps) for ps in patch_sizes)
    latent_step = tc * p_t  # valid frame counts: 1 + tc * (L - 1) with L a multiple of p_t
    first_valid = 1 + tc * (p_t - 1)
    if (frames - 1) % tc:
        raise FlexcliError(f"--frames {frames} is not 4k+1 (the video VAE keeps frame 1, then compresses {tc} "
                           f"frames into one)", f"use --frames {_around(frames, latent_step, first_valid)}")
    latent_frames = (frames - 1) // tc + 1
    if latent_frames % p_t:
        raise FlexcliError(f"--frames {frames} gives {latent_frames} latent frames, not a multiple of the temporal "
                           f"patch {p_t} of {names}", f"use --frames {_around(frames, latent_step, first_valid)}")
    latent_hw = []
    for flag, value, p in (("--height", height, p_h), ("--width", width, p_w)):
        multiple = spatial_compression * p
        if value % multiple:
            why = f"{spatial_compression} for the VAE x patch {p}" if spatial_compression > 1 else f"patch {p}"
            raise FlexcliError(f"{flag} {value} is not a multiple of {multiple} ({why} of {names})",
                               f"use {flag} {_around(value, multiple, multiple)}")
        latent_hw.append(value // spatial_compression)
    return latent_frames, latent_hw[0], latent_hw[1]


def token_count(latent_shape: tuple[int, int, int], patch_size: tuple[int, int, int]) -> int:
    """Tokens of a (F, H, W) latent cut into patch_size patches."""
    if any(n % p for n, p in zip(latent_shape, patch_size)):
        raise ValueError(f"latent {tuple(latent_shape)} is not divisible by the patch {tuple(patch_size)}")
    return math.prod(n // p for n, p in zip(latent_shape, patch_size))


def decoded_frames(latent_frames: int, temporal_compression: int = TEMPORAL_COMPRESSION) -> int:
    return temporal_compression * (latent_frames - 1) + 1


# --------------------------------------------------------------------------------------------------
def _vae_folder(path) -> Path:
    if path is None or str(path) == "":
        raise FlexcliError("decoding Wan latents needs the video VAE and none was given", _VAE_FIX)
    folder = Path(path)
    if not folder.is_dir():
        raise FlexcliError(f"--vae {folder} is not a folder", _VAE_FIX)
    if (folder / "model_index.json").is_file() and (folder / "vae").is_dir():
        folder = folder / "vae"
    config = folder / "config.json"
    if not config.is_file():
        raise FlexcliError(f"--vae {path} has no config.json", _VAE_FIX)
    try:
        kind = json.loads(config.read_text()).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise FlexcliError(f"--vae {path}: config.json is not readable JSON", _VAE_FIX) from e
    if kind != "AutoencoderKLWan":
        raise FlexcliError(f"--vae {path} holds a {kind}, not the Wan video VAE (AutoencoderKLWan)", _VAE_FIX)
    return folder


def load_wan_vae(path, device="cpu"):
    """diffusers `AutoencoderKLWan` from a local folder (safetensors only, nothing downloads), float32, eval."""
    from diffusers import AutoencoderKLWan

    folder = _vae_folder(path)
    try:
        vae = AutoencoderKLWan.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a user error about this path
        raise FlexcliError(f"--vae {path} could not be loaded as AutoencoderKLWan ({type(e).__name__})",
                           _VAE_FIX) from e
    return vae.to(device=device, dtype=torch.float32).eval()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """(B, z_dim, F, H, W) normalised latents -> (B, 4 (F - 1) + 1, 8 H, 8 W, 3) uint8 frames, one sample at a
    time. As WanPipeline: z * latents_std + latents_mean, decode, then diffusers' VideoProcessor pixels
    round(255 * clamp(x / 2 + 1/2, 0, 1))."""
    cfg = vae.config
    if latents.dim() != 5 or latents.shape[1] != cfg.z_dim:
        raise ValueError(f"latents must be (B, {cfg.z_dim}, F, H, W), got {tuple(latents.shape)}")
    device = next(vae.parameters()).device
    mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=device).view(1, cfg.z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=device).view(1, cfg.z_dim, 1, 1, 1)
    videos = []
    for z in latents.split(1):
        video = vae.decode(z.to(device=device, dtype=torch.float32) * std + mean, return_dict=False)[0]
        pixels = ((video / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # (1, 3, F, H, W)
        videos.append(pixels.permute(0, 2, 3, 4, 1).cpu())  # (1, F, H, W, 3)
    return torch.cat(videos)


def clip_frames(clips: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) pixel-space clips in [-1, 1] (C = 1 or 3) -> (B, F, H, W, 3) uint8 frames."""
    pixels = torch.clamp(127.5 * clips + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)
    return pixels.expand(*pixels.shape[:-1], 3).contiguous() if pixels.shape[-1] == 1 else pixels.contiguous()


# --------------------------------------------------------------------------------------------------
def write_gif(frames, path: str | Path, fps: int = WAN_FPS) -> Path:
    """(F, H, W, 3) uint8 frames -> an endlessly looping GIF (Pillow; each frame quantised to 256 colours)."""
    from PIL import Image

    frames = np.asarray(frames)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return Path(path)


def write_mp4(frames, path: str | Path, fps: int = WAN_FPS, crf: int = 18) -> Path:
    """(F, H, W, 3) uint8 frames (H, W even) -> H.264 MP4 (yuv420p) through PyAV's bundled FFmpeg."""
    try:
        import av
    except ImportError as e:
        raise FlexcliError("writing MP4 needs PyAV (the av package), which is not installed",
                           "pip install av, or write GIFs only") from e
    frames = np.asarray(frames)
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 in yuv420p needs an even height and width, got {frames.shape[1:3]}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return Path(path)


def mp4_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def frame_grid(videos, max_frames: int = 8, padding: int = 2) -> np.ndarray:
    """(B, F, H, W, 3) uint8 -> one image: a row per sample, up to `max_frames` evenly spaced frames per row."""
    videos = np.asarray(videos)
    n, f, h, w, _ = videos.shape
    picks = np.unique(np.linspace(0, f - 1, min(f, max_frames)).round().astype(int))
    grid = np.zeros((padding + n * (h + padding), padding + len(picks) * (w + padding), 3), dtype=np.uint8)
    for row in range(n):
        for col, idx in enumerate(picks):
            top, left = padding + row * (h + padding), padding + col * (w + padding)
            grid[top:top + h, left:left + w] = videos[row, idx]
    return grid


def write_video_outputs(folder: str | Path, videos: torch.Tensor, latents: torch.Tensor | None = None,
                        fps: int = WAN_FPS, mp4: bool = True) -> dict[str, list[Path]]:
    """Write sample_000000.gif (+ .mp4), grid.png and latents.npz into an existing folder; returns the paths."""
    from PIL import Image

    folder = Path(folder)
    arr = videos.numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos)
    written: dict[str, list[Path]] = {"gif": [], "mp4": [], "grid": [], "latents": []}
    for i, video in enumerate(arr):
        written["gif"].append(write_gif(video, folder / f"sample_{i:06d}.gif", fps))
        if mp4:
            written["mp4"].append(write_mp4(video, folder / f"sample_{i:06d}.mp4", fps))
    Image.fromarray(frame_grid(arr)).save(folder / "grid.png")
    written["grid"].append(folder / "grid.png")
    if latents is not None:
        np.savez(folder / "latents.npz", arr_0=latents.detach().float().cpu().numpy())
        written["latents"].append(folder / "latents.npz")
    return written
