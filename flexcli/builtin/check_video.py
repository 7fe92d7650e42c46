"""Check the video built-in base (issue #15, `flexcli builtin check-base` on a Wan-FMNIST checkpoint).

Clip i is prompted with a held-out caption naming class i mod 10 (templates never seen in training), sampled with
flow-unipc and classifier-free guidance (the encoded empty caption as the null one, as in training), seeds
0..N-1. Scores (`flexcli.builtin.video_metrics`): the share of FRAMES whose item crop the classifier assigns to
the named class (the bar is 70 %), and the motion of the item's bounding-box centre, for the generated clips and
for as many held-out real clips: speed, the share of moving clips (the bar: 70 % move at least a pixel per
frame), the share of steady ones and the frame-to-frame feature distance. Writes `check.json`, `grid.gif` (one
row per class, animated over the frames) and `grid.png` (the first clip of each class, its frames side by side).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flexcli.builtin.classifier import CLASSES
from flexcli.io.atomic import atomic_path

TARGET, MOVING_TARGET = 0.70, 0.70
REPORT_NAME, GIF_NAME, STRIP_NAME = "check.json", "grid.gif", "grid.png"
FLOW_SHIFT = 3.0


def check_video_base(checkpoint, model, net, meta: dict, out_dir, *, num_samples: int, steps: int,
                     cfg_scale: float, seed: int, batch_size: int, grid_per_class: int) -> dict:
    from flexcli.builtin.captions import heldout_prompt_set
    from flexcli.builtin.moving_fmnist import heldout_clips
    from flexcli.builtin.video_metrics import score_clips, temporal_reference
    from flexcli.sampling import SampleConfig, sample

    prompts, labels = heldout_prompt_set(num_samples)
    cfg = SampleConfig(checkpoint=str(checkpoint), num_samples=num_samples, steps=steps, solver="flow-unipc",
                       flow_shift=FLOW_SHIFT, cfg_scale=cfg_scale, guidance="cfg", seed=seed,
                       batch_size=batch_size, prompts=prompts, text_encoder="minilm")
    start = time.perf_counter()
    clips, _, _ = sample(model, cfg, device="cpu")
    seconds = time.perf_counter() - start
    gen = score_clips(clips, net)
    real, real_labels = heldout_clips(num_samples)
    ref = score_clips(real, net)
    lab = torch.as_tensor(labels)
    per_class = {CLASSES[c]: float((gen.predicted[lab == c] == c).float().mean()) for c in range(10)
                 if (lab == c).any()}
    accuracy, motion = gen.accuracy(labels), gen.motion()
    report = {"checkpoint": str(checkpoint), "class_accuracy": accuracy, "target": TARGET,
              "passed": accuracy >= TARGET and motion["moving"] >= MOVING_TARGET,
              "accuracy_of": "frames (item crops)", "per_class": per_class, "num_samples": num_samples,
              "frames": int(clips.shape[2]), "steps": steps, "solver": "flow-unipc", "flow_shift": FLOW_SHIFT,
              "cfg_scale": cfg_scale, "guidance": "cfg (null: the encoded empty caption)",
              "seeds": f"{seed}..{seed + num_samples - 1}", "labels": "i mod 10",
              "conditioning": "held-out captions (all-MiniLM-L6-v2), clip i names class i mod 10",
              "motion": {"generated": motion, "real": ref.motion(), "moving_target": MOVING_TARGET},
              "temporal": {"generated": temporal_reference(gen), "real": temporal_reference(ref)},
              "real_class_accuracy": ref.accuracy(real_labels),
              "classifier_test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
              "sampling_seconds": round(seconds, 1), "files": [REPORT_NAME, GIF_NAME, STRIP_NAME],
              "prompts_per_class": {CLASSES[c]: sorted(set(prompts[c::10])) for c in range(10)}}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / REPORT_NAME) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        write_class_grids(clips, labels, out_dir, grid_per_class)
    return report


def write_class_grids(clips: torch.Tensor, labels: list[int], out_dir: Path, per_class: int = 8) -> list[Path]:
    """grid.gif: one row per class (label order), `per_class` clips each, animated over the frames, 2x; grid.png:
    the first clip of each class, one row per class, its frames side by side."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import make_grid

    from flexcli.io.video import clip_frames, frame_grid, write_gif

    frames = clip_frames(clips.float())  # (N, F, H, W, 3)
    rows = [[i for i, y in enumerate(labels) if y == c][:per_class] for c in range(10)]
    blank = torch.zeros_like(frames[0])
    picked = torch.stack([frames[i] if i is not None else blank
                          for row in rows for i in row + [None] * (per_class - len(row))])  # (10 k, F, H, W, 3)
    animated = []
    for t in range(frames.shape[1]):
        grid = make_grid(picked[:, t].permute(0, 3, 1, 2), nrow=per_class, padding=2, pad_value=128)
        im = Image.fromarray(grid.permute(1, 2, 0).numpy())
        animated.append(np.asarray(im.resize((im.width * 2, im.height * 2), Image.NEAREST)))
    with atomic_path(out_dir / GIF_NAME) as tmp:
        write_gif(np.stack(animated), tmp, fps=4)
    strip = frame_grid(torch.stack([frames[row[0]] if row else blank for row in rows]).numpy())
    im = Image.fromarray(strip)
    with atomic_path(out_dir / STRIP_NAME) as tmp:
        im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(tmp, format="PNG")
    return [out_dir / GIF_NAME, out_dir / STRIP_NAME]
