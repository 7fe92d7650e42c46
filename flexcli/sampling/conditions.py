"""What each sample is conditioned on, and the null conditioning that classifier-free guidance contrasts it
with. A family's model takes a batch of these as its `cond` argument; `model.cat_conditions` stacks them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flexcli.errors import FlexcliError


@dataclass
class ClassLabels:
    """Class-conditional models (DiT): one label per sample; the null class is `num_classes`."""

    labels: list[int]
    null_class: int

    def batch(self, indices: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional labels, null labels) of these samples, (N,) each."""
        y = torch.tensor([self.labels[i] for i in indices], dtype=torch.long, device=device)
        return y, torch.full_like(y, self.null_class)

    def record(self) -> dict:
        return {"labels": self.labels}


def class_labels(model, num_samples: int, given: list[int] | None, seed: int, guided: bool) -> ClassLabels:
    """Labels cycled from `given`, or drawn from the seed; checked against the model's classes."""
    mc = model.config
    if guided and model.y_embedder.embedding_table.num_embeddings <= mc.num_classes:
        raise FlexcliError("the checkpoint has no null class, so it cannot do classifier-free guidance",
                           "pass --cfg-scale 1")
    if given is not None:
        bad = [y for y in given if not 0 <= y < mc.num_classes]
        if bad:
            raise FlexcliError(f"class label {bad[0]} is out of range for {mc.num_classes} classes",
                               f"use labels in 0..{mc.num_classes - 1}")
        return ClassLabels([given[i % len(given)] for i in range(num_samples)], mc.num_classes)
    g = torch.Generator().manual_seed(seed)
    return ClassLabels(torch.randint(0, mc.num_classes, (num_samples,), generator=g).tolist(), mc.num_classes)


# ---------------------------------------------------------------------------------------------------------
@dataclass
class Prompts:
    """Text-conditional models (PixArt, Wan): one prompt per sample (cycled), its embeddings, and the null caption
    classifier-free guidance contrasts it with: the model's learned one (PixArt's `y_embedding`, masked with the
    prompt's own mask, as the original code does) or the encoded negative prompt (diffusers' way, "" by default)."""

    prompts: list[str | None]  # per distinct prompt (None when only embeddings were given)
    embeds: torch.Tensor  # (P, L, C)
    mask: torch.Tensor  # (P, L)
    null_embeds: torch.Tensor  # (1 or P, L', C)
    null_mask: torch.Tensor | None  # (1 or P, L'); None: the learned null caption takes the prompt's mask
    null_source: str
    encoder: dict | None = None  # the text encoder's identity (path, content hash), for run.json
    num_samples: int = 0

    def batch(self, indices: list[int], device):
        from flexcli.flex.conditions import TextCondition

        rows = torch.tensor([i % len(self.embeds) for i in indices])
        cond = TextCondition(self.embeds[rows].to(device), self.mask[rows].to(device))
        nrows = rows if len(self.null_embeds) > 1 else torch.zeros_like(rows)
        null_mask = cond.mask if self.null_mask is None else self.null_mask[nrows].to(device)
        return cond, TextCondition(self.null_embeds[nrows].to(device), null_mask)

    def record(self) -> dict:
        n = self.num_samples or len(self.embeds)
        return {"prompts": [self.prompts[i % len(self.prompts)] for i in range(n)], "text_encoder": self.encoder,
                "null_caption": self.null_source}


def read_prompts(given: list[str] | None, path: str | None) -> list[str] | None:
    """--prompt values, or the non-empty lines of --prompts-file."""
    if path is None:
        return given
    lines = [line.strip() for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]
    if not lines:
        raise FlexcliError(f"--prompts-file {path} holds no prompts", "write one prompt per line")
    return lines


def text_prompts(model, cfg, guided: bool) -> Prompts:
    """The prompts of a text-conditional run, encoded (or read from --prompt-embeds), and its null caption."""
    from flexcli import text

    if cfg.class_labels is not None:
        raise FlexcliError("--class-labels given to a text-conditional checkpoint", "pass --prompt or --prompts-file")
    prompts = read_prompts(cfg.prompts, cfg.prompts_file)
    width, learned = model.text_width, model.learned_null_caption()
    if cfg.prompt_embeds is not None:
        enc = text.load_prompt_embeds(cfg.prompt_embeds, caption_channels=width)
        encoder, prompts = None, enc.prompts or prompts or [None] * len(enc)
        negative = enc.negative
    else:
        if not prompts:
            raise FlexcliError("a text-conditional checkpoint needs prompts", "pass --prompt TEXT or --prompts-file F")
        encoder = load_text_encoder(cfg, model)
        enc = encoder.encode(prompts)
        negative = encoder.encode([cfg.negative_prompt]) if guided and learned is None else None
        if enc.width != width:
            raise FlexcliError(f"the text encoder gives {enc.width}-d embeddings, the model's caption projection "
                               f"takes {width}", "pass the text encoder this checkpoint was trained with")
    if learned is not None:
        null, null_mask, source = learned[None].float(), None, "learned null caption (y_embedding)"
    elif negative is not None:
        null, null_mask, source = negative.embeds, negative.mask, f"encoded negative prompt {cfg.negative_prompt!r}"
    elif guided:
        raise FlexcliError("this checkpoint has no learned null caption and the embeddings file no negative prompt",
                           "add negative_prompt_embeds to the --prompt-embeds file, or pass --cfg-scale 1")
    else:
        null, null_mask, source = enc.embeds[:1], enc.mask[:1], "none (no guidance)"
    return Prompts(list(prompts), enc.embeds, enc.mask, null, null_mask, source,
                   encoder.identity if encoder is not None else None, cfg.num_samples)


def load_text_encoder(cfg, model):
    """--text-encoder DIR (a local T5/umT5 folder) or minilm, or --pipeline DIR; nothing is downloaded."""
    from flexcli import text

    device = next(model.parameters()).device
    preprocess = getattr(model, "text_preprocess", "lower")  # Wan: as written; PixArt: lower-cased
    if cfg.text_encoder == "minilm":
        return text.load_minilm(device, max_length=model.text_length, preprocess=preprocess)
    return text.load_t5_encoder(cfg.text_encoder or cfg.pipeline, device, max_length=model.text_length,
                                preprocess=preprocess)
