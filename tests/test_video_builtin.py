"""The video built-in default (issue #15): pixel-space sampling of Wan-FMNIST (the clip is the latent, no VAE),
the clip scores on real moving Fashion-MNIST (the classifier reads the item crops, the box centre follows the
path exactly, frozen and flickering clips sit outside the real temporal spread), `check-base` on a video base,
and `demo --family video` end to end on a tiny random base, its rows recomputed from the saved clips."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexcli.builtin import classifier as fmnist_classifier
from flexcli.builtin import moving_fmnist as M
from flexcli.cli import app
from flexcli.errors import FlexcliError
from wan_helpers import tiny_fmnist_wan_base

runner = CliRunner()
needs_classifier = pytest.mark.skipif(not fmnist_classifier.DEFAULT_WEIGHTS.exists(), reason="no classifier")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny_base(tmp_path):
    return tiny_fmnist_wan_base(tmp_path / "base.safetensors")


def _sample_cfg(ckpt, out, **more):
    from flexcli.sampling import resolve_config

    return resolve_config({"checkpoint": str(ckpt), "out": str(out), "num_samples": 3, "steps": 2,
                           "prompts": ["a pair of trousers"], "text_encoder": "minilm", "cfg_scale": 4.0,
                           "flow_shift": 3.0, **more})


def test_pixel_space_video_samples_are_clips_of_the_models_own_size(tiny_base, tmp_path):
    from flexcli.api import flexify_checkpoint
    from flexcli.sampling import run

    flex, _, _ = flexify_checkpoint(tiny_base, ["2,4,4"], tmp_path / "flex.safetensors", lora_rank=4)
    out = run(_sample_cfg(flex, tmp_path / "s", schedule="1/1"))
    record = json.loads((out / "run.json").read_text())
    assert record["latent_shape"] == [1, M.FRAMES, M.SIDE, M.SIDE] and record["outputs"]["pixel_space"]
    with np.load(out / "latents.npz") as z:
        clips = z["arr_0"]
    assert clips.shape == (3, 1, M.FRAMES, M.SIDE, M.SIDE)
    assert sorted(p.name for p in out.glob("*.gif")) == [f"sample_{i:06d}.gif" for i in range(3)]
    assert (out / "grid.png").is_file() and not list(out.glob("*.mp4"))
    from PIL import Image

    with Image.open(out / "sample_000001.gif") as gif:
        assert gif.n_frames == M.FRAMES and gif.size == (M.SIDE, M.SIDE)
        gif.seek(2)
        shown = np.asarray(gif.convert("L"))
    expected = np.clip(127.5 * clips[1, 0, 2] + 128.0, 0, 255).astype(np.uint8)
    assert np.abs(shown.astype(int) - expected).max() <= 1  # the GIF is the clip (grey palette)
    with pytest.raises(FlexcliError) as e:  # 3 frames do not tile the temporal patch 2: pixel counts, no VAE
        run(_sample_cfg(flex, tmp_path / "bad", schedule="1/1", frames=3))
    assert "--frames 3" in e.value.problem and "use --frames 2 or 4" in e.value.fix


def test_real_clips_read_as_their_class_and_their_box_follows_the_path():
    from flexcli.builtin.video_metrics import score_clips, temporal_reference

    clips, labels = M.moving_fashion_mnist("test")
    idx = torch.arange(300)
    x = clips[idx]
    real = score_clips(x)
    assert real.accuracy(labels[:300]) >= 0.75  # 82.7 % on 1,000 clips; the test images themselves: 89.7 %
    moved = (clips.positions[idx] - clips.positions[idx][:, :1]).float()
    assert torch.equal(real.centres - real.centres[:, :1], moved)  # the box centre moves with the path, exactly
    motion = real.motion()
    assert motion["moving"] == 1.0 and motion["clips_without_ink"] == 0
    steps = clips.positions[idx][:, 1:] - clips.positions[idx][:, :-1]
    assert motion["speed"] == pytest.approx(float(steps.float().norm(dim=-1).mean()), rel=1e-5)
    turns = (steps[:, 1:] != steps[:, :-1]).any(-1).any(-1)  # clips with a wall bounce
    assert 0.3 < motion["velocity_correlation"] < 0.9 and 0 < float(turns.float().mean()) < 1
    straight = dataclasses.replace(real, centres=real.centres[~turns])
    assert straight.motion()["velocity_correlation"] == pytest.approx(1.0)  # constant velocity: 1
    walk = torch.randn(2000, M.FRAMES, 2, generator=torch.Generator().manual_seed(0)).cumsum(1)  # no momentum
    assert abs(dataclasses.replace(real, centres=walk).motion()["velocity_correlation"]) < 0.05
    spread = temporal_reference(real)
    assert spread["std"] > 0
    frozen = score_clips(x[:, :, :1].expand_as(x).contiguous())
    assert float(frozen.temporal.abs().max()) == 0.0 and frozen.motion()["moving"] == 0.0
    flicker = x.clone()
    flicker[:, :, 1::2] = x[torch.roll(idx, 1)][:, :, 1::2]  # every other frame shows another clip's item
    gap = (float(score_clips(flicker).temporal.mean()) - spread["mean"]) / spread["std"]
    assert gap > 1 and (0 - spread["mean"]) / spread["std"] < -1  # both outside the real spread


@needs_classifier
def test_check_base_scores_frames_and_motion_of_a_video_base(tiny_base, tmp_path):
    res = runner.invoke(app, ["builtin", "check-base", str(tiny_base), "--out", str(tmp_path / "c"),
                              "--num-samples", "10", "--steps", "2"])
    assert res.exit_code == 1, res.output  # a random base fails the bar
    report = json.loads((tmp_path / "c" / "check.json").read_text())
    assert report["frames"] == M.FRAMES and report["accuracy_of"] == "frames (item crops)"
    assert report["motion"]["real"]["moving"] == 1.0 and not report["passed"]
    assert 0 <= report["class_accuracy"] <= 1 and len(report["per_class"]) == 10
    from PIL import Image

    with Image.open(tmp_path / "c" / "grid.gif") as gif:
        assert gif.n_frames == M.FRAMES
    for name in ("check.json", "grid.gif", "grid.png"):
        assert str(tmp_path / "c" / name) in res.stdout


@needs_classifier
def test_demo_video_end_to_end_tiny(tiny_base, tmp_path):
    from flexcli.builtin.video_metrics import score_clips

    recipe = tmp_path / "job.yaml"
    recipe.write_text("lora_rank: 4\ndistill_steps: 2\ndistill_batch: 4\nnum_samples: 10\nref_clips: 20\nsteps: 2\n"
                      "weak_steps: [1, 2]\nbaseline_steps: [1]\ncfg_scales: [4.0]\nbatch_size: 10\n"
                      "cells: [{mode: temporal, schedule: 2/1, cfg_scale: 4.0, guidance: weak}]\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "--family", "video", "--base", str(tiny_base), "--recipe", str(recipe),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("pareto.csv", "fig8_video.png", "real_clips.json", "summary.txt", "job.json", "config.yaml"):
        assert (out / name).is_file() and str(out / name) in res.stdout, name
    import pandas as pd

    rows = pd.read_csv(out / "pareto.csv")
    assert len(rows) == 7  # baseline, 1 fewer step, 2 modes x 2 schedules, the cell
    assert sorted(rows["mode"].unique()) == ["powerful", "spatial", "temporal"]
    fewer = rows[(rows["mode"] == "powerful") & (rows["steps"] == 1)]
    assert float(fewer["compute_fraction"].iloc[0]) == 0.5
    all_weak = rows[rows["weak_share"] == 1.0].set_index("mode")["compute_fraction"]
    assert 0 < all_weak["spatial"] < all_weak["temporal"] < 1  # 64 tokens cost less than 128
    # each row's scores come from its own saved clips
    real = json.loads((out / "real_clips.json").read_text())
    for _, row in rows.iterrows():
        with np.load(f"{row['source']}/latents.npz") as z:
            clips = torch.from_numpy(z["arr_0"])
        scores = score_clips(clips)
        assert row["class_accuracy"] == pytest.approx(scores.accuracy([i % 10 for i in range(10)]), abs=1e-6)
        assert row["temporal"] == pytest.approx(float(scores.temporal.mean()), rel=1e-5)
        gap = (row["temporal"] - real["temporal"]["mean"]) / real["temporal"]["std"]
        assert row["temporal_gap"] == pytest.approx(gap, rel=1e-4, abs=1e-6)
    summary = (out / "summary.txt").read_text()
    assert "baseline: powerful 2 steps @4" in summary
    assert all(line in summary for line in ("temporal:", "spatial:"))
    assert json.loads((out / "job.json").read_text())["settings"]["num_samples"] == 10


def test_demo_video_bad_settings_are_one_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("steps: 10\nweak_steps: [5, 12]\n")
    res = runner.invoke(app, ["demo", "--family", "video", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "weak_steps [5, 12]" in res.output and len(res.output.strip().splitlines()) == 1
    recipe.write_text("cells: [{mode: sideways, schedule: 10/10, cfg_scale: 5}]\n")
    res = runner.invoke(app, ["demo", "--family", "video", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "needs a mode of ['temporal', 'spatial']" in res.output
    res = runner.invoke(app, ["demo", "--family", "video", "--clip-weights", str(tmp_path / "w.pt"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--family t2i" in res.output
    assert not (tmp_path / "o").exists()
