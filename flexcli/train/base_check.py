"""Check a Fashion-MNIST base model (issue #7): sample it, classify the samples, draw a class-sorted grid.

    python -m flexcli.train.base_check CKPT --out DIR [--num-samples 200 --steps 100 --cfg-scale 4.0]

Samples go through `flexcli.sampling` (DDPM, all-powerful, classifier-free guidance, labels cycling 0..9 so each
class gets the same count, seeds 0..N-1). The domain classifier (`flexcli.metrics.fmnist_classifier`) says
whether each sample shows the class it was asked for. Writes `check.json` (class accuracy, overall and per
class, and the settings) and `grid.png` (one row per class, in label order). The base must reach 70 %.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

TARGET = 0.70


def check_base(checkpoint: str | Path, out_dir: str | Path | None = None, *, num_samples: int = 200, steps: int = 100,
               cfg_scale: float = 4.0, seed: int = 0, batch_size: int = 100, classifier: str | Path | None = None,
               grid_per_class: int = 10) -> dict:
    from flexcli.api import load_model
    from flexcli.metrics.fmnist_classifier import class_accuracy, load_classifier
    from flexcli.sampling import SampleConfig, sample

    model = load_model(checkpoint).eval()
    labels = [i % 10 for i in range(num_samples)]
    cfg = SampleConfig(checkpoint=str(checkpoint), num_samples=num_samples, steps=steps, solver="ddpm",
                       cfg_scale=cfg_scale, guidance="cfg", class_labels=list(range(10)), seed=seed,
                       batch_size=batch_size)
    start = time.perf_counter()
    _, images, _ = sample(model, cfg, device="cpu")
    seconds = time.perf_counter() - start
    net, meta = load_classifier(classifier)
    acc = class_accuracy(images.permute(0, 3, 1, 2), labels, net)
    report = {"checkpoint": str(checkpoint), "class_accuracy": acc["accuracy"], "target": TARGET,
              "passed": acc["accuracy"] >= TARGET, "per_class": acc["per_class"], "num_samples": num_samples,
              "steps": steps, "solver": "ddpm", "cfg_scale": cfg_scale, "guidance": "cfg (all channels)",
              "seeds": f"{seed}..{seed + num_samples - 1}", "labels": "i mod 10",
              "classifier_test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
              "sampling_seconds": round(seconds, 1)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "check.json").write_text(json.dumps(report, indent=2) + "\n")
        write_grid(images, labels, out_dir / "grid.png", grid_per_class)
    return report


def write_grid(images: torch.Tensor, labels: list[int], path: Path, per_class: int = 10) -> Path:
    """uint8 NHWC images -> a PNG with one row per class (label order), `per_class` columns, upscaled 2x."""
    from PIL import Image
    from torchvision.utils import make_grid

    rows = []
    for c in range(10):
        idx = [i for i, y in enumerate(labels) if y == c][:per_class]
        rows += idx + [None] * (per_class - len(idx))
    blank = torch.zeros_like(images[0])
    shown = torch.stack([images[i] if i is not None else blank for i in rows]).permute(0, 3, 1, 2)
    grid = make_grid(shown, nrow=per_class, padding=2, pad_value=128).permute(1, 2, 0).numpy()
    im = Image.fromarray(grid[..., 0])
    im = im.resize((im.width * 2, im.height * 2), Image.NEAREST)
    im.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexcli.train.base_check", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classifier", help="classifier weights (default: the shipped ones)")
    args = ap.parse_args(argv)
    report = check_base(args.checkpoint, args.out, num_samples=args.num_samples, steps=args.steps,
                        cfg_scale=args.cfg_scale, seed=args.seed, classifier=args.classifier)
    print(json.dumps({k: report[k] for k in ("class_accuracy", "passed", "cfg_scale", "steps", "num_samples")}))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
