"""Why a video base's items do not move steadily (issue #15): its clips' motion, read several ways, and how much the
base lets a clip's other frames place an item.

Rows of kind `motion`: held-out prompts (clip i names class i mod 10), flow-unipc with flow shift 3, seeds 0..N-1,
at each --cfg scale, and as many held-out real clips; each set read by the ink's bounding-box centre
(`flexcli.builtin.video_metrics`) and by its ink-weighted centroid, at each --ink threshold: speed, the share of
steady clips, jerk and the correlation of consecutive velocities (1: constant velocity; 0: a random walk).

Rows of kind `context`: real clips at constant velocity, noised to sigma with the empty caption; then the same
clips with the last frame's item moved 3 pixels to the right, off its path, under the same noise. The base's x0
prediction places the moved item (its ink-weighted centroid) `shift_in_clip` pixels to the right when it sees the
whole clip, and `shift_alone` when it sees the last frame alone (as a 1-frame video). A base that uses the other
frames' motion pulls the item back to its path: shift_in_clip well below shift_alone; equal ones mean each frame is
placed from its own pixels only. shift_alone means something only for a base trained on single frames too
(`image_batch_size` > 0, as the shipped one); to a base trained on 4-frame clips only, a 1-frame video is new.

Rows of kind `extrapolation`: real clips on a straight path (constant velocity, at least 2 pixels per frame on an
axis, so that continuing the path and staying put are more than a pixel apart), the first F - 1 frames given and the
last generated (the empty caption, no guidance, flow-unipc at flow shift 3). The given frames are held on their own
noising path (x_sigma = (1 - sigma) x0 + sigma noise, their velocity replaced by the exact noise - x0), so the model
sees them exactly as a training clip at each step's sigma. `on_path` is the share of clips whose generated item (box
centre) lies within a pixel per axis of the real last frame's, that is, of the path continued; `path_error` and
`stay_error` its mean max-axis distance from there and from the item in the frame before. A base that has learnt
momentum continues the path; one without places the item anywhere near the last frame's. The reference row (`clips`
"momentum-free walk") scores a walk without momentum but with the real clips' step sizes: each straight clip's last
step replaced by every step of the real clips in turn.

    python benchmarks/video_motion.py flexcli/assets/moving_fmnist_wan/model.safetensors --out OUT.csv
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import provenance, write_csv

SHIFT = 3  # pixels the last frame's item is moved off its path in the context probe


def ink_centroids(clips: torch.Tensor, ink: float) -> torch.Tensor:
    """(N, C, F, H, W) in [-1, 1] -> (N, F, 2) (y, x) centroid of each frame's pixels above `ink`, weighted by how far
    above; NaN for a frame without ink. Coordinates as the bounding box centre's: a lone pixel at column j is j + 0.5."""
    x = clips.float().mean(1)
    w = (x - ink).clamp(min=0)  # (N, F, H, W)
    mass = w.sum((-1, -2))
    at = torch.arange(x.shape[-1], dtype=torch.float32) + 0.5
    cy = (w.sum(-1) * at).sum(-1) / mass
    cx = (w.sum(-2) * at).sum(-1) / mass
    out = torch.stack([cy, cx], -1)
    out[mass == 0] = float("nan")
    return out


def motion_rows(clips: torch.Tensor, source: str, inks: list[float]) -> list[dict]:
    from flexcli.builtin.video_metrics import box_centres, motion_of

    rows = []
    for ink in inks:
        for reading, centres in (("box", box_centres(clips, ink)), ("centroid", ink_centroids(clips, ink))):
            m = motion_of(centres)
            rows.append({"kind": "motion", "clips": source, "reading": reading, "ink": ink,
                         **{k: m[k] for k in ("speed", "steady", "jerk", "velocity_correlation")}})
    return rows


def straight(real: torch.Tensor, min_speed: int = 2) -> torch.Tensor:
    """(N,) bool: the clips of `real` whose item moves at one velocity, at least `min_speed` pixels per frame on
    some axis."""
    from flexcli.builtin.video_metrics import box_centres

    v = box_centres(real).diff(dim=1)  # (N, F - 1, 2)
    return (v[:, 1:] == v[:, :-1]).all(-1).all(-1) & (v[:, -1].abs().amax(-1) >= min_speed)


def straight_clips(real: torch.Tensor) -> torch.Tensor:
    """The clips of `real` on a straight path at least 2 pixels a frame: continuing it and staying put differ."""
    return real[straight(real)]


def empty_caption(model, n: int):
    """The empty caption (no guidance) for `n` clips, as a text-conditional video base takes it."""
    from flexcli.builtin.captions import encode_cached
    from flexcli.flex.conditions import TextCondition

    embeds, mask = encode_cached([""], model.text_length)
    return TextCondition(embeds.expand(n, -1, -1), mask.expand(n, -1))


@torch.no_grad()
def context_rows(model, real: torch.Tensor, sigmas: list[float], seed: int) -> list[dict]:
    """The context probe on the real clips in `real` that move at a constant velocity with room to move right."""
    from flexcli.builtin.moving_fmnist import bounding_boxes
    from flexcli.train.flow import noised

    room = bounding_boxes(real)[:, -1, 3] + SHIFT <= real.shape[-1]  # the last frame's right edge can move
    x0 = real[straight(real, min_speed=0) & room]
    moved = x0.clone()
    moved[:, :, -1] = torch.roll(x0[:, :, -1], SHIFT, dims=-1)
    n = len(x0)
    cond = empty_caption(model, n)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for sigma in sigmas:
        s = torch.full((n,), sigma)

        def last_x(clips, eps):  # the x0 prediction's last-frame centroid, x coordinate
            xt = noised(clips, s, eps)
            pred = xt - sigma * model(xt, 1000.0 * s, cond).float()
            return ink_centroids(pred.clamp(-1, 1)[:, :, -1:], -1.0)[:, 0, 1]

        in_clip = last_x(moved, noise) - last_x(x0, noise)
        alone = last_x(moved[:, :, -1:], noise[:, :, -1:]) - last_x(x0[:, :, -1:], noise[:, :, -1:])
        rows.append({"kind": "context", "clips": f"{n} real, constant velocity", "sigma": sigma,
                     "shift_in": SHIFT, "shift_in_clip": float(in_clip.mean()), "shift_alone": float(alone.mean())})
    return rows


@torch.no_grad()
def extrapolate(velocity, x0: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """`x0` (N, C, F, H, W) with its last frame generated from the others by `velocity(x, t)` (the flow model's
    prediction at timestep t): the given frames' velocity is replaced by the exact one, noise - x0."""
    from flexcli.builtin.check_video import FLOW_SHIFT
    from flexcli.diffusion.flow import flow_unipc_sample

    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))

    def denoise(x, step, t):
        v = velocity(x, t).float()
        v[:, :, :-1] = (noise - x0)[:, :, :-1]
        return v
    return flow_unipc_sample(denoise, noise.clone(), steps, FLOW_SHIFT)


def extrapolation_row(generated: torch.Tensor, x0: torch.Tensor) -> dict:
    """How far the last frame's item of `generated` lies from the real clips' `x0` (module doc)."""
    from flexcli.builtin.video_metrics import box_centres

    c, real = box_centres(generated.clamp(-1, 1)), box_centres(x0)
    path = (c[:, -1] - real[:, -1]).abs().amax(-1)  # NaN (no ink) counts as off the path
    stay = (c[:, -1] - real[:, -2]).abs().amax(-1)
    return {"kind": "extrapolation", "clips": f"{len(x0)} real, straight", "on_path": float((path <= 1).float().mean()),
            "path_error": float(path.nanmean()), "stay_error": float(stay.nanmean())}


def momentum_free_reference(real: torch.Tensor, x0: torch.Tensor) -> dict:
    """The extrapolation scores of the straight clips `x0` had their last step been any step of the clips `real`."""
    from flexcli.builtin.video_metrics import box_centres

    steps = box_centres(real).diff(dim=1).reshape(-1, 2)
    steps = steps[~steps.isnan().any(-1)]  # (M, 2)
    own = box_centres(x0).diff(dim=1)[:, -1]  # (N, 2)
    path = (steps[None] - own[:, None]).abs().amax(-1)  # (N, M): distance from the path continued
    return {"kind": "extrapolation", "clips": "momentum-free walk", "on_path": float((path <= 1).float().mean()),
            "path_error": float(path.mean()), "stay_error": float(steps.abs().amax(-1).mean())}


def model_extrapolation(model, x0: torch.Tensor, steps: int) -> dict:
    """The extrapolation row of a text-conditional video base, with the empty caption and no guidance."""
    cond = empty_caption(model, len(x0))
    generated = extrapolate(lambda x, t: model(x, torch.full((len(x),), t), cond), x0, steps, seed=0)
    return extrapolation_row(generated, x0)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, help="a Wan-FMNIST base (flexcli builtin train-base)")
    ap.add_argument("--out", type=Path, required=True, help="CSV")
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", default="1,2,4", help="guidance scales of the generated sets")
    ap.add_argument("--ink", default="-0.9,-0.5,0", help="ink thresholds (the background is -1)")
    ap.add_argument("--sigmas", default="0.95,0.85,0.7,0.5,0.3", help="noise levels of the context probe")
    ap.add_argument("--probe-clips", type=int, default=400, help="real clips the probe picks its straight ones from")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    from flexcli.api import load_model
    from flexcli.builtin.captions import heldout_prompt_set
    from flexcli.builtin.check_video import FLOW_SHIFT
    from flexcli.builtin.moving_fmnist import heldout_clips
    from flexcli.sampling import SampleConfig, sample

    torch.set_num_threads(a.threads)
    inks = [float(x) for x in a.ink.split(",")]
    model = load_model(a.checkpoint).eval()
    real, _ = heldout_clips(max(a.num_samples, a.probe_clips))
    rows = motion_rows(real[:a.num_samples], "real", inks)
    prompts, _ = heldout_prompt_set(a.num_samples)
    for scale in (float(x) for x in a.cfg.split(",")):
        cfg = SampleConfig(checkpoint=str(a.checkpoint), num_samples=a.num_samples, steps=a.steps,
                           solver="flow-unipc", flow_shift=FLOW_SHIFT, cfg_scale=scale, guidance="cfg", seed=0,
                           batch_size=50, prompts=prompts, text_encoder="minilm")
        clips, _, _ = sample(model, cfg, device="cpu")
        rows += motion_rows(clips, f"generated, CFG {scale:g}", inks)
    rows += context_rows(model, real[:a.probe_clips], [float(x) for x in a.sigmas.split(",")], seed=0)
    straight = straight_clips(real[:a.probe_clips])
    rows += [model_extrapolation(model, straight, a.steps), momentum_free_reference(real[:a.probe_clips], straight)]
    prov = {"checkpoint": str(a.checkpoint), "num_samples": a.num_samples, "steps": a.steps, **provenance()}
    columns = ["kind", "clips", "reading", "ink", "speed", "steady", "jerk", "velocity_correlation", "sigma",
               "shift_in", "shift_in_clip", "shift_alone", "on_path", "path_error", "stay_error"]
    rows = [{**{c: r.get(c, "") for c in columns}, **prov} for r in rows]
    print(write_csv(rows, a.out))
    return a.out


if __name__ == "__main__":
    main()
