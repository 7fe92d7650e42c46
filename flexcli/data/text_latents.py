"""Video latents with their prompt embeddings, for distilling text-conditional video models (Wan, issue #14).

Shards: `.safetensors` or `.npz` files (or a folder of them), each holding
* `latents` (N, C, F, H, W) float: normalised video-VAE latents, as the transformer denoises them;
* `prompt_embeds` (N, L, C_text) float: the umT5 states of each clip's caption (zero where padded), and
  `prompt_attention_mask` (N, L) of 0/1 (optional: all ones);
* optionally `negative_prompt_embeds` (1, L', C_text) and `negative_prompt_attention_mask` (1, L'): the null
  caption ("" encoded) that guidance contrasts with; with it, captions are dropped to it during distillation
  (probability `label_dropout`, default 0.1) so the weak mode also learns the unconditional branch.
Shards may hold different caption lengths: they are zero-padded (mask 0) to the longest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flexcli.errors import FlexcliError

SUFFIXES = {".safetensors", ".npz"}
_FORMAT = ("store 'latents' (N, C, F, H, W), 'prompt_embeds' (N, L, C_text) and 'prompt_attention_mask' (N, L) "
           "in .safetensors/.npz shards")


@dataclass
class TextLatentData:
    latents: torch.Tensor  # (N, C, F, H, W) float32
    embeds: torch.Tensor  # (N, L, C_text) float32
    mask: torch.Tensor  # (N, L) int64
    negative: tuple[torch.Tensor, torch.Tensor] | None  # ((1, L', C_text), (1, L')) or None
    source: str

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self), "shape": list(self.latents.shape[1:]),
                "text_tokens": int(self.embeds.shape[1]), "negative_prompt": self.negative is not None}


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        from safetensors.torch import load_file
        return load_file(str(path))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FlexcliError(f"cannot read latent shard {path} ({reason})", _FORMAT) from e


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, n - x.shape[1])) if x.dim() == 3 else F.pad(x, (0, n - x.shape[1]))


def _shard(path: Path) -> tuple:
    a = _read(path)
    missing = [k for k in ("latents", "prompt_embeds") if k not in a]
    if missing:
        raise FlexcliError(f"latent shard {path} has no '{missing[0]}' (has {', '.join(sorted(a)) or 'nothing'})",
                           _FORMAT)
    x, e = a["latents"].float(), a["prompt_embeds"].float()
    m = a.get("prompt_attention_mask", torch.ones(e.shape[:2])).long()
    if e.dim() != 3 or e.shape[0] != x.shape[0] or tuple(m.shape) != tuple(e.shape[:2]):
        raise FlexcliError(f"{path} holds {x.shape[0]} latents but prompt embeddings {tuple(e.shape)} and mask "
                           f"{tuple(m.shape)}", "store one (L, C_text) caption and one (L,) mask per latent")
    neg = None
    if "negative_prompt_embeds" in a:
        ne = a["negative_prompt_embeds"].float()[:1]
        neg = (ne, a.get("negative_prompt_attention_mask", torch.ones(ne.shape[:2])).long()[:1])
    return x, e, m, neg


def load_text_latents(spec: str | Path, config, patch_sizes: list, limit: int | None = None) -> TextLatentData:
    """Shards (a file or a folder of them) for a video model with `config`, checked against it and against
    every patch size that will be trained; one-line FlexcliError on bad input."""
    path = Path(spec)
    if not path.exists():
        raise FlexcliError(f"data {path} not found", "pass a latent shard (.safetensors/.npz) or a folder of them")
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in SUFFIXES) if path.is_dir() else [path]
    if not files or files[0].suffix not in SUFFIXES:
        raise FlexcliError(f"data {path} holds no .safetensors/.npz latent shards", _FORMAT)
    parts = [_shard(f) for f in files]
    L = max(e.shape[1] for _, e, _, _ in parts)
    shapes = {tuple(x.shape[1:]) for x, *_ in parts}
    if len(shapes) > 1:
        raise FlexcliError(f"the shards in {path} hold latents of different shapes {sorted(shapes)}",
                           "store one clip size per run")
    data = TextLatentData(torch.cat([x for x, *_ in parts]), torch.cat([_pad(e, L) for _, e, _, _ in parts]),
                          torch.cat([_pad(m, L) for _, _, m, _ in parts]), next((n for *_, n in parts if n), None),
                          f"latent shards in {path}" if path.is_dir() else f"latent shard {path}")
    if limit is not None and limit > 0:
        data = TextLatentData(data.latents[:limit], data.embeds[:limit], data.mask[:limit], data.negative,
                              data.source + f" (first {limit})")
    return check_text_latents(data, config, patch_sizes)


def check_text_latents(data: TextLatentData, config, patch_sizes: list) -> TextLatentData:
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
    if data.embeds.shape[-1] != config.text_dim:
        raise FlexcliError(f"the prompt embeddings are {data.embeds.shape[-1]}-wide but the model's text_dim is "
                           f"{config.text_dim}", "encode the captions with the model's own text encoder (umT5)")
    if not torch.isfinite(data.latents).all() or not torch.isfinite(data.embeds).all():
        raise FlexcliError(f"the data from {data.source} holds NaN or inf values", "re-encode the data")
    if math.prod(shape) == 0 or not bool((data.mask.sum(1) > 0).all()):
        raise FlexcliError(f"the data from {data.source} is empty or has a caption with no unmasked token",
                           "re-encode the data")
    return data
