"""`flexcli sample` on a flexified Wan (issue #14): flow-matching solvers through the sampler equal diffusers'
WanPipeline on the same model, noise and embeddings; weak-first temporal and spatial schedules, weak guidance,
--compute and packing; video outputs with a local AutoencoderKLWan; bad input (one line, exit 2, no folder)."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.compute import forward_cost
from flexcli.diffusion.flow import WAN21_UNIPC_CONFIG
from flexcli.diffusion.samplers import make_generators, per_sample_noise
from wan_helpers import flexified_wan_checkpoint, prompt_embeds_file

runner = CliRunner()
CLIP = ["--frames", "9", "--height", "32", "--width", "32"]  # latent 3 x 4 x 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("wan")
    reference, transformer, flex = flexified_wan_checkpoint(d)
    embeds_file, embeds, negative = prompt_embeds_file(d / "prompts.safetensors")
    return {"reference": reference, "transformer": transformer, "flex": flex, "embeds": embeds_file,
            "text": embeds, "negative": negative, "dir": d}


def _sample(args, out):
    res = runner.invoke(app, ["sample", *args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "run.json").read_text()), np.load(out / "latents.npz")["arr_0"]


def _padded(x, n=8):  # the checkpoint's text_len
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))


@pytest.mark.parametrize("solver", ["flow-unipc", "flow-euler"])
def test_powerful_mode_equals_the_wan_pipeline(setup, tmp_path, solver):
    """All steps at the pretrained size: diffusers' WanPipeline with the same transformer, scheduler, noise and
    (zero-padded) embeddings gives the same latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

    record, ours = _sample([str(setup["flex"]), "--prompt-embeds", str(setup["embeds"]), "-n", "2", "--steps", "4",
                            "--schedule", "4/4", "--cfg-scale", "5", "--seed", "3", "--solver", solver, *CLIP],
                           tmp_path / "ours")
    assert record["solver"] == {"name": solver, "flow_shift": 3.0} and record["latent_shape"] == [4, 3, 4, 4]
    scheduler = (UniPCMultistepScheduler.from_config(WAN21_UNIPC_CONFIG, flow_shift=3.0) if solver == "flow-unipc"
                 else FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler,
                       transformer=setup["reference"])
    noise = per_sample_noise((2, 4, 3, 4, 4), make_generators([3, 4]))
    with torch.no_grad():
        theirs = pipe(prompt_embeds=_padded(setup["text"]), negative_prompt_embeds=_padded(setup["negative"]).expand(
            2, -1, -1), height=32, width=32, num_frames=9, num_inference_steps=4, guidance_scale=5.0,
            latents=noise, output_type="latent").frames
    rel = (torch.from_numpy(ours) - theirs).abs().max() / theirs.abs().max()
    assert rel <= 1e-5, float(rel)
    assert record["flops"]["compute_fraction"] == 1.0


def _fraction(record, latent=(3, 4, 4)) -> float:
    """The compute fraction recomputed from the recorded schedule with the one cost model."""
    from flexcli.families import read_checkpoint

    cfg = read_checkpoint(record["config"]["checkpoint"]).config
    r = 4  # unmerged LoRAs of rank 4 on the weak sizes

    def step(pc, pu):
        pc, pu = tuple(pc), tuple(pu)
        if pc == pu:
            return forward_cost(cfg, pc, 2, lora_rank=r, input_size=latent).macs
        return sum(forward_cost(cfg, p, 1, lora_rank=r, input_size=latent).macs for p in (pc, pu))
    total = sum(step(s["p_cond"], s["p_uncond"]) for s in record["steps"])
    return total / (len(record["steps"]) * step((1, 2, 2), (1, 2, 2)))


@pytest.mark.parametrize("weak,frames", [("2,2,2", "13"), ("1,4,4", "9")])
def test_weak_first_schedules(setup, tmp_path, weak, frames):
    args = [str(setup["flex"]), "--prompt-embeds", str(setup["embeds"]), "-n", "2", "--steps", "6", "--seed", "1",
            "--weak-patch", weak, "--frames", frames, "--height", "32", "--width", "32"]
    record, latents = _sample([*args, "--schedule", "2/1"], tmp_path / "weak")
    p = [int(v) for v in weak.split(",")]
    assert [s["p_cond"] for s in record["steps"]] == [p] * 4 + [[1, 2, 2]] * 2
    assert [s["p_uncond"] for s in record["steps"]] == [p] * 5 + [[1, 2, 2]]
    assert [s["guide_label"] for s in record["steps"]] == ["null"] * 4 + ["cond", "null"]  # weak guidance
    latent = (4, 4, 4) if frames == "13" else (3, 4, 4)
    assert record["flops"]["compute_fraction"] == pytest.approx(_fraction(record, latent), rel=1e-12)
    assert 0.2 < record["flops"]["compute_fraction"] < 0.8 and np.isfinite(latents).all()
    assert latents.shape == (2, 4, *latent)
    packed, same = _sample([*args, "--schedule", "2/1", "--packing", "packed"], tmp_path / "packed")
    assert np.abs(same - latents).max() < 1e-4
    assert packed["flops"]["packing_options_total"]["packed_dense"] > record["flops"]["total"]
    budget, _ = _sample([*args, "--compute", "0.8"], tmp_path / "budget")
    assert budget["flops"]["compute_fraction"] <= 0.8 and "from --compute 0.8" in budget["schedule"]["spec"]
    explicit, _ = _sample([*args[:-6], "--frames", frames, "--height", "32", "--width", "32", "--schedule",
                           f"{weak.replace(',', 'x')}:3,1x2x2:3"], tmp_path / "explicit")
    assert [s["p_cond"] for s in explicit["steps"]] == [p] * 3 + [[1, 2, 2]] * 3


def test_videos_with_a_local_vae(setup, tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    vae.save_pretrained(tmp_path / "vae")
    record, latents = _sample([str(setup["flex"]), "--prompt-embeds", str(setup["embeds"]), "-n", "2", "--steps",
                               "2", "--schedule", "1/1", "--weak-patch", "1,4,4", *CLIP, "--vae",
                               str(tmp_path / "vae")], tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert {"grid.png", "latents.npz", "run.json", "sample_000000.gif", "sample_000001.gif"} <= set(files)
    assert record["outputs"]["videos"] and latents.shape == (2, 4, 3, 4, 4)
    assert ("sample_000000.mp4" in files) == record["outputs"]["mp4"]


@pytest.mark.parametrize("args,message", [
    (["--weak-patch", "2,2,2", "--schedule", "2/2", "--frames", "9"],
     "--frames 9 gives 3 latent frames, not a multiple of the temporal patch 2"),
    (["--weak-patch", "2,2,2", "--compute", "0.6", "--frames", "81"], "use --frames 77 or 85"),
    (["--weak-patch", "1,4,4", "--schedule", "2/2", "--frames", "9", "--height", "48"],
     "--height 48 is not a multiple of 32 (8 for the VAE x patch 4 of (1, 2, 2), (1, 4, 4)); use --height 32 or 64"),
    (["--weak-patch", "4", "--schedule", "2/2"], "is a 2-D patch size, but a video model's patches have 3 axes"),
    (["--vae", "/nonexistent/vae"], "--vae path /nonexistent/vae not found"),
    (["--text-encoder", "/nonexistent/umt5"], "--text-encoder /nonexistent/umt5 not found"),
    (["--solver", "ddim"], "is a DDPM solver but this is a flow-matching model"),
    (["--frames", "10"], "--frames 10 is not 4k+1"),
])
def test_bad_video_sampling_input(setup, tmp_path, args, message):
    out = tmp_path / "o"
    base = [str(setup["flex"]), "--prompt-embeds", str(setup["embeds"]), "-n", "1", "--steps", "4"]
    res = runner.invoke(app, ["sample", *base, *args, "--out", str(out)])
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_pipeline_folder_that_is_not_wan(setup, tmp_path):
    folder = tmp_path / "pixart"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    (folder / "transformer" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    res = runner.invoke(app, ["flexify", str(folder), "-p", "2,2,2", "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.safetensors").exists()
