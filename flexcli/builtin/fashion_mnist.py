"""Fashion-MNIST, the built-in default's data: the Debian package `dataset-fashion-mnist`, read without a download.

The files are /usr/share/datasets/fashion-mnist/*-idx*-ubyte.gz (another folder with FLEXCLI_FASHION_MNIST).
Models see the 28x28 images scaled to [-1, 1], padded with the background value -1 to the model's input size
when it is 28 or more (32x32: 2 pixels each side), or area-resized down when it is smaller (16x16).

`training_data` is the named training set `fashion-mnist[:split]` of `flexcli distill` (through flexcli.registry).
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexcli.data import TensorData
from flexcli.errors import FlexcliError

FASHION_MNIST_DIR = Path(os.environ.get("FLEXCLI_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str = "train", root: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) int64 labels of Fashion-MNIST from the Debian package."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    images, labels = _fashion_mnist_cached(str(root), split)
    return images.clone(), labels.clone()


@functools.lru_cache(maxsize=4)
def _fashion_mnist_cached(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(root)
    images, labels = (root / name for name in FASHION_MNIST_FILES[split])
    missing = [f.name for f in (images, labels) if not f.exists()]
    if missing:
        raise FlexcliError(f"Fashion-MNIST not found in {root} (missing {missing[0]})",
                           "install it with: apt-get install dataset-fashion-mnist")
    return torch.from_numpy(_read_idx(images).copy()), torch.from_numpy(_read_idx(labels).astype(np.int64))


def to_model_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) images in [-1, 1] -> (N, C, size, size): pad with -1 when larger, area-resize when smaller."""
    h, w = images.shape[-2:]
    if size >= max(h, w):
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top), value=-1.0)
    return F.interpolate(images, size=(size, size), mode="area")


def model_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 28, 28) uint8 images -> (N, 1, size, size) float pixels in [-1, 1], as the models see them."""
    return to_model_size(images.float().unsqueeze(1) / 127.5 - 1.0, size)


def training_data(config, split: str | None = None) -> TensorData:
    """The named training set `fashion-mnist[:split]` (split: train, the default, or test) for a model `config`."""
    split = split or "train"
    if split not in FASHION_MNIST_FILES:
        raise FlexcliError(f"unknown fashion-mnist split '{split}'", "use fashion-mnist:train or fashion-mnist:test")
    if config.in_channels != 1:
        raise FlexcliError(f"fashion-mnist is 1-channel pixel data, but the checkpoint expects "
                           f"{config.in_channels} channels", "pass latent shards or an image folder with --vae instead")
    images, labels = fashion_mnist(split)
    return TensorData(model_pixels(images, config.input_size).contiguous(), labels, f"fashion-mnist:{split}")
