"""`flexcli sample`: reproducibility (bit-identical powerful mode, batch size, 1 vs 2 processes), outputs,
recipes, and bad input (one line, exit 2, no output folder)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import random_dit
from flexcli.api import load_model
from flexcli.cli import app
from flexcli.flex.core import flexify_model
from flexcli.io.checkpoint import save_checkpoint
from flexcli.sampling import SampleConfig, make_plan, sample_latents

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = ["--steps", "6", "-n", "3", "--class-labels", "1,7", "--seed", "5"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    base = random_dit("DiT-Tiny/2", seed=2)
    save_checkpoint(base, d / "orig.safetensors")
    flexify_model(base, [4, 8], "lora", lora_rank=4)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if ".lora_B" in name or name.startswith("flex.size_embed"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    save_checkpoint(base, d / "flex.safetensors")
    return d / "orig.safetensors", d / "flex.safetensors"


def _ok(args):
    res = runner.invoke(app, ["sample", *args])
    assert res.exit_code == 0, res.output
    return res


def _latents(folder) -> np.ndarray:
    return np.load(Path(folder) / "latents.npz")["arr_0"]


def test_all_powerful_flexified_is_bit_identical_to_original(ckpts, tmp_path):
    orig, flex = ckpts
    _ok([str(orig), "--out", str(tmp_path / "a"), *COMMON, "--schedule", "6/6"])
    res = _ok([str(flex), "--out", str(tmp_path / "b"), *COMMON, "--schedule", "6/6"])
    assert res.stdout.strip() == str(tmp_path / "b")
    assert "latents only" in res.stderr
    assert np.array_equal(_latents(tmp_path / "a"), _latents(tmp_path / "b"))
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["flops"]["compute_fraction"] == 1.0 and run["seeds"] == [5, 6, 7] and run["labels"] == [1, 7, 1]


def _sample(model, indices, batch, **kw):
    cfg = SampleConfig(num_samples=4, steps=5, seed=3, batch_size=batch, class_labels=[2, 3], **kw)
    plan = make_plan(cfg, model)
    return sample_latents(model, cfg, plan, indices, torch.device("cpu"))


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "dpm++2m"])
def test_batch_size_invariance(ckpts, solver):
    """Sample i does not depend on its batch. With random weights the latents grow to O(100), so float32
    round-off alone reaches ~1e-4 there: the absolute bound is checked in float64, float32 relatively."""
    kw = dict(schedule="3/1", solver=solver, eta=1.0 if solver == "ddim" else 0.0)
    for dtype in ("float64", "float32"):
        model = load_model(ckpts[1])
        model = model.double() if dtype == "float64" else model
        whole = _sample(model, [0, 1, 2, 3], 4, dtype=dtype, **kw)
        ones = _sample(model, [0, 1, 2, 3], 1, dtype=dtype, **kw)
        alone = _sample(model, [2], 3, dtype=dtype, **kw)
        bound = 1e-4 if dtype == "float64" else 1e-5 * whole.abs().max()
        assert (whole - ones).abs().max() < bound
        assert (whole[2:3] - alone).abs().max() < bound


def test_packed_sampling_equals_separate(ckpts):
    model = load_model(ckpts[1])
    sep = _sample(model, [0, 1], 2, schedule="8:1,4:2,2:2/8:3,4:2", packing="separate")
    packed = _sample(model, [0, 1], 2, schedule="8:1,4:2,2:2/8:3,4:2", packing="packed")
    assert (sep - packed).abs().max() < 1e-4


def test_one_vs_two_processes_with_torchrun(ckpts, tmp_path):
    flex = ckpts[1]
    args = ["sample", str(flex), *COMMON, "--schedule", "4/2", "--batch-size", "2", "--dtype", "float64"]
    _ok(args[1:] + ["--out", str(tmp_path / "one")])
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "flexcli", *args,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == str(tmp_path / "two")
    assert np.abs(_latents(tmp_path / "one") - _latents(tmp_path / "two")).max() < 1e-4
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["processes"] == 2 and run["seeds"] == [5, 6, 7]
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]


def _tiny_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32)
    vae.save_pretrained(folder)
    return folder


def test_outputs_with_vae_run_json_and_recipe(ckpts, tmp_path):
    vae = _tiny_vae(tmp_path / "vae")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 4\nschedule: 2/1\ncfg_scale: 3.0\ncfg_scale_all_weak: 5.0\nclass_labels: [4]\n"
                      "num_samples: 2\n")
    out = tmp_path / "out"
    res = _ok([str(ckpts[1]), "--out", str(out), "--recipe", str(recipe), "--vae", str(vae), "--cfg-scale", "2.0",
               "--packing", "packed"])
    assert "latents only" not in res.stderr
    names = sorted(os.listdir(out))
    assert names == ["000000.png", "000001.png", "grid.png", "run.json", "samples.npz"]
    arr = np.load(out / "samples.npz")["arr_0"]
    assert arr.shape == (2, 32, 32, 3) and arr.dtype == np.uint8
    run = json.loads((out / "run.json").read_text())
    c = run["config"]
    assert c["steps"] == 4 and c["schedule"] == "2/1" and c["cfg_scale"] == 2.0 and c["class_labels"] == [4]
    assert [s["p_cond"] for s in run["steps"]] == [4, 4, 2, 2]
    assert [s["p_uncond"] for s in run["steps"]] == [4, 4, 4, 2]
    assert [s["guide_label"] for s in run["steps"]] == ["null", "null", "cond", "null"]
    assert run["guidance"]["s_cfg2"] == pytest.approx(1 - (1 - 2.0) / 2.5)
    assert run["guidance"]["s_cfg0"] == c["cfg_scale_all_weak"] == 5.0  # the recipe's, beside the flag's s1
    f = run["flops"]
    assert f["total"] == sum(s["flops"] for s in run["steps"]) and 0 < f["compute_fraction"] < 1
    assert f["packing_options_total"]["packed_dense"] > f["packing_options_total"]["separate"] == \
        f["packing_options_total"]["packed_block_sparse"]
    assert f["total"] == f["packing_options_total"]["packed_dense"]
    assert run["timesteps"][0] == 999 and len(run["timesteps"]) == 4
    assert {"torch", "diffusers", "flexcli"} <= set(run["versions"]) and run["device"] and run["wall_time_s"] > 0


def test_pixel_space_model_and_compute_target(tmp_path):
    model = random_dit("DiT-Tiny/2", in_channels=3)
    flexify_model(model, [4], "shared")
    ckpt = save_checkpoint(model, tmp_path / "pix.safetensors")
    out = tmp_path / "pix"
    _ok([str(ckpt), "--out", str(out), "--steps", "8", "-n", "2", "--compute", "0.6", "--solver", "ddim"])
    assert {"000000.png", "grid.png", "samples.npz", "run.json"} <= set(os.listdir(out))
    assert np.load(out / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)
    run = json.loads((out / "run.json").read_text())
    assert run["flops"]["compute_fraction"] <= 0.6 and "from --compute 0.6" in run["schedule"]["spec"]


# ---------------------------------------------------------------------------------------------------
def _bad(args, *words, cwd_listing=None):
    res = runner.invoke(app, ["sample", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("extra,words", [
    (["--schedule", "4:2,2"], ("cannot parse schedule", "x/y")),
    (["--schedule", "8:3,16:3"], ("patch size 16", "flexify")),
    (["--compute", "0.05"], ("below the all-weak cost",)),
    (["--class-labels", "10"], ("class label 10 is out of range",)),
    (["-n", "0"], ("--num-samples 0",)),
    (["--vae", "/nonexistent/vae"], ("--vae", "not found")),
    (["--solver", "euler"], ("unknown solver",)),
    (["--class-labels", "a,b"], ("--class-labels",)),
])
def test_bad_input(ckpts, tmp_path, extra, words):
    args = [str(ckpts[1]), "--out", str(tmp_path / "o"), "--steps", "6", *extra]
    _bad(args, *words)
    assert not os.listdir(tmp_path)


def test_weak_schedule_on_plain_checkpoint(ckpts, tmp_path):
    _bad([str(ckpts[0]), "--out", str(tmp_path / "o"), "--steps", "6", "--schedule", "3/3"], "weak patch size")
    assert not os.listdir(tmp_path)


def test_existing_out_without_force(ckpts, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    _bad([str(ckpts[1]), "--out", str(out), "--steps", "2", "-n", "1"], "already exists", "--force")
    assert os.listdir(out) == ["keep.txt"]
    _ok([str(ckpts[1]), "--out", str(out), "--steps", "2", "-n", "1", "--force"])
    assert "run.json" in os.listdir(out) and "keep.txt" not in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["o"]


def test_library_sample_function(ckpts):
    from flexcli.sampling import sample

    model = load_model(ckpts[1])
    cfg = SampleConfig(num_samples=2, steps=3, schedule="8:1,4:1,2:1", cfg_scale=1.0, seed=1)
    seen = []
    latents, images, record = sample(model, cfg, progress=seen.append)
    assert latents.shape == (2, 4, 16, 16) and images is None
    assert [s["p_cond"] for s in record["steps"]] == [8, 4, 2] and record["steps"][0]["p_uncond"] is None
    assert [i["step"] for i in seen] == [1, 2, 3] and seen[-1]["samples_done"] == 2
    assert seen[-1]["compute_fraction"] == pytest.approx(record["flops"]["compute_fraction"])


def test_help_renders():
    res = runner.invoke(app, ["sample", "--help"])
    assert res.exit_code == 0, res.output
    assert "--schedule" in res.output and "--compute" in res.output and "--packing" in res.output
