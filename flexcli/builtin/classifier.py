"""The Fashion-MNIST domain classifier (issue #7): a small CNN and its two uses.

* A torch-fidelity feature extractor, `--features fmnist`: FID/KID/precision/recall on its penultimate-layer
  features ("128"), offline, for the built-in Fashion-MNIST default. `register()` adds it to
  `flexcli.metrics.fid`'s registry; `flexcli.registry` names it, so the first use of `fmnist` registers it.
* Class-conditional accuracy: `class_accuracy(images, labels)`, the fraction of generated samples that the
  classifier assigns to the class they were asked for.

Input convention (what `flexcli sample` writes for the base model): 32x32 images, the 28x28 Fashion-MNIST picture
padded with black (the -1 background). 28x28 inputs are padded the same way, other sizes are resized. uint8
images (N, 3 or 1, H, W) are read as grey levels: pixel / 127.5 - 1.

The shipped weights live in flexcli/assets/fashion_mnist_classifier/; `flexcli.builtin.train_classifier` trains
them (`flexcli builtin train-classifier --recipe recipes/base/fashion_mnist_classifier.yaml --out DIR`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from flexcli.errors import FlexcliError

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_classifier"
WEIGHTS_NAME = "classifier.safetensors"
DEFAULT_WEIGHTS = ASSET_DIR / WEIGHTS_NAME
FEATURES_NAME = "fmnist"
SIDE = 32
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FMNISTNet(nn.Module):
    """Three conv stages (two 3x3 convs + ReLU, then 2x2 max-pool) -> 4x4 -> linear `features` -> linear logits."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), features: int = 128, num_classes: int = 10):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = SIDE // 2 ** len(channels)
        self.fc = nn.Linear(c_in * side * side, features)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> (N, features), the penultimate layer (after ReLU)."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) or (N, H, W, C) with C in {1, 3}, or float (N, 1, H, W) in [-1, 1] -> (N, 1, 32, 32)."""
    x = images
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    x = x.float().mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    if (h, w) != (SIDE, SIDE):
        if h <= SIDE and w <= SIDE:
            top, left = (SIDE - h) // 2, (SIDE - w) // 2
            x = F.pad(x, (left, SIDE - w - left, top, SIDE - h - top), value=-1.0)
        else:
            x = F.interpolate(x, size=(SIDE, SIDE), mode="area")
    return x


# --------------------------------------------------------------------------------------------------
def load_classifier(path: str | Path | None = None) -> tuple[FMNISTNet, dict]:
    """The classifier and its metadata (config, test accuracy) from a safetensors file (default: the shipped one)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.exists():
        raise FlexcliError(f"Fashion-MNIST classifier weights {path} not found",
                           "train them with: flexcli builtin train-classifier --recipe "
                           "recipes/base/fashion_mnist_classifier.yaml --out DIR")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("flexcli", "{}"))
    arch = meta.get("arch", {})
    model = FMNISTNet(tuple(arch.get("channels", (16, 32, 64))), int(arch.get("features", 128)))
    model.load_state_dict(load_file(str(path)))
    return model.eval(), meta


@torch.no_grad()
def predict(model: FMNISTNet, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N,) predicted classes."""
    out = [model(prepare(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def class_accuracy(images: torch.Tensor, labels, model: FMNISTNet | None = None) -> dict:
    """Whether generated samples show the requested class: overall and per-class accuracy, and the confusion."""
    model = model if model is not None else load_classifier()[0]
    labels = torch.as_tensor(labels, dtype=torch.long)
    pred = predict(model, images)
    per_class = {CLASSES[c]: float((pred[labels == c] == c).float().mean()) for c in range(10) if (labels == c).any()}
    return {"accuracy": float((pred == labels).float().mean()), "n": int(len(labels)), "per_class": per_class,
            "predicted": pred.tolist()}


# --------------------------------------------------------------------------------------------------
class FMNISTFeatures(FeatureExtractorBase):
    """torch-fidelity extractor: "128" (penultimate features; FID/KID/precision/recall) and "logits"."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net, _ = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)

    @staticmethod
    def get_provided_features_list():
        return "128", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"fid": "128", "kid": "128", "prc": "128", "isc": "logits"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, SIDE, SIDE, dtype=torch.uint8)

    def forward(self, x):
        f = self.net.features(prepare(x))
        out = {"128": f, "logits": self.net.head(f)}
        return tuple(out[name] for name in self.features_list)


def weights_fingerprint(path: str | Path | None = None) -> str:
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "missing"


def register() -> None:
    """Make the classifier selectable as `--features fmnist` (idempotent)."""
    from flexcli.metrics.fid import register_features

    register_features(FEATURES_NAME, FMNISTFeatures, metrics=("fid", "kid", "prc", "isc"),
                      fingerprint=f"fmnist-cnn-{weights_fingerprint()}", replace=True,
                      description="Fashion-MNIST CNN classifier (penultimate 128-d features), shipped with flexcli",
                      class_accuracy=image_set_accuracy)


def image_set_accuracy(images, labels, batch: int = 500) -> float:
    """`class_accuracy` for evaluate: an indexable set of uint8 [C, H, W] images and their requested labels."""
    model, _ = load_classifier()
    n = min(len(images), len(labels))
    preds = [predict(model, torch.stack([images[i] for i in range(s, min(s + batch, n))])) for s in range(0, n, batch)]
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    return float((pred == torch.as_tensor(list(labels[:n]), dtype=torch.long)).float().mean())
