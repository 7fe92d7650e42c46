"""`flexcli distill` for Wan (issue #14): the weak modes' velocities matched to the frozen powerful mode on video
latent shards with caption embeddings; exact resume, the NaN guard, DDP; shards of the wrong shape; and the
end-to-end CPU run: flexify -> distil -> sample a temporal and a spatial weak schedule."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flexcli.api import load_model
from flexcli.cli import app
from flexcli.compute import forward_cost
from flexcli.errors import FlexcliError
from flexcli.families import read_checkpoint
from flexcli.train import DistillConfig, distill, objectives
from flexcli.train.logs import read_losses
from wan_helpers import flexified_wan_checkpoint, prompt_embeds_file, tiny_wan, video_shard

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flex(tmp_path_factory):
    return flexified_wan_checkpoint(tmp_path_factory.mktemp("wan"))[2]


def _config(data, **kw):
    base = dict(data=str(data), steps=6, batch_size=4, lr=1e-3, ema_decay=0.99, ckpt_every=2, grad_clip=1.0)
    return DistillConfig(**{**base, **kw})


def test_velocity_distillation_trains_only_the_weak_parts(flex, tmp_path):
    data = video_shard(tmp_path / "clips.safetensors")
    res = distill(flex, tmp_path / "run", config=_config(data, steps=8))
    assert res.step == 8 and all(np.isfinite(res.losses))
    rows = read_losses(res.loss_csv)
    assert {r["patch_size"] for r in rows} == {"2x2x2", "1x4x4"}
    before, after = load_model(flex).state_dict(), load_model(res.checkpoint).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(".lora_" in k or k.startswith("flex.") for k in changed)
    meta = read_checkpoint(res.checkpoint).metadata["training"]
    assert meta["objective"] == "velocity distillation (§3.2)" and meta["data"]["caption_tokens"] == 6


def test_resume_gives_the_same_loss_sequence(flex, tmp_path):
    cfg = _config(video_shard(tmp_path / "clips.safetensors"), steps=5, grad_accum=2)
    full = distill(flex, tmp_path / "full", config=cfg)
    part = distill(flex, tmp_path / "part", config=cfg, stop_after=2)
    rest = distill(flex, tmp_path / "part", resume=True)
    assert part.losses + rest.losses == full.losses and rest.step == 5


def test_nan_guard_keeps_last_good_checkpoint(flex, tmp_path, monkeypatch):
    real, calls = objectives.lora_distill_loss, {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        terms = real(*args, **kw)
        return {**terms, "loss": terms["loss"] * float("nan")} if calls["n"] == 3 else terms

    monkeypatch.setattr(objectives, "lora_distill_loss", poisoned)
    with pytest.raises(FlexcliError) as e:
        distill(flex, tmp_path / "run", config=_config(video_shard(tmp_path / "c.safetensors")))
    assert "loss became nan at step 3" in e.value.line() and "step 2) is kept" in e.value.line()


def test_shared_mode_flow_loss(tmp_path):
    _, _, shared = flexified_wan_checkpoint(tmp_path, weak=((1, 4, 4),), mode="shared")
    res = distill(shared, tmp_path / "run", config=_config(video_shard(tmp_path / "c.safetensors"), steps=3,
                                                           distill_weight=0.5))
    assert res.step == 3 and all(np.isfinite(res.losses))
    assert read_checkpoint(res.checkpoint).metadata["training"]["objective"] == "flow-matching loss (§3.1)"


@pytest.mark.parametrize("shard,message", [
    (dict(latent=(3, 4, 4)), "which the patch size 2x2x2 does not tile (F x H x W = 3x4x4)"),
    (dict(latent=(4, 4, 6)), "which the patch size 1x4x4 does not tile"),
    (dict(channels=3), "it expects (N, 4, F, H, W) video latents"),
    (dict(text_dim=8), "are 8-wide but the model's caption_channels is 16"),
])
def test_shards_of_the_wrong_shape(flex, tmp_path, shard, message):
    data = video_shard(tmp_path / "bad.safetensors", **shard)
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill", str(flex), "-o", str(out), "--data", str(data), "--steps", "2",
                              "--no-progress"])
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_image_shards_for_a_video_model(flex, tmp_path):
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(4, 4, 8, 8), "prompt_embeds": torch.ones(4, 3, 16),
               "prompt_attention_mask": torch.ones(4, 3, dtype=torch.long),
               "negative_prompt_embeds": torch.ones(1, 3, 16),
               "negative_prompt_attention_mask": torch.ones(1, 3, dtype=torch.long)}, str(tmp_path / "img.safetensors"))
    res = runner.invoke(app, ["distill", str(flex), "-o", str(tmp_path / "run"), "--data",
                              str(tmp_path / "img.safetensors"), "--no-progress"])
    assert res.exit_code == 2 and "video latents" in res.stderr and not (tmp_path / "run").exists()


def test_shards_without_a_null_caption_need_a_text_encoder(flex, tmp_path):
    data = video_shard(tmp_path / "c.safetensors", negative=False)
    res = runner.invoke(app, ["distill", str(flex), "-o", str(tmp_path / "run"), "--data", str(data), "--no-progress"])
    assert res.exit_code == 2 and "needs a text encoder" in res.stderr and not (tmp_path / "run").exists()


def test_ddp_two_gloo_processes_match_one_process(flex, tmp_path):
    data = video_shard(tmp_path / "clips.safetensors")
    single = distill(flex, tmp_path / "one", config=_config(data, steps=3))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "flexcli.cli", "distill", str(flex), "-o", str(tmp_path / "two"), "--data", str(data), "--steps", "3",
           "--batch-size", "4", "--lr", "1e-3", "--ema-decay", "0.99", "--ckpt-every", "2", "--grad-clip", "1.0",
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [(r["patch_size"], float(r["loss"])) for r in read_losses(single.loss_csv)]
    two = [(r["patch_size"], float(r["loss"])) for r in read_losses(tmp_path / "two" / "loss.csv")]
    assert [p for p, _ in one] == [p for p, _ in two] and all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(one, two))


# ------------------------------------------------------------------------------------------------- end to end
def _invoke(*args):
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout.strip()


def test_end_to_end_flexify_distil_sample(tmp_path):
    """A tiny random Wan through the CLI: flexify (temporal + spatial weak sizes, LoRA), distil a few steps,
    then sample 2 short clips with a temporal and with a spatial weak-first schedule."""
    tiny_wan(seed=8).save_pretrained(tmp_path / "Wan-tiny" / "transformer")
    flexed = _invoke("flexify", str(tmp_path / "Wan-tiny" / "transformer"), "--weak-patch", "2,2,2", "--weak-patch",
                     "1,4,4", "--lora-rank", "4", "-o", str(tmp_path / "wan-flex.safetensors"))
    data = video_shard(tmp_path / "clips.safetensors", latent=(4, 4, 4))
    distilled = _invoke("distill", flexed, "-o", str(tmp_path / "distill"), "--data", str(data), "--steps", "4",
                        "--batch-size", "2", "--lr", "1e-3", "--ckpt-every", "2", "--no-progress")
    embeds, _, _ = prompt_embeds_file(tmp_path / "prompts.safetensors")
    cfg = read_checkpoint(distilled).config
    for weak, frames, latent in (("2,2,2", "13", (4, 4, 4)), ("1,4,4", "9", (3, 4, 4))):
        out = tmp_path / f"clips-{weak.replace(',', 'x')}"
        _invoke("sample", distilled, "--prompt-embeds", str(embeds), "-n", "2", "--steps", "6", "--schedule", "3/2",
                "--weak-patch", weak, "--frames", frames, "--height", "32", "--width", "32", "--cfg-scale", "5",
                "--out", str(out))
        record = json.loads((out / "run.json").read_text())
        lat = np.load(out / "latents.npz")["arr_0"]
        assert lat.shape == (2, 4, *latent) and np.isfinite(lat).all() and not np.allclose(lat[0], lat[1])
        p, p0 = tuple(int(v) for v in weak.split(",")), (1, 2, 2)
        assert [tuple(s["p_cond"]) for s in record["steps"]] == [p] * 3 + [p0] * 3
        assert [tuple(s["p_uncond"]) for s in record["steps"]] == [p] * 4 + [p0] * 2

        def cost(q, n):
            return forward_cost(cfg, q, n, lora_rank=4, input_size=latent).macs
        total = 3 * cost(p, 2) + cost(p0, 1) + cost(p, 1) + 2 * cost(p0, 2)
        assert record["flops"]["compute_fraction"] == pytest.approx(total / (6 * cost(p0, 2)), rel=1e-12)
        assert record["flops"]["total"] == 2 * total and record["solver"]["name"] == "flow-unipc"
        assert record["prompts"] == ["a cat", "a dog"] and record["model"]["patch_sizes"] == [[1, 2, 2], [1, 4, 4],
                                                                                               [2, 2, 2]]


def test_sigma_sampling_biases():
    """`low` leans to small noise levels, `high` (its mirror image) to large ones; all stay in (0, 1]."""
    import torch

    from flexcli.train.flow import sample_sigmas

    draw = {how: sample_sigmas(4000, torch.Generator().manual_seed(0), how, 2.0, shift=1.0)
            for how in ("low", "uniform", "high")}
    assert all(float(s.min()) > 0 and float(s.max()) <= 1 for s in draw.values())
    assert 0.30 < draw["low"].mean() < 0.37  # E[u^2] = 1/3
    assert 0.47 < draw["uniform"].mean() < 0.53
    assert 0.63 < draw["high"].mean() < 0.70  # 1 - 1/3
