"""Video forward rows of `flexcli profile` (issue #14): 3-D latents (F x H x W) and 3-D patch sizes.

A Wan config by name (`--model Wan2.1-T2V-1.3B`, with --depth/--width/--heads overrides; a width override keeps
Wan's head_dim 128 unless --heads is given: --depth 24 --width 2048 is the paper's Fig. 9 shape with 16 heads)
or a Wan checkpoint. Rows:
* `--patch-sizes 1x2x2,2x2x2,1x4x4`: each must tile the latent;
* `--seq-lengths 33792,16896,8448`: each must be the token count of a patch (p_t, p_s, p_s) that tiles the latent
  with p_s at least the model's spatial patch; among patches of one token count the one with the smallest p_t
  is taken (16 cells: (1, 4, 4), not (4, 2, 2));
* neither: the model's patch size and (1, 2p, 2p) (a checkpoint: its own sizes).
The latent is `--latent FxHxW` (default Wan's 480p clip of 81 frames: 21x60x104; with a checkpoint the family's
latent every video size tiles, 20x60x104). The paper's T2V latent is 32x88x48 (App. C, Fig. 9): 33792, 16896
and 8448 tokens at (1, 2, 2), (2, 2, 2) and (1, 4, 4). Costs are `flexcli.compute.forward_cost` with the
cross-attention over the config's `text_len` (512) umT5 tokens and the text projection counted.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from flexcli.errors import FlexcliError
from flexcli.flex.patches import label

WAN_480P_81 = (21, 60, 104)  # 480x832 pixels, 81 frames: the video VAE's (4, 8, 8) compression


@dataclass(frozen=True)
class VideoShape:
    patch_size: tuple  # (p_t, p_h, p_w)
    frames: int  # latent frames, height and width
    height: int
    width: int

    @property
    def spatial(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def tokens(self) -> int:
        return math.prod(s // p for s, p in zip(self.spatial, self.patch_size))

    @property
    def latent(self) -> str:
        return "x".join(map(str, self.spatial))

    @property
    def label(self) -> str:
        return label(self.patch_size)

    def example_inputs(self, cfg, batch: int, generator: torch.Generator, device, dtype):
        """Random latents, timesteps in (0, 1000] and a full-length random text, as a sampling step sees them."""
        from flexcli.flex.conditions import TextCondition

        x = torch.randn(batch, cfg.in_channels, *self.spatial, generator=generator).to(device, dtype)
        t = (torch.rand(batch, generator=generator) * 1000).to(device)
        text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=generator).to(device, dtype)
        return x, t, TextCondition(text, torch.ones(batch, cfg.text_len, dtype=torch.long, device=device))


def is_video_model(name: str | None) -> bool:
    from flexcli.models.wan_config import NAMED_CONFIGS

    return name is not None and name in NAMED_CONFIGS


def video_config(spec):
    """The named Wan config with the depth/width/heads overrides."""
    from flexcli.models.wan_config import named_wan_config

    cfg = named_wan_config(spec.model)
    for name, value in (("--depth", spec.depth), ("--width", spec.width), ("--heads", spec.heads)):
        if value is not None and value <= 0:
            raise FlexcliError(f"{name} {value} is not positive", f"pass a positive {name}")
    width = spec.width or cfg.hidden_size
    keep_head_dim = spec.heads is None and width % cfg.attention_head_dim == 0
    heads = spec.heads or (width // cfg.attention_head_dim if keep_head_dim else cfg.num_attention_heads)
    if width % heads or (width // heads) % 2 or width // heads < 6:
        raise FlexcliError(f"width {width} does not split into {heads} even heads of at least 6 dims",
                           "pass --heads that divides --width into an even head size (Wan: 128)")
    return dataclasses.replace(cfg, num_layers=spec.depth or cfg.num_layers, num_attention_heads=heads,
                               attention_head_dim=width // heads)


def parse_video_latent(text: str | None, default: tuple) -> tuple[int, int, int]:
    if text is None:
        return tuple(default)
    parts = str(text).lower().replace(" ", "").split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise FlexcliError(f"--latent '{text}' is not a video latent FxHxW", "e.g. --latent 21x60x104 (480p, 81 "
                           "frames) or 32x88x48 (the paper's T2V latent)")
    return tuple(int(p) for p in parts)


def _tiles(latent: tuple, p: tuple) -> bool:
    return all(s % q == 0 for s, q in zip(latent, p))


def _fix(latent: tuple, p: tuple) -> str:
    f, h, w = latent
    options = sorted({f - f % p[0], f - f % p[0] + p[0]} - {0})
    return "use --latent " + " or ".join(f"{n}x{h}x{w}" for n in options) if not _tiles((f,), (p[0],)) else \
        "use a latent whose height and width the spatial patch divides"


def plan_video_shapes(spec, latent: tuple, base: tuple, allowed: list | None) -> list[VideoShape]:
    """The (patch size, latent) of every row; `allowed` is a checkpoint's patch sizes (None: any)."""
    from flexcli.flex.patches import parse_patch

    if spec.patch_sizes and spec.seq_lengths:
        raise FlexcliError("--patch-sizes and --seq-lengths both given", "pass one of them")
    if spec.fit_latent:
        raise FlexcliError("--fit-latent sizes 2-D latents", "give a video latent with --latent FxHxW")
    if spec.seq_lengths:
        patches = [_patch_for(s, latent, base, allowed) for s in spec.seq_lengths]
    elif spec.patch_sizes:
        patches = [parse_patch(p, 3, "--patch-sizes") for p in spec.patch_sizes]
    else:
        patches = list(allowed) if allowed is not None else [base, (base[0], 2 * base[1], 2 * base[2])]
    for p in patches:
        if allowed is not None and p not in allowed:
            raise FlexcliError(f"the checkpoint does not run at patch size {label(p)}",
                               f"choose from its patch sizes {', '.join(label(q) for q in allowed)}")
        if not _tiles(latent, p):
            raise FlexcliError(f"patch size {label(p)} does not tile the {'x'.join(map(str, latent))} latent",
                               _fix(latent, p))
    return [VideoShape(tuple(p), *latent) for p in patches]


def _patch_for(tokens: int, latent: tuple, base: tuple, allowed: list | None) -> tuple:
    f, h, w = latent
    candidates = allowed or [(pt, ps, ps) for pt in range(1, f + 1) for ps in range(base[1], min(h, w) + 1)]
    by_tokens: dict[int, tuple] = {}
    for p in sorted(candidates):  # smallest p_t first: it wins a tie
        if _tiles(latent, p):
            by_tokens.setdefault(VideoShape(p, *latent).tokens, p)
    if tokens not in by_tokens:
        have = ", ".join(f"{label(p)}: {n}" for n, p in sorted(by_tokens.items(), reverse=True)[:6])
        raise FlexcliError(f"sequence length {tokens} is not given by any patch size of the "
                           f"{'x'.join(map(str, latent))} latent (tokens {have})",
                           "choose one of those or set --latent FxHxW")
    return by_tokens[tokens]


def random_wan(cfg, shape: VideoShape, device: torch.device, seed: int):
    """A Wan with random weights whose own patch size is the row's (meta device: shapes only, no memory)."""
    from flexcli.models.wan import Wan

    torch.manual_seed(seed)
    with torch.device(device):
        model = Wan(dataclasses.replace(cfg, patch_size=shape.patch_size))
    if device.type != "meta":
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, 0.02)
    return model.eval()
