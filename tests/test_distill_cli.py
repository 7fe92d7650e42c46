"""`flexcli distill` on the command line: a run with a recipe, VAE-encoded image folders, and bad input
(one line on stderr, exit code 2, no output folder)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from distill_helpers import latent_shard, tiny_flex
from flexcli.cli import app
from flexcli.families import read_checkpoint
from flexcli.quickstart import tiny_checkpoint
from flexcli.train.logs import read_losses

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
TINY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill" / "tiny_cpu.yaml"


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _bad(args, *words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def flex(tmp_path):
    return tiny_flex(tmp_path / "flex.safetensors")


def test_cli_run_with_recipe_and_overrides(tmp_path):
    ckpt = tiny_flex(tmp_path / "pix.safetensors", in_channels=1)  # pixel space: the recipe's Fashion-MNIST fits
    out = tmp_path / "run"
    res = _ok(["distill", str(ckpt), "-r", str(TINY_RECIPE), "--steps", "4", "--ckpt-every", "2",
               "--eval-data", "fashion-mnist:test", "-o", str(out)])
    assert res.stdout.strip() == str(out / "distilled.safetensors")
    assert "held-out weak-vs-powerful eps error at p=4" in res.stderr and "it/s" in res.stderr
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["steps"] == 4 and resolved["lr"] == 1e-3 and resolved["recipe"] == str(TINY_RECIPE)  # flag > recipe
    assert len(read_losses(out / "loss.csv")) == 4 and (out / "loss.png").stat().st_size > 0
    meta = read_checkpoint(out / "distilled.safetensors").metadata
    assert meta["flex"]["mode"] == "lora" and meta["training"]["steps"] == 4
    exported = _ok(["export-lora", str(out / "distilled.safetensors"), "-o", str(tmp_path / "peft")])
    assert exported.stdout.split() == [str(tmp_path / "peft" / "p4")]
    assert json.loads((tmp_path / "peft" / "p4" / "adapter_config.json").read_text())["r"] == 4
    # An existing run folder is not overwritten by accident.
    _bad(["distill", str(ckpt), "-o", str(out), "--data", "fashion-mnist"], "already exists", "--resume", "--force")


def _vae(folder):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(folder)
    return folder


def _images(folder, n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (folder / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    return folder


def test_image_folder_through_vae_is_encoded_once(tmp_path, flex):
    vae, images = _vae(tmp_path / "vae"), _images(tmp_path / "images")
    out = tmp_path / "run"
    _ok(["distill", str(flex), "--data", str(images), "--vae", str(vae), "--steps", "2", "--batch-size", "4",
         "-o", str(out), "--no-progress"])
    (cache,) = (out / "cache").glob("latents-*.safetensors")
    stamp = cache.stat().st_mtime_ns
    meta = read_checkpoint(out / "distilled.safetensors").metadata["training"]["data"]
    assert meta["count"] == 6 and meta["shape"] == [4, 16, 16] and "encoded by" in meta["source"]
    _ok(["distill", str(flex), "--data", str(images), "--vae", str(vae), "--steps", "2", "--batch-size", "4",
         "-o", str(out), "--force", "--no-progress"])
    assert cache.stat().st_mtime_ns == stamp  # read from the cache, not encoded again


# --------------------------------------------------------------------------------------------------
def test_bad_empty_data_folder(tmp_path, flex):
    (tmp_path / "empty").mkdir()
    _bad(["distill", str(flex), "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "out")],
         "data folder", "is empty")
    assert not (tmp_path / "out").exists()


def test_bad_latent_shape(tmp_path, flex):
    shard = latent_shard(tmp_path / "lat.npz", shape=(4, 32, 32))
    _bad(["distill", str(flex), "--data", str(shard), "-o", str(tmp_path / "out")],
         "(64, 4, 32, 32)", "does not fit the checkpoint", "(N, 4, 16, 16)")
    assert not (tmp_path / "out").exists()


def test_bad_checkpoint_not_flexified(tmp_path):
    plain = tiny_checkpoint(tmp_path / "plain.safetensors")
    _bad(["distill", str(plain), "--data", str(latent_shard(tmp_path / "lat.npz")), "-o", str(tmp_path / "out")],
         "is not flexified", "flexcli flexify")
    assert not (tmp_path / "out").exists()


def test_bad_missing_vae(tmp_path, flex):
    images = _images(tmp_path / "images", n=1)
    _bad(["distill", str(flex), "--data", str(images), "-o", str(tmp_path / "out")], "needs --vae", "--vae PATH")
    _bad(["distill", str(flex), "--data", str(images), "--vae", str(tmp_path / "no-vae"), "-o", str(tmp_path / "out")],
         "--vae", "not found")
    assert not (tmp_path / "out").exists()


def test_bad_resume_without_checkpoint(tmp_path, flex):
    _bad(["distill", str(flex), "--resume", "-o", str(tmp_path / "out")], "--resume: no training state", "without --resume")
    (tmp_path / "out").mkdir()
    _bad(["distill", str(flex), "--resume", "-o", str(tmp_path / "out")], "--resume: no training state")


def test_bad_recipe_setting(tmp_path, flex):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: fast\n")
    _bad(["distill", str(flex), "-r", str(recipe)], "'lr' = 'fast' is not a valid float")
    recipe.write_text("learning_rate: 1.0e-4\n")
    _bad(["distill", str(flex), "-r", str(recipe)], "unknown setting 'learning_rate'")
