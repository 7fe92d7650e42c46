"""Small flexified checkpoints and latent shards for the distill tests (seeded, CPU, seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import random_dit
from flexcli.flex.core import flexify_model
from flexcli.io.checkpoint import save_checkpoint
from flexcli.train import DistillConfig


def tiny_flex(path: Path, mode: str = "lora", weak=(4,), rank: int = 4, seed: int = 0, in_channels: int = 4) -> Path:
    """DiT-Tiny/2 (16x16 latents with 4 channels, or pixels with 1, 10 classes), random weights, flexified."""
    model = random_dit("DiT-Tiny/2", seed=seed, in_channels=in_channels)
    flexify_model(model, list(weak), mode, rank)
    return save_checkpoint(model, path)


def latent_shard(path: Path, n: int = 64, shape=(4, 16, 16), seed: int = 0, classes: int = 10) -> Path:
    g = np.random.default_rng(seed)
    np.savez(path, latents=g.standard_normal((n, *shape)).astype(np.float32),
             labels=g.integers(0, classes, n).astype(np.int64))
    return path


def quick_config(data: Path, **kw) -> DistillConfig:
    base = dict(data=str(data), steps=6, batch_size=8, lr=1e-3, ema_decay=0.99, ckpt_every=2, grad_clip=1.0)
    base.update(kw)
    return DistillConfig(**base)

