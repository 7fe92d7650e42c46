"""The main job on the built-in default (`flexcli demo`), end to end with tiny settings on a random base."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.builtin import classifier as fmnist_classifier

runner = CliRunner()
pytestmark = pytest.mark.skipif(not fmnist_classifier.DEFAULT_WEIGHTS.exists(), reason="classifier not trained yet")


@pytest.fixture
def base(tmp_path):
    from flexcli.io.checkpoint import save_checkpoint
    from flexcli.models.configs import named_config
    from flexcli.models.dit import DiT

    torch.manual_seed(0)
    model = DiT(named_config("DiT-FMNIST/4", depth=1))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    return save_checkpoint(model, tmp_path / "base.safetensors")


def test_main_job_tiny(base, tmp_path):
    from flexcli.builtin.demo import run_main_job, settings

    job = settings(quick=True, distill_steps=2, num_samples=12, ref_images=40, steps=4, schedules=["4/4", "2/2"],
                   cfg_scales=[2.0], batch_size=12)
    res = run_main_job(tmp_path / "out", base=base, job=job)
    rows = {r["label"]: r for r in res["rows"]}
    assert set(rows) == {"4/4@2", "2/2@2"}
    assert rows["4/4@2"]["compute_fraction"] == pytest.approx(1.0)
    # sampled with merged LoRAs: the weak steps cost exactly a LoRA-free weak forward pass
    from flexcli.models.configs import named_config
    from flexcli.compute import forward_cost

    cfg = named_config("DiT-FMNIST/4", depth=1)
    weak, powerful = (forward_cost(cfg, p, 2, lora_rank=0).macs for p in (8, 4))
    # (pareto.csv keeps 6 decimals)
    assert rows["2/2@2"]["compute_fraction"] == pytest.approx((2 * powerful + 2 * weak) / (4 * powerful), abs=5e-7)
    assert all(0 <= r["class_accuracy"] <= 1 and r["fid"] >= 0 for r in rows.values())
    assert (tmp_path / "out" / "pareto.csv").exists() and (tmp_path / "out" / "fid_vs_compute.png").exists()
    assert json.loads((tmp_path / "out" / "job.json").read_text())["settings"]["weak_patch"] == 8


def test_demo_missing_base_is_one_line(tmp_path):
    res = runner.invoke(app, ["demo", "--base", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output and "flexcli builtin train-base" in res.output
