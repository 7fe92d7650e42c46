"""`flexcli distill` on a small real setup (a pixel DiT trained here on Fashion-MNIST), exact resume, the NaN
guard, label handling, shared mode with the bootstrapped MMD loss."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill_helpers import latent_shard, quick_config, tiny_flex
from flexcli.api import load_model
from flexcli.data import load_training_data
from flexcli.diffusion.process import GaussianDiffusion
from flexcli.errors import FlexcliError
from flexcli.api import added_parameter_names
from flexcli.flex.core import flexify_model
from flexcli.families import read_checkpoint
from flexcli.io.checkpoint import save_checkpoint
from flexcli.models.configs import DiTConfig
from flexcli.models.dit import DiT
from flexcli.train import distill, objectives, weak_vs_powerful_error
from flexcli.train.logs import read_losses

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "recipes" / "distill" / "tiny_cpu.yaml"
FM_CONFIG = DiTConfig(input_size=16, patch_size=2, in_channels=1, hidden_size=64, depth=2, num_heads=4,
                      num_classes=10)


@pytest.fixture(scope="module")
def fashion_flex(tmp_path_factory) -> Path:
    """A pixel-space DiT (16x16x1, patch 2, learned sigma) trained briefly on Fashion-MNIST with DiT's loss
    (MSE + VB), then flexified with weak patch 4 (LoRA rank 8)."""
    torch.manual_seed(0)
    model = DiT(FM_CONFIG)
    data = load_training_data("fashion-mnist", FM_CONFIG, limit=8192)
    diffusion, g = GaussianDiffusion(), torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(150):
        i = torch.randint(len(data), (32,), generator=g)
        x0, y = data.latents[i], data.labels[i]
        t, noise = torch.randint(0, 1000, (32,), generator=g), torch.randn(x0.shape, generator=g)
        loss = diffusion.training_losses(model(diffusion.q_sample(x0, t, noise), t, y), x0, t, noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    flexify_model(model, [4], "lora", lora_rank=8)
    return save_checkpoint(model, tmp_path_factory.mktemp("fm") / "fm-flex.safetensors")


@pytest.fixture(scope="module")
def fashion_run(fashion_flex, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "distill"
    res = distill(fashion_flex, out, recipe=TINY_RECIPE, overrides={"steps": 150, "eval_samples": 256})
    return fashion_flex, res


def test_distillation_halves_heldout_error(fashion_run):
    src, res = fashion_run
    before, after = res.evaluation["before"][4], res.evaluation["after"][4]
    print(f"\nheld-out (fashion-mnist test, 256 noised images) weak-vs-powerful MSE at p=4: "
          f"eps {before['eps']:.5f} -> {after['eps']:.5f} ({before['eps'] / after['eps']:.1f}x), "
          f"sigma channels {before['sigma']:.5f} -> {after['sigma']:.5f}")
    assert after["eps"] <= 0.5 * before["eps"]
    # The same number measured independently on the written checkpoint, on held-out data.
    test = load_training_data("fashion-mnist:test", FM_CONFIG)
    init = weak_vs_powerful_error(load_model(src), test, samples=256)[4]["eps"]
    done = weak_vs_powerful_error(load_model(res.checkpoint), test, samples=256)[4]["eps"]
    assert init == pytest.approx(before["eps"], rel=1e-5) and done == pytest.approx(after["eps"], rel=1e-5)
    assert done <= 0.5 * init
    meta = read_checkpoint(res.checkpoint).metadata["training"]
    assert meta["steps"] == 150 and meta["complete"] and meta["recipe"].endswith("tiny_cpu.yaml")
    assert meta["data"]["source"].startswith("fashion-mnist") and meta["weights"] == "ema"
    assert meta["final_loss"] == pytest.approx(res.final_loss) and "date" in meta
    assert (res.out_dir / "config.yaml").exists() and res.loss_plot.exists()
    assert len(read_losses(res.loss_csv)) == 150


def test_lora_distillation_keeps_powerful_mode_bit_identical(fashion_run):
    src, res = fashion_run
    a, b = load_model(src), load_model(res.checkpoint)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    added = added_parameter_names(a)
    base = [k for k in sd_a if k not in added]
    assert base and all(torch.equal(sd_a[k], sd_b[k]) for k in base)
    assert any(not torch.equal(sd_a[k], sd_b[k]) for k in added if k in sd_a)  # the weak mode did change
    g = torch.Generator().manual_seed(5)
    x, t, y = torch.randn(6, 1, 16, 16, generator=g), torch.randint(0, 1000, (6,), generator=g), torch.arange(6)
    with torch.no_grad():
        assert torch.equal(a(x, t, y), b(x, t, y))
        assert torch.equal(a(x, t, y, patch_size=2), b(x, t, y, patch_size=2))


# --------------------------------------------------------------------------------------------------
def test_resume_gives_the_same_loss_sequence(tmp_path):
    ckpt = tiny_flex(tmp_path / "flex.safetensors", weak=(4, 8))
    cfg = quick_config(latent_shard(tmp_path / "lat.npz"), steps=7, grad_accum=2)
    full = distill(ckpt, tmp_path / "full", config=cfg)
    part = distill(ckpt, tmp_path / "part", config=cfg, stop_after=3)
    assert part.step == 3 and len(part.losses) == 3
    rest = distill(ckpt, tmp_path / "part", resume=True)
    assert rest.step == 7 and part.losses + rest.losses == full.losses
    rows = lambda r: [(x["step"], x["loss"], x["patch_size"]) for x in read_losses(r.loss_csv)]
    assert rows(full) == rows(rest) and len(rows(full)) == 7
    sa, sb = load_model(full.checkpoint).state_dict(), load_model(rest.checkpoint).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_process_resumes_exactly(tmp_path):
    """A real kill (SIGKILL) between checkpoints: rows logged after the last checkpoint are redone identically."""
    ckpt = tiny_flex(tmp_path / "flex.safetensors")
    data = latent_shard(tmp_path / "lat.npz")
    cfg = quick_config(data, steps=8, ckpt_every=3)
    full = distill(ckpt, tmp_path / "full", config=cfg)
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "flexcli.cli", "distill", str(ckpt), "-o", str(out), "--data", str(data),
            "--steps", "100000", "--batch-size", "8", "--lr", "1e-3", "--ema-decay", "0.99", "--ckpt-every", "3",
            "--grad-clip", "1.0", "--no-progress"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "state.pt").exists() and (out / "loss.csv").exists() and len(read_losses(out / "loss.csv")) >= 4:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    logged = len(read_losses(out / "loss.csv"))
    rest = distill(ckpt, out, resume=True, overrides={"steps": 8})
    assert logged >= 4 and rest.step == 8
    assert [r["loss"] for r in read_losses(rest.loss_csv)] == [r["loss"] for r in read_losses(full.loss_csv)]


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    ckpt = tiny_flex(tmp_path / "flex.safetensors")
    cfg = quick_config(latent_shard(tmp_path / "lat.npz"), steps=10, ckpt_every=2)
    real, calls = objectives.lora_distill_loss, {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        terms = real(*args, **kw)
        if calls["n"] == 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(objectives, "lora_distill_loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(FlexcliError) as e:
        distill(ckpt, out, config=cfg)
    line = e.value.line()
    assert "\n" not in line and "loss became nan at step 5" in line
    assert "last good checkpoint (state.pt, step 4) is kept" in line and "--resume" in line
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["step"] == 4 and read_checkpoint(out / "distilled.safetensors").metadata["training"]["steps"] == 4
    monkeypatch.setattr(objectives, "lora_distill_loss", real)
    res = distill(ckpt, out, resume=True)  # the kept checkpoint continues
    assert res.step == 10 and all(torch.isfinite(torch.tensor(res.losses)))


def test_teacher_and_student_see_the_same_predropped_labels(tmp_path):
    ckpt = tiny_flex(tmp_path / "flex.safetensors")
    model = load_model(ckpt)
    seen = []
    model.y_embedder.register_forward_hook(lambda m, args, out: seen.append((args[0].clone(), args[1])))
    from flexcli.train import loop

    # Run one step through the loop's own code path on this in-memory model.
    orig = loop._read_model
    loop._read_model = lambda path, *rest: (read_checkpoint(ckpt), model, orig(path)[2])
    try:
        distill(ckpt, tmp_path / "run", config=quick_config(latent_shard(tmp_path / "lat.npz"), steps=2,
                                                             label_dropout=0.5, ema_decay=0.0))
    finally:
        loop._read_model = orig
    assert len(seen) == 4  # (teacher, student) x 2 steps
    for (y_teacher, train_t), (y_student, train_s) in zip(seen[0::2], seen[1::2]):
        assert torch.equal(y_teacher, y_student) and train_t is False and train_s is False
    dropped = torch.cat([y for y, _ in seen[0::2]]) == 10
    assert 0 < int(dropped.sum()) < len(dropped)  # label dropout happened, once, outside the model


def test_shared_mode_with_bootstrapped_mmd(tmp_path):
    ckpt = tiny_flex(tmp_path / "flex.safetensors", mode="shared")
    cfg = quick_config(latent_shard(tmp_path / "lat.npz"), steps=4, mmd_weight=1.0, distill_weight=0.5,
                       mmd_respacing=25, timesteps="low")
    res = distill(ckpt, tmp_path / "run", config=cfg)
    assert res.step == 4 and all(map(lambda v: v == v and v < 1e3, res.losses))
    assert {int(r["patch_size"]) for r in read_losses(res.loss_csv)} <= {2, 4}
    a, b = load_model(ckpt).state_dict(), load_model(res.checkpoint).state_dict()
    assert torch.equal(a["x_embedder.proj.weight"], b["x_embedder.proj.weight"])  # role taken by the delta
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])  # whole model trains
    assert "MMD" in read_checkpoint(res.checkpoint).metadata["training"]["objective"]


def test_mmd_and_timestep_sampling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    assert objectives.mmd2(x[:32], x[32:]) < objectives.mmd2(x[:32], x[32:] + 2.0)
    low = objectives.sample_timesteps(4000, g, "low", 2.0).float().mean()
    uni = objectives.sample_timesteps(4000, g, "uniform").float().mean()
    assert 300 < low < 370 and 470 < uni < 530  # E[1000 u^2] = 333
    high = objectives.sample_timesteps(4000, g, "high", 2.0)
    assert 630 < high.float().mean() < 700 and int(high.min()) >= 0 and int(high.max()) == 999  # E = 999 - 333
    assert torch.equal(objectives.sample_timesteps(8, torch.Generator().manual_seed(1), "high", 2.0),
                       999 - objectives.sample_timesteps(8, torch.Generator().manual_seed(1), "low", 2.0))


def test_gradient_accumulation_matches_one_big_batch_and_bf16_runs(tmp_path):
    ckpt = tiny_flex(tmp_path / "flex.safetensors")
    data = latent_shard(tmp_path / "lat.npz")
    one = distill(ckpt, tmp_path / "a", config=quick_config(data, steps=4, grad_accum=1))
    acc = distill(ckpt, tmp_path / "b", config=quick_config(data, steps=4, grad_accum=4))
    assert all(abs(x - y) <= 1e-5 for x, y in zip(one.losses, acc.losses)) and len(acc.losses) == 4
    bf16 = distill(ckpt, tmp_path / "c", config=quick_config(data, steps=2, precision="bf16"))  # CPU autocast
    assert all(abs(x - y) < 0.05 * x for x, y in zip(one.losses, bf16.losses))
