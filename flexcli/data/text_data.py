"""Image + caption training data for text-to-image families (`flexcli distill` on a PixArt).

Sources (`load_text_data(spec, model, ...)`):
* an image folder with `metadata.jsonl`, one JSON object a line with `file_name` (relative to the folder) and
  `text` (the caption), as Hugging Face's imagefolder reads it. Every image needs a caption. Images are encoded
  once by the local VAE (`--vae`, posterior mean x 0.18215, as for DiT) and the captions once by the local text
  encoder (`--text-encoder DIR` or `minilm`, padded to the model's caption length); both are cached in
  `cache_dir`, keyed by the files / the encoder's content hash and the captions.
* latent shards (`.safetensors`, a file or a folder of them) with `latents` (N, C, H, W), `prompt_embeds`
  (N, L, C_text) and `prompt_attention_mask` (N, L), optionally `negative_prompt_embeds` / `..._mask` (1, L, C_text):
  the encoded empty caption.

The null caption that caption dropout substitutes (classifier-free guidance training, at the model's rate
`class_dropout_prob`) is the model's learned `y_embedding` (with the caption's own mask, as PixArt trains) or,
for checkpoints without one, the encoded empty caption (from the shards, or encoded with the text encoder).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from flexcli.errors import FlexcliError
from flexcli.flex.conditions import TextCondition

_FORMAT = ("an image folder with metadata.jsonl (file_name, text) or .safetensors shards with latents, "
           "prompt_embeds and prompt_attention_mask")


@dataclass
class TextData:
    latents: torch.Tensor  # (N, C, H, W) float32
    embeds: torch.Tensor  # (N, L, C_text) float32
    mask: torch.Tensor  # (N, L) int64, 1 keep / 0 padding
    null_embeds: torch.Tensor | None  # (L', C_text): the encoded empty caption (None: the model's learned one)
    null_mask: torch.Tensor | None  # (L',)
    source: str
    encoder: dict | None = None  # the text encoder's identity, when captions were encoded here
    index: torch.Tensor | None = None  # (N,) int64: image i has caption row index[i] (None: row i)

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self), "shape": list(self.latents.shape[1:]),
                "caption_tokens": int(self.embeds.shape[1]), "text_encoder": self.encoder}

    def conditions(self, idx: torch.Tensor) -> TextCondition:
        rows = idx if self.index is None else self.index[idx]
        return TextCondition(self.embeds[rows], self.mask[rows])

    def head(self, limit: int) -> "TextData":
        """The first `limit` images with their captions."""
        if self.index is not None:
            return dataclasses.replace(self, latents=self.latents[:limit], index=self.index[:limit],
                                       source=self.source + f" (first {limit})")
        return dataclasses.replace(self, latents=self.latents[:limit], embeds=self.embeds[:limit],
                                   mask=self.mask[:limit], source=self.source + f" (first {limit})")

    def dropped(self, idx: torch.Tensor, prob: float, generator: torch.Generator,
                learned: torch.Tensor | None) -> TextCondition:
        """The captions of `idx`, each replaced by the null caption with probability `prob` (one draw a row)."""
        cond = self.conditions(idx)
        drop = torch.rand(len(idx), generator=generator) < prob
        if not bool(drop.any()):
            return cond
        if learned is not None:
            null = learned[None].to(cond.embeds).expand(len(idx), -1, -1)
            return TextCondition(torch.where(drop[:, None, None], null, cond.embeds), cond.mask)
        null = TextCondition(self.null_embeds[None].expand(len(idx), -1, -1), self.null_mask[None].expand(len(idx), -1))
        both = TextCondition.cat([cond, null])  # padded to the longer of the two
        n = len(idx)
        return TextCondition(torch.where(drop[:, None, None], both.embeds[n:], both.embeds[:n]),
                             torch.where(drop[:, None], both.mask[n:], both.mask[:n]))


# ------------------------------------------------------------------------------------------------ captions
def read_captions(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, captions) of an imagefolder with metadata.jsonl; every image needs a caption."""
    from flexcli.data.datasets import IMAGE_SUFFIXES

    captions: dict[str, str] = {}
    for n, line in enumerate((folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[str(Path(row["file_name"]))] = str(row["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise FlexcliError(f"{folder / 'metadata.jsonl'} line {n} is not a JSON object with file_name and text",
                               'write one {"file_name": "a.png", "text": "a caption"} object a line') from e
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    names = [str(f.relative_to(folder)) for f in files]
    missing = [n for n in names if n not in captions]
    if missing:
        raise FlexcliError(f"captions missing for {len(missing)} of {len(names)} images in {folder} "
                           f"(e.g. {missing[0]})", "add a metadata.jsonl line with its file_name and text per image")
    absent = sorted(set(captions) - set(names))
    if absent:
        raise FlexcliError(f"{folder / 'metadata.jsonl'} names {len(absent)} images that are not there "
                           f"(e.g. {absent[0]})", "remove those lines or add the images")
    if not files:
        raise FlexcliError(f"{folder} holds no images", "put the images beside metadata.jsonl")
    return files, [captions[n] for n in names]


def _encode(encoder, prompts: list[str], cache_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode captions once: cached by the encoder's identity, its max_length and the captions."""
    h = hashlib.sha256(f"{encoder.identity_hash}|{encoder.max_length}".encode())
    for p in prompts:
        h.update(p.encode() + b"\0")
    cache = Path(cache_dir) / f"text-{h.hexdigest()[:16]}.safetensors" if cache_dir is not None else None
    if cache is not None and cache.exists():
        from safetensors.torch import load_file

        t = load_file(str(cache))
        return t["embeds"], t["mask"]
    enc = encoder.encode(prompts)
    if cache is not None:
        from safetensors.torch import save_file

        from flexcli.io.atomic import atomic_path

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            save_file({"embeds": enc.embeds.contiguous(), "mask": enc.mask.contiguous()}, str(tmp))
    return enc.embeds, enc.mask


def _text_encoder(model, text_encoder: str | None, why: str):
    from flexcli import text

    if text_encoder is None:
        raise FlexcliError(f"{why} needs a text encoder", "pass --text-encoder DIR (or minilm), or latent shards with "
                           "prompt_embeds and negative_prompt_embeds")
    if text_encoder == "minilm":
        return text.load_minilm(max_length=model.text_length)
    return text.load_t5_encoder(text_encoder, max_length=model.text_length)


# ------------------------------------------------------------------------------------------------ sources
def _image_folder(folder: Path, model, vae, text_encoder, cache_dir) -> TextData:
    from flexcli.data.datasets import _vae_latents

    files, captions = read_captions(folder)
    if vae is None:
        raise FlexcliError(f"the image folder {folder} needs --vae to encode images into the checkpoint's "
                           f"{model.config.in_channels}-channel latents", "pass --vae PATH (a local AutoencoderKL)")
    encoder = _text_encoder(model, text_encoder, f"encoding the captions of {folder}")
    embeds, mask = _encode(encoder, captions, cache_dir)
    null_embeds = null_mask = None
    if model.learned_null_caption() is None:
        e, m = _encode(encoder, [""], cache_dir)
        null_embeds, null_mask = e[0], m[0]
    latents = _vae_latents(files, Path(vae), model.config, cache_dir)
    return TextData(latents, embeds, mask, null_embeds, null_mask, f"images and captions in {folder} encoded by "
                    f"{vae} and {encoder.identity['kind']}", encoder.identity)


def _shards(files: list[Path], model, text_encoder, cache_dir) -> TextData:
    from flexcli.io.checkpoint import read_safetensors
    from flexcli.text import EMBEDS, MASK, NEG_EMBEDS, NEG_MASK, _checked

    parts, null = [], None
    for f in files:
        t, _ = read_safetensors(f)
        if "latents" not in t:
            raise FlexcliError(f"latent shard {f} has no 'latents'", f"pass {_FORMAT}")
        enc = _checked(f, t.get(EMBEDS), t.get(MASK), "caption", model.text_width)
        if len(enc) != t["latents"].shape[0]:
            raise FlexcliError(f"{f} holds {t['latents'].shape[0]} latents but {len(enc)} captions",
                               "store one caption embedding per latent")
        parts.append((t["latents"].float(), enc))
        if null is None and NEG_EMBEDS in t:
            null = _checked(f, t.get(NEG_EMBEDS), t.get(NEG_MASK), "negative caption", model.text_width)
    conds = TextCondition.cat([TextCondition(e.embeds, e.mask) for _, e in parts])
    null_embeds = null_mask = None
    if model.learned_null_caption() is None:
        if null is None:
            enc = _text_encoder(model, text_encoder, "the null caption (the shards carry no negative_prompt_embeds)")
            e, m = _encode(enc, [""], cache_dir)
            null_embeds, null_mask = e[0], m[0]
        else:
            null_embeds, null_mask = null.embeds[0], null.mask[0]
    source = f"latent shards {files[0]}" + (f" (+{len(files) - 1})" if len(files) > 1 else "")
    return TextData(torch.cat([x for x, _ in parts]), conds.embeds, conds.mask.long(), null_embeds, null_mask, source)


def load_text_data(spec: str | Path, model, vae: str | Path | None = None, text_encoder: str | None = None,
                   cache_dir: str | Path | None = None, limit: int | None = None,
                   patch_sizes: list | None = None) -> TextData:
    """Image + caption data for a text-conditional `model` (see the module docstring); shapes checked. Video
    models (Wan) take latent shards only, with (N, C, F, H, W) latents that every size in `patch_sizes` (default
    the model's) tiles (`flexcli.data.video`)."""
    from flexcli import registry

    path = Path(spec)
    name, _, variant = str(spec).partition(":")
    if vae is not None and not Path(vae).exists():
        raise FlexcliError(f"--vae {vae} not found", "pass a local diffusers AutoencoderKL folder")
    if name in registry.TEXT_TRAINING_DATA:
        data = registry.load(registry.TEXT_TRAINING_DATA[name])(model, variant or None, cache_dir)
    elif not path.exists():
        raise FlexcliError(f"data {path} not found", f"pass {_FORMAT} or one of: {', '.join(registry.TEXT_TRAINING_DATA)}")
    elif path.is_dir() and (path / "metadata.jsonl").exists():
        if len(model.base_patch) == 3:
            raise FlexcliError(f"{path} is an image folder; video models distil on encoded clips",
                               "pass .safetensors shards with latents (N, C, F, H, W), prompt_embeds and masks")
        data = _image_folder(path, model, vae, text_encoder, cache_dir)
    else:
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files or any(f.suffix != ".safetensors" for f in files):
            raise FlexcliError(f"{path} has no captions for a text-to-image model", f"pass {_FORMAT}")
        data = _shards(files, model, text_encoder, cache_dir)
    if limit is not None and limit > 0:
        data = data.head(limit)
    cfg = model.config
    if len(model.base_patch) == 3:
        from flexcli.data.video import check_video_latents

        return check_video_latents(data, cfg, patch_sizes or [tuple(p) for p in model.patch_sizes])
    want = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    if tuple(data.latents.shape[1:]) != want:
        raise FlexcliError(f"the latents have shape {tuple(data.latents.shape)}, which does not fit the checkpoint "
                           f"(it expects (N, {', '.join(map(str, want))}))",
                           "encode the data with the VAE and image size the model was trained with")
    if not torch.isfinite(data.latents).all():
        raise FlexcliError(f"the data from {data.source} holds NaN or inf values", "re-encode the data")
    learned = model.learned_null_caption()
    if learned is not None and learned.shape[0] != data.embeds.shape[1]:
        raise FlexcliError(f"the captions have {data.embeds.shape[1]} tokens, the learned null caption "
                           f"{learned.shape[0]}", f"encode the captions padded to {learned.shape[0]} tokens")
    return data
