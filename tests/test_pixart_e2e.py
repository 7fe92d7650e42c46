"""End to end on the CPU with a real text encoder (issue #12): a tiny random PixArt with caption_channels=384 and the
packaged all-MiniLM-L6-v2 runs flexify -> distill (image folder + captions, a few steps) -> sample by prompt ->
evaluate (FID with a registered extractor, CLIP score, the FID-vs-CLIP curves and the baseline-matching table).
Bad distillation data is one line, exit 2, nothing left behind."""
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluate_utils import register_tiny, tiny_clip  # noqa: F401 (fixture)
from flexcli.cli import app
from pixart_helpers import tiny_pixart

runner = CliRunner()
PROMPTS = ["a red square", "a blue circle", "a green field", "a small yellow boat"]


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _bad(args, *words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _vae(folder):
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4, sample_size=32).save_pretrained(folder)
    return folder


def _image_folder(folder, n=4, captions=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        if captions or i:
            lines.append(json.dumps({"file_name": f"{i}.png", "text": PROMPTS[i % len(PROMPTS)]}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    model = tiny_pixart(sample_size=16, caption_channels=384, layers=1)
    model.save_pretrained(d / "pixart" / "transformer")
    return d, _vae(d / "vae"), _image_folder(d / "data")


def test_flexify_distill_sample_evaluate(setup, tiny_clip):
    d, vae, data = setup
    flex = d / "flex.safetensors"
    _ok(["flexify", str(d / "pixart"), "-p", "4", "--lora-rank", "4", "-o", str(flex)])
    run = d / "run"
    res = _ok(["distill", str(flex), "--data", str(data), "--vae", str(vae), "--text-encoder", "minilm",
               "--steps", "2", "--batch-size", "2", "-o", str(run), "--no-progress"])
    distilled = run / "distilled.safetensors"
    assert res.stdout.strip() == str(distilled)
    assert "text_encoder: minilm" in (run / "config.yaml").read_text()
    assert any(f.name.startswith("text-") for f in (run / "cache").iterdir())  # the captions, encoded once
    out = d / "samples"
    _ok(["sample", str(distilled), "-o", str(out), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
         "--text-encoder", "minilm", "--vae", str(vae), "--solver", "dpm-solver", "--steps", "4", "--schedule", "2/2",
         "-n", "4"])
    rec = json.loads((out / "run.json").read_text())
    assert rec["prompts"] == [PROMPTS[0], PROMPTS[1]] * 2 and rec["text_encoder"]["kind"] == "minilm"
    assert len(rec["text_encoder"]["sha256"]) == 64 and rec["flops"]["compute_fraction"] < 1
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 32, 32, 3)
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    register_tiny()
    name, weights = tiny_clip
    ev = d / "eval"
    res = _ok(["evaluate", str(distilled), "--schedules", "4/4,2/2", "--cfg-scales", "1.5,4.5", "--num-samples", "4",
               "--ref", str(out / "samples.npz"), "--out", str(ev), "--features", "tiny-test", "--kid-subset-size", "2",
               "--kid-subsets", "2", "--vae", str(vae), "--solver", "dpm-solver", "--steps", "4",
               "--text-encoder", "minilm", "--prompts", str(d / "prompts.txt"), "--clip-weights", str(weights),
               "--clip-model", name, "--fid-tol", "10", "--clip-tol", "100"])
    df = pd.read_csv(ev / "pareto.csv")
    assert len(df) == 4 and df["clip"].notna().all() and df["fid"].notna().all()
    table = pd.read_csv(ev / "t2i_match.csv")
    assert table["role"].tolist() == ["baseline", "schedule"] and table["cheapest_match"].tolist() == [False, True]
    assert table["compute_fraction"][1] < 1 and (ev / "fid_vs_clip_t2i.png").is_file()
    assert "cheapest match of the baseline" in res.stderr


def test_captions_missing_for_images(setup, tmp_path):
    d, vae, _ = setup
    flex = d / "flex-bad.safetensors"
    _ok(["flexify", str(d / "pixart"), "-p", "4", "--lora-rank", "4", "-o", str(flex)])
    data = _image_folder(tmp_path / "partial", captions=False)
    _bad(["distill", str(flex), "--data", str(data), "--vae", str(vae), "--text-encoder", "minilm", "--steps", "1",
          "-o", str(tmp_path / "run"), "--no-progress"], "captions missing for 1 of 4 images", "0.png")
    assert not (tmp_path / "run").exists()
    _bad(["distill", str(flex), "--data", str(_image_folder(tmp_path / "ok")), "--vae", str(vae), "--steps", "1",
          "-o", str(tmp_path / "run"), "--no-progress"], "needs a text encoder", "--text-encoder")
    assert not (tmp_path / "run").exists()
