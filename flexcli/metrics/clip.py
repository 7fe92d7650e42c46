"""CLIP score through open-clip, from local weights only.

score = 100 * mean_i max(cos(E_image_i, E_text_i), 0) (the torchmetrics / PixArt-α convention: ~25-26 in the
FlexiDiT paper's Fig. 7 with ViT-L/14). Each sample is scored against its own prompt.
"""
from __future__ import annotations

from pathlib import Path

from flexcli.errors import FlexcliError
from flexcli.metrics.images import ImageSet


def load_clip(model_name: str, weights: str | Path | None):
    """(model, preprocess, tokenizer) from a local .pt/.safetensors file; never downloads."""
    import open_clip

    if weights is None:
        raise FlexcliError("no CLIP weights given (nothing is downloaded)",
                           "pass --clip-weights PATH to a local open_clip .pt/.safetensors file, or drop --prompts")
    weights = Path(weights)
    if not weights.is_file():
        raise FlexcliError(f"--clip-weights {weights} not found", "pass the path of a local open_clip weights file")
    if model_name not in open_clip.list_models():
        raise FlexcliError(f"unknown open_clip model '{model_name}'",
                           "pass --clip-model with an open_clip architecture name such as ViT-L-14")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
    except (RuntimeError, KeyError, ValueError) as e:
        raise FlexcliError(f"--clip-weights {weights} does not load into open_clip model '{model_name}' "
                           f"({str(e).splitlines()[0][:120]})", "check --clip-model matches the weights") from e
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def clip_score(images: ImageSet, prompts: list[str], model_name: str, weights: str | Path | None,
               batch_size: int = 32, clip=None) -> float:
    """Mean CLIP score of images[i] against prompts[i]; `clip` reuses a loaded (model, preprocess, tokenizer)."""
    import torch
    from PIL import Image

    if len(prompts) != len(images):
        raise FlexcliError(f"{len(prompts)} prompts for {len(images)} samples in {images.source}",
                           "give exactly one prompt per sample, in sample order")
    model, preprocess, tokenizer = clip or load_clip(model_name, weights)
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            idx = range(s, min(s + batch_size, len(images)))
            pix = torch.stack([preprocess(Image.fromarray(images[i].permute(1, 2, 0).numpy())) for i in idx])
            img = model.encode_image(pix).float()
            txt = model.encode_text(tokenizer([prompts[i] for i in idx])).float()
            cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
            total += (100 * cos.clamp(min=0)).sum().item()
    return total / len(images)
