"""Training data as tensors: (N, C, H, W) float32 latents (or pixels in [-1, 1]) and (N,) int64 labels.

Sources (`load_training_data(spec, config, ...)`):
* a named set `NAME[:variant]` from `flexcli.registry.TRAINING_DATA`: the built-in `fashion-mnist` (`:train` or
  `:test`, pixel-space models with in_channels 1; see flexcli.builtin.fashion_mnist).
* latent shards: a `.safetensors` or `.npz` file, or a folder of them, each holding `latents` (N, C, H, W) and
  optionally `labels` (N,) (missing labels -> the null class).
* an image folder (class subfolders give the labels in sorted order; images directly in the folder get the null
  class): pixel-space models take the images directly; latent models need `--vae PATH`, a local diffusers
  AutoencoderKL folder. Images are centre-cropped and resized to input_size x VAE factor, encoded once with the
  posterior *mean* times 0.18215 (the SD-VAE scale DiT uses) and cached in `cache_dir`, keyed by the file list,
  sizes, mtimes and the VAE path.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flexcli import registry
from flexcli.errors import FlexcliError

VAE_SCALE = 0.18215
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SHARD_SUFFIXES = {".safetensors", ".npz"}


@dataclass
class TensorData:
    latents: torch.Tensor  # (N, C, H, W) float32
    labels: torch.Tensor  # (N,) int64; num_classes = the null class
    source: str

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self), "shape": list(self.latents.shape[1:])}


# --------------------------------------------------------------------------------------------------
def _load_shard(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        else:
            from safetensors.torch import load_file
            arrays = load_file(str(path))
    except Exception as e:
        raise FlexcliError(f"cannot read latent shard {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                           "pass .safetensors/.npz files holding 'latents' and 'labels'") from e
    if "latents" not in arrays:
        raise FlexcliError(f"latent shard {path} has no 'latents' array (has {', '.join(sorted(arrays)) or 'nothing'})",
                           "store the latents under the key 'latents' and the labels under 'labels'")
    return arrays["latents"].float(), arrays.get("labels")


def _shard_data(files: list[Path], config, source: str) -> TensorData:
    xs, ys = [], []
    for f in files:
        x, y = _load_shard(f)
        if y is None:
            y = torch.full((x.shape[0],), config.num_classes, dtype=torch.int64)
        if y.shape[:1] != x.shape[:1]:
            raise FlexcliError(f"{f} holds {x.shape[0]} latents but {y.shape[0]} labels", "store one label per latent")
        xs.append(x)
        ys.append(y.long().reshape(-1))
    return TensorData(torch.cat(xs), torch.cat(ys), source)


def _image_files(folder: Path) -> tuple[list[Path], list[int | None], list[str]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            files.append(f)
            labels.append(None)
    for i, c in enumerate(classes):
        for f in sorted((folder / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    return files, labels, classes


def _load_images(files: list[Path], side: int, mode: str) -> torch.Tensor:
    """Centre-crop to a square, resize to side x side (bicubic), scale to [-1, 1] -> (N, C, side, side)."""
    from PIL import Image

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((side, side), Image.BICUBIC)
                a = np.asarray(im, dtype=np.float32)
        except Exception as e:
            raise FlexcliError(f"cannot read image {f} ({type(e).__name__})", "remove or fix the file") from e
        out.append(torch.from_numpy(a.reshape(side, side, -1)).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)


def _vae_latents(files: list[Path], vae_path: Path, config, cache_dir: Path | None, batch: int = 8) -> torch.Tensor:
    if not vae_path.exists():
        raise FlexcliError(f"--vae {vae_path} not found", "pass a local diffusers AutoencoderKL folder")
    try:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(str(vae_path)).eval()
    except Exception as e:
        raise FlexcliError(f"--vae {vae_path} is not a diffusers AutoencoderKL folder ({type(e).__name__})",
                           "pass a folder with config.json and diffusion_pytorch_model.safetensors") from e
    if vae.config.latent_channels != config.in_channels:
        raise FlexcliError(f"the VAE makes {vae.config.latent_channels}-channel latents, the checkpoint expects "
                           f"{config.in_channels}", "pass the VAE the DiT was trained with")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side = config.input_size * factor
    h = hashlib.sha256(f"{vae_path.resolve()}|{side}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = Path(cache_dir) / f"latents-{h.hexdigest()[:16]}.safetensors" if cache_dir is not None else None
    if cache is not None and cache.exists():
        from safetensors.torch import load_file
        return load_file(str(cache))["latents"]
    mode = "RGB" if vae.config.in_channels == 3 else "L"
    chunks = []
    with torch.no_grad():
        for i in range(0, len(files), batch):
            x = _load_images(files[i:i + batch], side, mode)
            chunks.append(vae.encode(x).latent_dist.mean * VAE_SCALE)
    latents = torch.cat(chunks).float().contiguous()
    if cache is not None:
        from safetensors.torch import save_file
        from flexcli.io.atomic import atomic_path
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save_file({"latents": latents}, str(tmp))
    return latents


def _folder_data(folder: Path, config, vae: Path | None, cache_dir: Path | None) -> TensorData:
    shards = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in SHARD_SUFFIXES)
    if shards:
        return _shard_data(shards, config, f"latent shards in {folder}")
    files, labels, classes = _image_files(folder)
    if not files:
        raise FlexcliError(f"data folder {folder} is empty (no images and no .safetensors/.npz latent shards)",
                           "put images (optionally in class subfolders) or latent shards there")
    if len(classes) > config.num_classes:
        raise FlexcliError(f"{folder} has {len(classes)} class folders but the checkpoint knows {config.num_classes} classes",
                           "use at most num_classes class folders")
    y = torch.tensor([config.num_classes if lab is None else lab for lab in labels], dtype=torch.int64)
    if vae is not None:
        x = _vae_latents(files, Path(vae), config, cache_dir)
        return TensorData(x, y, f"images in {folder} encoded by {vae}")
    if config.in_channels in (1, 3):
        x = _load_images(files, config.input_size, "L" if config.in_channels == 1 else "RGB")
        return TensorData(x, y, f"images in {folder} (pixel space)")
    raise FlexcliError(f"the image folder {folder} needs --vae to encode images into the checkpoint's "
                       f"{config.in_channels}-channel latents", "pass --vae PATH (a local diffusers AutoencoderKL folder)")


def _check_fits(data: TensorData, config) -> TensorData:
    shape = tuple(data.latents.shape[1:])
    want = (config.in_channels, config.input_size, config.input_size)
    if data.latents.dim() != 4 or shape != want:
        raise FlexcliError(f"the latents have shape {tuple(data.latents.shape)}, which does not fit the checkpoint "
                           f"(it expects (N, {', '.join(map(str, want))}))",
                           "encode the data with the VAE and image size the model was trained with")
    bad = (data.labels < 0) | (data.labels > config.num_classes)
    if bool(bad.any()):
        raise FlexcliError(f"labels must lie in 0..{config.num_classes} (num_classes = null class); found "
                           f"{int(data.labels[bad][0])}", "relabel the data")
    if not torch.isfinite(data.latents).all():
        raise FlexcliError(f"the data from {data.source} holds NaN or inf values", "re-encode the data")
    return data


def load_training_data(spec: str | Path, config, vae: str | Path | None = None,
                       cache_dir: str | Path | None = None, limit: int | None = None) -> TensorData:
    """Load `spec` (see the module docstring) for a model with `config`; checks shapes and labels."""
    name, _, variant = str(spec).partition(":")
    if name in registry.TRAINING_DATA:
        data = registry.load(registry.TRAINING_DATA[name])(config, variant or None)
    else:
        path, named = Path(spec), ", ".join(registry.TRAINING_DATA)
        if vae is not None and not Path(vae).exists():
            raise FlexcliError(f"--vae {vae} not found", "pass a local diffusers AutoencoderKL folder")
        if not path.exists():
            raise FlexcliError(f"data {path} not found", f"pass a folder, a latent shard or one of: {named}")
        if path.is_dir():
            data = _folder_data(path, config, Path(vae) if vae else None, cache_dir)
        elif path.suffix in SHARD_SUFFIXES:
            data = _shard_data([path], config, f"latent shard {path}")
        else:
            raise FlexcliError(f"data {path} is neither a folder nor a .safetensors/.npz latent shard",
                               f"pass a folder of images or shards, a shard file, or one of: {named}")
    if limit is not None and limit > 0:
        data = TensorData(data.latents[:limit], data.labels[:limit], data.source + f" (first {limit})")
    return _check_fits(data, config)
