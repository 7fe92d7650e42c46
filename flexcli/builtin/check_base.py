"""Check a Fashion-MNIST base model (issues #7, #13): sample it, classify the samples, draw a class-sorted grid.

    flexcli builtin check-base CKPT --out DIR [--num-samples 200 --steps 100 --cfg-scale 4.0]

Samples go through `flexcli.sampling` (DDPM, all-powerful, classifier-free guidance, seeds 0..N-1), sample i asked
for class i mod 10 so each class gets the same count: by its label (class-conditional DiT) or by a held-out caption
naming it (text-to-image PixArt: `flexcli.builtin.captions.heldout_prompts`, templates never seen in training,
encoded by all-MiniLM-L6-v2). The domain classifier (`flexcli.builtin.classifier`) says whether each sample shows
the class it was asked for. Writes `check.json` (class accuracy, overall and per class, and the settings) and
`grid.png` (one row per class, in label order). The base must reach 70 %. A video base (Wan-FMNIST) is checked
per frame, with its motion (`flexcli.builtin.check_video`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flexcli.builtin.classifier import CLASSES, class_accuracy, load_classifier
from flexcli.io.atomic import atomic_path

TARGET = 0.70
REPORT_NAME, GRID_NAME = "check.json", "grid.png"


def check_base(checkpoint: str | Path, out_dir: str | Path | None = None, *, num_samples: int = 200, steps: int | None = None,
               cfg_scale: float = 4.0, seed: int = 0, batch_size: int = 100, classifier: str | Path | None = None,
               grid_per_class: int = 10) -> dict:
    """The check's report (see the module docstring); with `out_dir`, also check.json and grid.png there."""
    from flexcli.api import load_model
    from flexcli.families import family_of
    from flexcli.sampling import SampleConfig, sample

    net, meta = load_classifier(classifier)  # fails before any sampling
    model = load_model(checkpoint).eval()
    if len(model.base_patch) == 3:
        from flexcli.builtin.check_video import check_video_base

        return check_video_base(checkpoint, model, net, meta, out_dir, num_samples=num_samples,
                                steps=steps or 20, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size,
                                grid_per_class=grid_per_class)
    steps = steps or 100
    labels = [i % 10 for i in range(num_samples)]
    text = family_of(model).conditioning == "text"
    if text:
        from flexcli.builtin.captions import heldout_prompt_set

        prompts = heldout_prompt_set(num_samples)[0]
        cond = {"prompts": prompts, "text_encoder": "minilm"}
    else:
        cond = {"class_labels": list(range(10))}
    cfg = SampleConfig(checkpoint=str(checkpoint), num_samples=num_samples, steps=steps, solver="ddpm",
                       cfg_scale=cfg_scale, guidance="cfg", seed=seed, batch_size=batch_size, **cond)
    start = time.perf_counter()
    _, images, _ = sample(model, cfg, device="cpu")
    seconds = time.perf_counter() - start
    acc = class_accuracy(images.permute(0, 3, 1, 2), labels, net)
    report = {"checkpoint": str(checkpoint), "class_accuracy": acc["accuracy"], "target": TARGET,
              "passed": acc["accuracy"] >= TARGET, "per_class": acc["per_class"], "num_samples": num_samples,
              "steps": steps, "solver": "ddpm", "cfg_scale": cfg_scale, "guidance": "cfg (all channels)",
              "seeds": f"{seed}..{seed + num_samples - 1}", "labels": "i mod 10",
              "conditioning": "held-out captions (all-MiniLM-L6-v2), sample i names class i mod 10" if text
              else "class labels",
              "classifier_test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
              "sampling_seconds": round(seconds, 1)}
    if text:
        report["prompts_per_class"] = {CLASSES[c]: sorted(set(prompts[c::10])) for c in range(10)}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / REPORT_NAME) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        write_grid(images, labels, out_dir / GRID_NAME, grid_per_class)
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
    with atomic_path(Path(path)) as tmp:
        im.save(tmp, format="PNG")
    return path
