"""DDP under torchrun (2 gloo processes on CPU) gives the same losses as 1 process with the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from distill_helpers import latent_shard, quick_config, tiny_flex
from flexcli.train import distill
from flexcli.train.logs import read_losses

pytestmark = pytest.mark.usefixtures("one_thread")

def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    grad_accum = 2  # and gradient accumulation: 2 micro-batches of 2 samples per process
    ckpt = tiny_flex(tmp_path / "flex.safetensors", weak=(4, 8))  # two weak sizes: unused LoRAs each step
    data = latent_shard(tmp_path / "lat.npz")
    cfg = quick_config(data, steps=5, batch_size=8, grad_accum=grad_accum)
    single = distill(ckpt, tmp_path / "one", config=cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "flexcli.cli", "distill", str(ckpt), "-o", str(tmp_path / "two"), "--data", str(data), "--steps", "5",
           "--batch-size", "8", "--grad-accum", str(grad_accum), "--lr", "1e-3", "--ema-decay", "0.99",
           "--ckpt-every", "2", "--grad-clip", "1.0", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [(int(r["patch_size"]), float(r["loss"])) for r in read_losses(single.loss_csv)]
    two = [(int(r["patch_size"]), float(r["loss"])) for r in read_losses(tmp_path / "two" / "loss.csv")]
    print("\n1 process:  ", [f"{v:.7f}" for _, v in one], "\n2 processes:", [f"{v:.7f}" for _, v in two])
    assert [p for p, _ in one] == [p for p, _ in two] and len(one) == 5 and len({p for p, _ in one}) == 2
    assert all(abs(a - b) <= 1e-5 for (_, a), (_, b) in zip(one, two))
    assert proc.stdout.strip() == str(tmp_path / "two" / "distilled.safetensors")  # only rank 0 prints
