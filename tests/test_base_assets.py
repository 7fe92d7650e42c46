"""The shipped Fashion-MNIST base checkpoint (issue #7): loads through `flexcli info`, keeps its powerful mode
bit for bit after `flexify -p 8`, and carries its training log."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flexcli.cli import app

ASSET = Path(__file__).resolve().parents[1] / "flexcli" / "assets" / "fashion_mnist_dit"
CKPT = ASSET / "model.safetensors"
pytestmark = pytest.mark.skipif(not CKPT.exists(), reason="base checkpoint not trained yet")
runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def test_info_and_training_log():
    info = json.loads(_ok(["info", str(CKPT), "--json"]).stdout)
    assert info["patch_sizes"] == [4]
    cfg = info["config"]
    assert (cfg["input_size"], cfg["patch_size"], cfg["in_channels"], cfg["num_classes"]) == (32, 4, 1, 10)
    assert cfg["learn_sigma"] is True
    for name in ("losses.csv", "losses.png", "config.yaml", "check.json", "grid.png"):
        assert (ASSET / name).exists(), name
    check = json.loads((ASSET / "check.json").read_text())
    assert check["class_accuracy"] >= 0.70


def test_flexify_weak_patch_8_preserves_the_powerful_mode(tmp_path):
    from flexcli.api import load_model

    out = tmp_path / "flex.safetensors"
    _ok(["flexify", str(CKPT), "--weak-patch", "8", "-o", str(out)])
    info = json.loads(_ok(["info", str(out), "--json"]).stdout)
    assert info["patch_sizes"] == [4, 8] and [r["tokens"] for r in info["cost"]] == [64, 16]
    base, flex = load_model(CKPT).eval(), load_model(out).eval()
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(4, 1, 32, 32, generator=g), torch.tensor([0, 250, 500, 999]), torch.tensor([0, 3, 9, 10])
    with torch.no_grad():
        ref = base(x, t, y)
        assert torch.equal(flex(x, t, y), ref)
        assert torch.equal(flex(x, t, y, patch_size=4), ref)
        weak = flex(x, t, y, patch_size=8)
    assert weak.shape == ref.shape and torch.isfinite(weak).all()


def test_recipe_reproduces_the_committed_loss_curve(tmp_path):
    """The first steps of the real recipe (full data, batch 128, one thread) give the committed losses exactly."""
    import csv

    from flexcli.builtin import train_base as P

    cfg = P.resolve(Path(__file__).resolve().parents[1] / "recipes" / "base" / "fashion_mnist_dit.yaml")
    got = P.pretrain(cfg, tmp_path / "run", stop_after=3).losses
    with open(ASSET / "losses.csv", newline="") as f:
        committed = [float(r["loss"]) for r in csv.DictReader(f)][:3]
    assert got == committed


def test_fmnist_features_are_selectable_by_name_without_an_import():
    """`--features fmnist` works from the CLI: the shipped classifier registers itself on first use."""
    from flexcli.metrics.fid import feature_spec

    spec = feature_spec("fmnist")
    assert "fid" in spec.metrics
