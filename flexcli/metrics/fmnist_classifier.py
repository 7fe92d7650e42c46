"""The Fashion-MNIST domain classifier (issue #7): a small CNN, its training, and its two uses.

* A torch-fidelity feature extractor, `--features fmnist`: FID/KID/precision/recall on its penultimate-layer
  features ("128"), offline, for the built-in Fashion-MNIST default. `register()` adds it to
  `flexcli.metrics.fid`'s registry (importing this module does that).
* Class-conditional accuracy: `class_accuracy(images, labels)`, the fraction of generated samples that the
  classifier assigns to the class they were asked for.

Input convention (what `flexcli sample` writes for the base model): 32x32 images, the 28x28 Fashion-MNIST picture
padded with black (the -1 background). 28x28 inputs are padded the same way, other sizes are resized. uint8
images (N, 3 or 1, H, W) are read as grey levels: pixel / 127.5 - 1.

The shipped weights live in flexcli/assets/fashion_mnist_classifier/ and are trained with one command:

    python -m flexcli.metrics.fmnist_classifier --recipe recipes/base/fashion_mnist_classifier.yaml --out DIR
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from flexcli.errors import FlexcliError

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_classifier"
WEIGHTS_NAME, CSV_NAME, METRICS_NAME, CONFIG_NAME = "classifier.safetensors", "losses.csv", "metrics.json", "config.yaml"
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
                           "train them with: python -m flexcli.metrics.fmnist_classifier --recipe "
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
                      description="Fashion-MNIST CNN classifier (penultimate 128-d features), shipped with flexcli")


# --------------------------------------------------------------------------------------------------
@dataclass
class ClassifierConfig:
    channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 64])
    features: int = 128
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hflip: bool = True  # random horizontal flips (clothing is roughly left-right symmetric)
    data_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    threads: int | None = 1
    recipe: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve(recipe: str | Path | None = None, overrides: dict | None = None) -> ClassifierConfig:
    """defaults < recipe YAML < overrides; unknown keys and wrong types are errors naming the key."""
    from flexcli.train.config import load_recipe

    kinds = {"channels": "ints", "features": int, "epochs": int, "batch_size": int, "lr": float, "weight_decay": float,
             "hflip": bool, "data_limit": "int?", "test_limit": "int?", "seed": int, "threads": "int?"}
    values = dict(load_recipe(recipe)) if recipe is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = ClassifierConfig()
    for k, v in values.items():
        if k not in kinds:
            raise FlexcliError(f"unknown classifier setting '{k}'", f"use: {', '.join(kinds)}")
        kind, is_int = kinds[k], isinstance(v, int) and not isinstance(v, bool)
        ok = {"ints": isinstance(v, list) and all(isinstance(c, int) and c > 0 for c in v) and len(v) > 0,
              "int?": v is None or is_int, int: is_int, bool: isinstance(v, bool),
              float: is_int or isinstance(v, float)}[kind]
        if not ok:
            raise FlexcliError(f"classifier setting '{k}' has the wrong type ({v!r})", f"expected {kind}")
        cfg = dataclasses.replace(cfg, **{k: float(v) if kind is float else v})
    if recipe is not None:
        cfg = dataclasses.replace(cfg, recipe=str(recipe))
    return cfg


def _split(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    from flexcli.data import fashion_mnist

    images, labels = fashion_mnist(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return prepare(images.unsqueeze(1)), labels


def test_accuracy(model: FMNISTNet, limit: int | None = None) -> float:
    """Accuracy on the Fashion-MNIST test split (its first `limit` images)."""
    x, y = _split("test", limit)
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


@dataclass
class ClassifierResult:
    model: FMNISTNet
    losses: list[float]
    test_accuracy: float | None
    seconds: float


def train(cfg: ClassifierConfig, out_dir: str | Path | None = None, stop_after: int | None = None,
          say=None) -> ClassifierResult:
    """Train on the train split (AdamW, cosine lr, seeded), evaluate on the test split, write the outputs."""
    say = say or (lambda msg: None)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, Path(out_dir) if out_dir is not None else None, stop_after, say)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: ClassifierConfig, out_dir: Path | None, stop_after: int | None, say) -> ClassifierResult:
    x, y = _split("train", cfg.data_limit)
    torch.manual_seed(cfg.seed)
    model = FMNISTNet(tuple(cfg.channels), cfg.features)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    losses, rows, start = [], [], time.perf_counter()
    model.train()
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            if stop_after is not None and step >= stop_after:
                break
            idx = perm[i:i + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if cfg.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            rows.append((step, epoch, losses[-1], opt.param_groups[0]["lr"]))
            if step % 100 == 0:
                say(f"epoch {epoch + 1}/{cfg.epochs} step {step}/{total} loss {sum(losses[-100:]) / 100:.4f}")
    model.eval()
    seconds = time.perf_counter() - start
    acc = test_accuracy(model, cfg.test_limit) if stop_after is None else None
    if acc is not None:
        say(f"test accuracy {acc:.4f} ({cfg.test_limit or 10000} images); {seconds:.0f} s")
    if out_dir is not None:
        _write(model, cfg, out_dir, rows, acc, seconds)
    return ClassifierResult(model, losses, acc, seconds)


def _write(model: FMNISTNet, cfg: ClassifierConfig, out_dir: Path, rows, acc, seconds) -> None:
    import yaml
    from safetensors.torch import save_file

    from flexcli.version import __version__
    from flexcli.io.atomic import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"test_accuracy": acc, "test_images": cfg.test_limit or 10000, "train_steps": len(rows),
               "final_loss": rows[-1][2] if rows else None, "train_seconds": round(seconds, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "flexcli_version": __version__}
    meta = {"format": "flexcli.fmnist_classifier", "arch": {"channels": list(cfg.channels), "features": cfg.features},
            "classes": list(CLASSES), "config": cfg.to_dict(), "metrics": metrics}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
                  metadata={"flexcli": json.dumps(meta)})
    with atomic_path(out_dir / CSV_NAME) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("step", "epoch", "loss", "lr"))
        w.writerows((s, e, repr(v), repr(lr)) for s, e, v, lr in rows)
    with atomic_path(out_dir / METRICS_NAME) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with atomic_path(out_dir / CONFIG_NAME) as tmp:
        tmp.write_text("# resolved Fashion-MNIST classifier config (defaults < recipe < command line)\n"
                       + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexcli.metrics.fmnist_classifier",
                                 description="Train the Fashion-MNIST domain classifier (feature extractor 'fmnist').")
    ap.add_argument("--recipe", help="YAML recipe (e.g. recipes/base/fashion_mnist_classifier.yaml)")
    ap.add_argument("--out", required=True, help="output folder (classifier.safetensors, losses.csv, metrics.json)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--data-limit", type=int)
    args = ap.parse_args(argv)

    def say(msg: str) -> None:
        print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    try:
        cfg = resolve(args.recipe, {"epochs": args.epochs, "seed": args.seed, "data_limit": args.data_limit})
        train(cfg, args.out, say=say)
    except FlexcliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(args.out) / WEIGHTS_NAME)
    return 0


register()

if __name__ == "__main__":
    sys.exit(main())
