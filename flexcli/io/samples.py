"""The output folder of `flexcli sample`: latents -> images (VAE or pixel space), PNGs, grid, samples.npz, run.json.

Pixels follow DiT's sample_ddp.py: clamp(127.5 x + 128, 0, 255) as uint8 NHWC; `samples.npz` holds them under
`arr_0`, as the ADM evaluator reads it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from flexcli.errors import FlexcliError

VAE_SCALE = 0.18215


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> uint8 NHWC with DiT's sample_ddp conversion clamp(127.5 x + 128, 0, 255)."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def load_vae(path: str, device):
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any load failure is a user error about this path
        raise FlexcliError(f"--vae {path} is not a diffusers AutoencoderKL folder ({type(e).__name__})",
                           "pass a folder saved with AutoencoderKL.save_pretrained") from e
    return vae.to(device).eval()


@torch.no_grad()
def decode(latents: torch.Tensor, vae, device, batch: int = 16) -> torch.Tensor:
    outs = []
    for i in range(0, len(latents), batch):
        z = latents[i:i + batch].to(device=device, dtype=torch.float32)
        outs.append(to_uint8(vae.decode(z / VAE_SCALE).sample.float()).cpu())
    return torch.cat(outs)


def write_images(folder: Path, indices: list[int], images: torch.Tensor) -> None:
    from PIL import Image

    for i, img in zip(indices, images.numpy()):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:06d}.png")


def finalize_folder(tmp: Path, n: int, record: dict, latents: torch.Tensor | None, has_images: bool) -> None:
    import numpy as np
    from PIL import Image
    from torchvision.utils import make_grid

    if has_images:
        arr = np.stack([np.array(Image.open(tmp / f"{i:06d}.png")) for i in range(n)])
        if arr.ndim == 3:
            arr = arr[..., None]
        np.savez(tmp / "samples.npz", arr_0=arr)
        shown = torch.from_numpy(arr[:64]).permute(0, 3, 1, 2)
        grid = make_grid(shown, nrow=int(np.ceil(np.sqrt(len(shown)))), padding=2, pad_value=0)
        g = grid.permute(1, 2, 0).numpy()
        Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(tmp / "grid.png")
    if latents is not None:
        np.savez(tmp / "latents.npz", arr_0=latents.numpy())
    (tmp / "run.json").write_text(json.dumps(record, indent=2))
