"""Checks of video training data (Wan, issue #14): latent shards read by `flexcli.data.text_data` hold
(N, C, F, H, W) video-VAE latents (normalised as WanPipeline does: (z - latents_mean) / latents_std) with one
caption embedding per clip; the latent frames, height and width must be tiled by every patch size trained."""
from __future__ import annotations

import torch

from flexcli.errors import FlexcliError


def check_video_latents(data, config, patch_sizes: list):
    """`data` (a `TextData`) checked against a video model's config and the patch sizes it will run at."""
    shape = tuple(data.latents.shape)
    if data.latents.dim() != 5 or shape[1] != config.in_channels:
        raise FlexcliError(f"the latents have shape {shape}, which does not fit the checkpoint (it expects "
                           f"(N, {config.in_channels}, F, H, W) video latents)",
                           "encode the clips with the model's video VAE (AutoencoderKLWan)")
    for p in patch_sizes:
        if any(s % q for s, q in zip(shape[2:], p)):
            raise FlexcliError(f"the latents have shape {shape}, which the patch size {'x'.join(map(str, p))} "
                               f"does not tile (F x H x W = {'x'.join(map(str, shape[2:]))})",
                               "encode clips whose latent frames, height and width every trained patch divides "
                               "(e.g. 77 frames: 20 latent frames)")
    # clips rendered when indexed (the built-in moving-fashion-mnist) are not a tensor, and finite by construction
    if isinstance(data.latents, torch.Tensor) and not torch.isfinite(data.latents).all():
        raise FlexcliError(f"the data from {data.source} holds NaN or inf values", "re-encode the data")
    return data
