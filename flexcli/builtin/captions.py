"""Captions for Fashion-MNIST (issue #13): the text-to-image built-in default's data.

Every caption names the image's class, through a synonym ("a pair of sneakers", "a trainer", ...) put into a
template ("a photo of {}", "grayscale picture of {}", ...). The templates come in two disjoint sets:
`TRAIN_TEMPLATES` caption the training images, `HELDOUT_TEMPLATES` are kept for evaluation only (the demo's
prompts, the asset's check and grid, the benchmark). Each training image gets one caption, drawn once from its
class's training captions with a fixed generator, so the data set is the same on every run.

The text encoder is the real all-MiniLM-L6-v2 (`flexcli.text.load_minilm`), run as a token-level encoder: last
hidden states (N, L, 384) and the attention mask, L = the model's `text_length` (every caption here fits in
`TEXT_LENGTH` = 16 tokens (the longest has 14), [CLS] and [SEP] included). The distinct captions are encoded once and indexed by the
images (`TextData.index`), and the encoding is cached on disk (`cache_dir`, keyed by the encoder's content hash).

`training_data(model, split, cache_dir)` is the named text training set `fashion-mnist-captions[:train|test]` of
`flexcli distill` and `flexcli builtin train-base` (through flexcli.registry).
"""
from __future__ import annotations

import torch

from flexcli.errors import FlexcliError

TEXT_LENGTH = 16
CAPTION_SEED = 13
# Synonyms and phrasings per class, in Fashion-MNIST's label order (flexcli.builtin.classifier.CLASSES).
SYNONYMS: tuple[tuple[str, ...], ...] = (
    ("a t-shirt", "a tee", "a top", "a short-sleeved top", "a tee shirt"),  # 0 T-shirt/top
    ("a pair of trousers", "a pair of pants", "trousers", "jeans", "slacks"),  # 1 Trouser
    ("a pullover", "a sweater", "a jumper", "a knit sweater", "a woolly jumper"),  # 2 Pullover
    ("a dress", "a summer dress", "a gown", "a frock", "a sleeveless dress"),  # 3 Dress
    ("a coat", "a jacket", "an overcoat", "a winter coat", "a parka"),  # 4 Coat
    ("a sandal", "a pair of sandals", "a flip-flop", "an open-toe shoe", "a summer sandal"),  # 5 Sandal
    ("a shirt", "a button-up shirt", "a blouse", "a long-sleeved shirt", "a collared shirt"),  # 6 Shirt
    ("a sneaker", "a pair of sneakers", "a trainer", "a running shoe", "a sports shoe"),  # 7 Sneaker
    ("a bag", "a handbag", "a purse", "a tote bag", "a shoulder bag"),  # 8 Bag
    ("an ankle boot", "a pair of ankle boots", "a boot", "a short boot", "a leather boot"),  # 9 Ankle boot
)
TRAIN_TEMPLATES = (
    "{}", "a photo of {}", "grayscale picture of {}", "an image of {}", "a picture of {}", "a small photo of {}",
    "a low-resolution image of {}", "a catalogue photo of {}", "{} on a black background", "a close-up of {}",
    "a centered image of {}", "this is {}", "a simple picture of {}", "a thumbnail of {}", "there is {}",
    "a monochrome photo of {}",
)
HELDOUT_TEMPLATES = (
    "a black and white image of {}", "a product shot of {}", "{} seen from the front", "a tiny picture showing {}",
    "a photograph of {}, in gray",
)


def captions(cls: int, heldout: bool = False) -> list[str]:
    """Every caption of class `cls`: each synonym in each training (or held-out) template."""
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    return [t.format(s) for t in templates for s in SYNONYMS[cls]]


def heldout_prompts(per_class: int, offset: int = 0) -> tuple[list[str], list[int]]:
    """`per_class` held-out prompts for every class, interleaved (prompt i names class i mod 10), cycling through
    each class's held-out captions from `offset`: (prompts, their classes)."""
    prompts, labels = [], []
    for i in range(per_class):
        for c in range(10):
            pool = captions(c, heldout=True)
            prompts.append(pool[(offset + i * 7) % len(pool)])  # stride 7 (coprime to 25): templates and synonyms mix
            labels.append(c)
    return prompts, labels


def heldout_prompt_set(num_samples: int) -> tuple[list[str], list[int]]:
    """The held-out prompts of `num_samples` samples (sample i names class i mod 10) and their classes."""
    prompts, labels = heldout_prompts(-(-num_samples // 10))
    return prompts[:num_samples], labels[:num_samples]


def class_of_prompt() -> dict[str, int]:
    """Caption -> the class it names, for every caption (training and held-out)."""
    return {p: c for c in range(10) for held in (False, True) for p in captions(c, held)}


def caption_index(labels: torch.Tensor, seed: int = CAPTION_SEED) -> tuple[list[str], torch.Tensor]:
    """(the distinct training captions, (N,) the caption row of each image): one draw per image, fixed seed."""
    table, start = [], []
    for c in range(10):
        start.append(len(table))
        table += captions(c)
    per_class = len(TRAIN_TEMPLATES) * len(SYNONYMS[0])
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(per_class, (len(labels),), generator=g)
    return table, torch.tensor(start, dtype=torch.long)[labels] + pick


def encode_cached(prompts: list[str], max_length: int, cache_dir=None):
    """MiniLM last hidden states (N, L, 384) and masks (N, L) of `prompts`, encoded once: cached in `cache_dir` and
    in this process."""
    from flexcli.data.text_data import _encode

    key = (max_length, tuple(prompts))
    if key not in _ENCODED:
        if len(_ENCODED) >= 4:  # a few sets of captions at a time (a table and the empty caption) is all jobs need
            _ENCODED.clear()
        _ENCODED[key] = _encode(_minilm(max_length), prompts, cache_dir)
    return _ENCODED[key]


_ENCODERS: dict = {}
_ENCODED: dict = {}


def _minilm(max_length: int):
    from flexcli.text import load_minilm

    if max_length not in _ENCODERS:
        _ENCODERS[max_length] = load_minilm(max_length=max_length)
    return _ENCODERS[max_length]


def training_data(model, split: str | None = None, cache_dir=None):
    """`fashion-mnist-captions[:train|test]` for a text-conditional pixel-space `model` (flexcli.data.text_data)."""
    from flexcli.builtin.fashion_mnist import FASHION_MNIST_FILES, fashion_mnist, model_pixels
    from flexcli.data.text_data import TextData

    split = split or "train"
    if split not in FASHION_MNIST_FILES:
        raise FlexcliError(f"unknown fashion-mnist-captions split '{split}'",
                           "use fashion-mnist-captions:train or fashion-mnist-captions:test")
    cfg = model.config
    if cfg.in_channels != 1 or model.text_width != 384:
        raise FlexcliError("fashion-mnist-captions is 1-channel pixel data with 384-d MiniLM captions, but the "
                           f"checkpoint takes {cfg.in_channels} channels and {model.text_width}-d captions",
                           "train a PixArt-FMNIST model, or pass your own images and captions")
    images, labels = fashion_mnist(split)
    table, index = caption_index(labels)
    embeds, mask = encode_cached(table, model.text_length, cache_dir)
    null_embeds = null_mask = None
    if model.learned_null_caption() is None:  # the encoded empty caption, as for any checkpoint without one
        e, m = encode_cached([""], model.text_length, cache_dir)
        null_embeds, null_mask = e[0], m[0]
    return TextData(model_pixels(images, cfg.sample_size).contiguous(), embeds, mask, null_embeds, null_mask,
                    f"fashion-mnist-captions:{split}", _minilm(model.text_length).identity, index=index)
