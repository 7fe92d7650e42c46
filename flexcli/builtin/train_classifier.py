"""Train the Fashion-MNIST domain classifier (flexcli.builtin.classifier): the `flexcli builtin train-classifier` job.

    flexcli builtin train-classifier --recipe recipes/base/fashion_mnist_classifier.yaml --out DIR

AdamW with a cosine learning rate on the train split, random horizontal flips, every random draw from one seeded
generator (the same recipe, seed and thread count give the same loss curve on the CPU); then the accuracy on the
test split. Writes `classifier.safetensors` (arch, config and metrics in its metadata), `losses.csv`,
`metrics.json` and the resolved `config.yaml`. Progress goes to the `say(message)` callback.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from flexcli import config
from flexcli.builtin.classifier import CLASSES, WEIGHTS_NAME, FMNISTNet, prepare
from flexcli.builtin.fashion_mnist import fashion_mnist
from flexcli.errors import FlexcliError

CSV_NAME, METRICS_NAME, CONFIG_NAME = "losses.csv", "metrics.json", "config.yaml"


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


def _validate(cfg: ClassifierConfig, where: str) -> None:
    if not cfg.channels or any(c <= 0 for c in cfg.channels):
        raise FlexcliError(f"{where}: channels must be a list of positive numbers", "e.g. channels: [16, 32, 64]")
    if min(cfg.features, cfg.epochs, cfg.batch_size) < 1 or cfg.lr <= 0:
        raise FlexcliError(f"{where}: features, epochs, batch_size and lr must be positive", "e.g. epochs: 3")


def resolve(recipe: str | Path | None = None, overrides: dict | None = None) -> ClassifierConfig:
    """defaults < recipe YAML < overrides (None: not given); unknown keys and wrong types are errors naming the key."""
    return config.resolve(ClassifierConfig, recipe, overrides, validate=_validate, noun="classifier setting")


def _split(split: str, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
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
    config.save_resolved(cfg, out_dir / CONFIG_NAME,
                         "resolved Fashion-MNIST classifier config (defaults < recipe < command line)")
