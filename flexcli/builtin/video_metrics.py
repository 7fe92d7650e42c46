"""Scores of moving Fashion-MNIST clips (issue #15), real or generated, in the shipped classifier's terms.

A clip is (1, F, 32, 32) in [-1, 1]. Each frame is read two ways:
* its item crop: the ITEM x ITEM window centred on the frame's ink (`moving_fmnist.bounding_boxes`), scaled to
  28 x 28 and padded to 32 x 32, as the classifier saw Fashion-MNIST in training. Real crops are the pasted item
  itself (shifted by at most a pixel), so the classifier reads them nearly as well as the test images;
* the whole frame, where the item's position shows in the features.

The scores:
* `frame_fid` (and KID, precision, recall): per-frame FID of the item crops against real clips' crops, in the
  classifier's 128-d features (`--features fmnist`, torch-fidelity);
* `class_accuracy`: the share of frames whose crop the classifier assigns to the class the prompt names;
* `temporal`: the clip's frame-to-frame feature distance, the mean over consecutive frames of
  || phi(frame t+1) - phi(frame t) || on whole frames. It is ~0 for a frozen item and large for a flickering or
  jumping one; real clips spread by their speed. A set's temporal consistency holds when its mean lies within
  one standard deviation of the real clips' mean (`temporal_gap` = (mean - real mean) / real std, |gap| <= 1);
* motion (`motion`): the bounding box centre c_t of the ink in every frame, its per-frame velocity
  v_t = c_{t+1} - c_t; `speed` = mean |v_t| (pixels per frame), `moving` = the share of clips whose centre
  moves at least one pixel per frame on average, `steady` = the share of clips whose velocity changes by at
  most one pixel per axis between frames (real clips change only at a wall bounce), `jerk` = the mean
  max-axis change of the velocity, `velocity_correlation` = the correlation of consecutive velocities
  (v_t, v_{t+1}), both axes of every clip pooled: 1 for straight motion at a constant speed, about 0 for a random
  walk (each frame placed near the last, without momentum), below 1 for real clips only through wall bounces.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flexcli.builtin import classifier
from flexcli.builtin.moving_fmnist import INK, ITEM, SIDE, bounding_boxes

FASHION_SIDE = 28  # the Fashion-MNIST picture, padded to the classifier's 32


def item_crops(clips: torch.Tensor) -> torch.Tensor:
    """(N, 1, F, S, S) clips -> (N * F, 1, 32, 32): every frame's item window (ITEM x ITEM around the centre of
    its ink's bounding box; the canvas centre for a frame without ink) at 28 x 28, padded with the background."""
    n, _, f, h, w = clips.shape
    frames = clips.float().mean(1).reshape(n * f, h, w)
    boxes = bounding_boxes(clips).reshape(n * f, 4)
    centre = torch.where(boxes[:, :2] >= 0, (boxes[:, :2] + boxes[:, 2:]).float() / 2,
                         torch.tensor([h / 2, w / 2]))
    top_left = (centre - ITEM / 2).round().long()
    top = top_left[:, 0].clamp(0, h - ITEM)
    left = top_left[:, 1].clamp(0, w - ITEM)
    rows = top[:, None] + torch.arange(ITEM)
    cols = left[:, None] + torch.arange(ITEM)
    windows = frames[torch.arange(n * f)[:, None, None], rows[:, :, None], cols[:, None, :]]
    scaled = F.interpolate(windows[:, None], size=(FASHION_SIDE, FASHION_SIDE), mode="bilinear",
                           align_corners=False)
    pad = (classifier.SIDE - FASHION_SIDE) // 2
    return F.pad(scaled.clamp(-1, 1), (pad, pad, pad, pad), value=-1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [-1, 1] -> uint8 (N, H, W, 1), the samples' conversion (flexcli.io.samples.to_uint8)."""
    from flexcli.io.samples import to_uint8 as convert

    return convert(x).numpy()


@torch.no_grad()
def _features(net, x: torch.Tensor, batch: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, predicted class) of (N, 1, 32, 32) frames."""
    feats = torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    return feats, net.head(feats).argmax(1)


@dataclass
class ClipScores:
    """Per-frame and per-clip readings of a set of N clips of F frames."""

    crops: torch.Tensor  # (N * F, 1, 32, 32) item crops
    predicted: torch.Tensor  # (N, F) the classifier's class of each crop
    temporal: torch.Tensor  # (N,) frame-to-frame feature distance on whole frames
    centres: torch.Tensor  # (N, F, 2) bounding-box centres (y, x); NaN where a frame has no ink

    def accuracy(self, labels) -> float:
        labels = torch.as_tensor(labels, dtype=torch.long)[:, None]
        return float((self.predicted == labels).float().mean())

    def motion(self) -> dict:
        return motion_of(self.centres)


def box_centres(clips: torch.Tensor, ink: float = INK) -> torch.Tensor:
    """(N, C, F, H, W) clips -> (N, F, 2) (y, x) centres of each frame's ink bounding box; NaN without ink."""
    boxes = bounding_boxes(clips, ink).float()
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    centres[boxes[..., 0] < 0] = float("nan")
    return centres


def motion_of(centres: torch.Tensor) -> dict:
    """The motion scores (module doc) of (N, F, 2) per-frame item centres, NaN where a frame has no ink."""
    v = centres[:, 1:] - centres[:, :-1]  # (N, F - 1, 2)
    speed = v.norm(dim=-1).mean(1)  # (N,)
    change = (v[:, 1:] - v[:, :-1]).abs().amax(-1)  # (N, F - 2)
    ok = ~torch.isnan(speed)
    jerk = change.mean(1)
    pairs = torch.stack([v[ok, :-1].flatten(), v[ok, 1:].flatten()])  # (2, clips * (F - 2) * 2)
    return {"speed": float(speed[ok].mean()) if ok.any() else float("nan"),
            "moving": float((speed >= 1.0).float().mean()),
            "steady": float((change <= 1.0).all(1).float().mean()),
            "jerk": float(jerk[ok].mean()) if ok.any() else float("nan"),
            "velocity_correlation": float(torch.corrcoef(pairs)[0, 1]) if pairs.shape[1] > 1 else float("nan"),
            "clips_without_ink": int((~ok).sum())}


def score_clips(clips: torch.Tensor, net=None) -> ClipScores:
    """Read (N, 1, F, 32, 32) clips in [-1, 1] with the classifier `net` (default: the shipped one)."""
    net = net if net is not None else classifier.load_classifier()[0]
    clips = clips.float().clamp(-1, 1)
    n, _, f = clips.shape[:3]
    crops = item_crops(clips)
    _, predicted = _features(net, crops)
    whole, _ = _features(net, clips.mean(1).reshape(n * f, 1, *clips.shape[-2:]))
    whole = whole.reshape(n, f, -1)
    temporal = (whole[:, 1:] - whole[:, :-1]).norm(dim=-1).mean(1)
    return ClipScores(crops, predicted.reshape(n, f), temporal, box_centres(clips))


def frame_metrics(scores: ClipScores, ref: ClipScores, opts) -> dict:
    """FID/KID/precision/recall of `scores`' item crops against the real clips' crops (`ref`), torch-fidelity in
    the classifier's features (`opts`: a `flexcli.metrics.fid.MetricOptions` with features fmnist)."""
    from flexcli.metrics.fid import compute_metrics
    from flexcli.metrics.images import ImageSet

    samples = ImageSet.from_array(to_uint8(scores.crops), "generated frames")
    reference = ImageSet.from_array(to_uint8(ref.crops), "real frames")
    m = compute_metrics(samples, reference, opts)
    return {"frame_fid": m["fid"], "frame_kid": m["kid"], "precision": m["precision"], "recall": m["recall"]}


def temporal_reference(ref: ClipScores) -> dict:
    """The real clips' frame-to-frame distance: mean and standard deviation over clips."""
    return {"mean": float(ref.temporal.mean()), "std": float(ref.temporal.std())}


def clip_row(scores: ClipScores, labels, ref: ClipScores, opts) -> dict:
    """Every score of one set of generated clips (a pareto.csv row's metric columns)."""
    real = temporal_reference(ref)
    temporal = float(scores.temporal.mean())
    motion = scores.motion()
    return {**frame_metrics(scores, ref, opts), "class_accuracy": scores.accuracy(labels), "temporal": temporal,
            "temporal_gap": (temporal - real["mean"]) / real["std"], "speed": motion["speed"],
            "moving": motion["moving"], "steady": motion["steady"], "jerk": motion["jerk"]}
