"""The main job on the built-in default (`flexcli demo`), end to end with tiny settings on a random base."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

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

    cells = [{"schedule": "2/1", "cfg_scale": 3.0, "guidance": "weak", "cfg_scale_all_weak": 4.0},
             {"schedule": "2/2 of 2", "cfg_scale": 2.0, "solver": "ddim"}]
    job = settings(quick=True, distill_steps=2, num_samples=12, ref_images=40, steps=4, schedules=["4/4", "2/2"],
                   cfg_scales=[2.0], batch_size=12, baseline_steps=[2], compare_compute=0.65, cells=cells)
    res = run_main_job(tmp_path / "out", base=base, job=job)
    rows = {r["label"]: r for r in res["rows"]}
    weak, ddim = "2/1@3 [guidance weak, cfg_scale_all_weak 4]", "2/2 of 2@2 [solver ddim]"
    assert set(rows) == {"4/4@2", "2/2@2", "2/2 of 2@2", weak, ddim}
    # the cells: sampled with their own options, recorded in pareto.csv and run.json
    assert (rows[weak]["guidance"], rows[weak]["cfg_scale"], rows[weak]["cfg_scale_all_weak"]) == ("weak", 3, 4)
    run = json.loads((tmp_path / "out" / "work" / "sweep" / "runs" / "s2-1_cfg3_guidance-weak_cfg_scale_all_weak-4"
                      / "run.json").read_text())
    assert run["guidance"]["s_cfg0"] == 4 and run["guidance"]["s_cfg1"] == 3 and run["config"]["solver"] == "ddpm"
    assert rows[ddim]["solver"] == "ddim" and rows[ddim]["baseline"] and rows["2/2 of 2@2"]["solver"] == "ddpm"
    assert rows[ddim]["compute_fraction"] == pytest.approx(0.5) and rows[ddim]["cfg_scale_all_weak"] is None
    assert rows["4/4@2"]["compute_fraction"] == pytest.approx(1.0)
    # sampled with merged LoRAs: the weak steps cost exactly a LoRA-free weak forward pass
    from flexcli.models.configs import named_config
    from flexcli.compute import forward_cost

    cfg = named_config("DiT-FMNIST/4", depth=1)
    weak, powerful = (forward_cost(cfg, p, 2, lora_rank=0).macs for p in (8, 4))
    # (pareto.csv keeps 6 decimals)
    assert rows["2/2@2"]["compute_fraction"] == pytest.approx((2 * powerful + 2 * weak) / (4 * powerful), abs=5e-7)
    # the fewer-steps baseline: 2 powerful steps of 4 cost half the all-powerful run at the base step count
    few = rows["2/2 of 2@2"]
    assert few["compute_fraction"] == pytest.approx(0.5) and few["steps"] == 2 and few["baseline"]
    assert rows["4/4@2"]["baseline"] and not rows["2/2@2"]["baseline"]
    assert rows["4/4@2"]["latency_ratio"] == pytest.approx(1.0)
    assert all(0 <= r["class_accuracy"] <= 1 and r["fid"] >= 0 for r in rows.values())
    out = tmp_path / "out"
    for name in ("pareto.csv", "fid_vs_compute.png", "accuracy_vs_compute.png", "fid_vs_cfg.png", "evaluate.json",
                 "summary.txt", "job.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert not list((out / "work").rglob("*_vs_*.png"))  # the plots are written once, at the top
    assert json.loads((out / "job.json").read_text())["settings"]["weak_patch"] == 8
    summary = (out / "summary.txt").read_text()
    assert "flex vs fewer steps at or under 65 % compute" in summary and "2 steps all powerful" in summary
    assert "class acc" in summary and res["summary"] == summary.splitlines()
    assert "schedule 2/1 of 4 steps, ddpm, weak guidance, cfg 3, all-weak cfg 4" in summary
    assert "2 steps all powerful, ddim, cfg 2" in summary


def test_demo_settings_check_the_cells():
    """A bad sweep cell fails when the settings resolve, before the distillation, naming the cell."""
    from flexcli.builtin.demo import settings
    from flexcli.errors import FlexcliError

    assert {c.get("solver") for c in settings().cells} == {None, "dpm++2m"}
    for cell, problem in (({"schedule": "30/15"}, "needs a schedule and a cfg_scale"),
                          ({"schedule": "30/15", "cfg_scale": 5, "solver": "euler"}, "unknown solver 'euler'"),
                          ({"schedule": "30/15", "cfg_scale": 5, "cfg_scale_all_weeak": 8}, "unknown setting"),
                          ({"schedule": "30/15 of 20", "cfg_scale": 5}, "more than the 20 steps"),
                          ({"schedule": "30/15", "cfg_scale": "high"}, "cfg_scale a number")):
        with pytest.raises(FlexcliError, match="cells: ") as e:
            settings(cells=[cell])
        assert problem in e.value.problem


def test_demo_missing_base_is_one_line(tmp_path):
    res = runner.invoke(app, ["demo", "--base", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "not found" in res.stderr and "check the path" in res.stderr and "train" not in res.stderr


def test_demo_settings_check_the_baseline(tmp_path):
    from flexcli.builtin.demo import settings
    from flexcli.errors import FlexcliError

    assert settings().baseline_steps == [40, 30, 20] and settings(quick=True).baseline_steps == [12]
    with pytest.raises(FlexcliError, match="baseline_steps"):
        settings(quick=True, steps=10)  # 12 powerful steps are not fewer than 10


TINY_RECIPE = """# the quick demo, smaller still: a progress log in seconds
distill_steps: 4
distill_batch: 8
num_samples: 10
ref_images: 20
steps: 4
schedules: ["4/4", "2/2"]
baseline_steps: [2]
compare_compute: 0.65
cfg_scales: [2.0]
cells: [{schedule: 2/1, cfg_scale: 3, guidance: weak, cfg_scale_all_weak: 4}]
batch_size: 10
"""
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<stage>.+?) (?P<done>\d+)/(?P<total>\d+) \(\d+%\) "
                  r"elapsed \d+:\d\d:\d\d( ETA \d+:\d\d:\d\d)?( [\d.e+-]+ it/s)?$")


def test_demo_writes_progress_lines_to_a_log_while_it_runs(tmp_path):
    """`flexcli demo --quick 2>log`: stderr is a file, so progress comes as plain lines (stage, done/total,
    elapsed, ETA), and they are in the log before the job ends; the summary goes to stdout."""
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    log, stdout = tmp_path / "log", tmp_path / "stdout"
    tty = ("FLEXCLI_PROGRESS_INTERVAL", "FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    env = {k: v for k, v in os.environ.items() if k not in tty}
    cmd = [sys.executable, "-m", "flexcli", "demo", "--quick", "--recipe", str(tmp_path / "tiny.yaml"),
           "--out", str(tmp_path / "demo")]
    with open(log, "w") as err, open(stdout, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=tmp_path)
        seen_while_running = False
        while proc.poll() is None:
            seen_while_running = seen_while_running or any(LINE.match(x) for x in log.read_text().splitlines())
            time.sleep(0.2)
    assert proc.returncode == 0, log.read_text()
    assert seen_while_running, log.read_text()
    lines = log.read_text().splitlines()
    progress = [m for m in map(LINE.match, lines) if m]
    assert {m["stage"] for m in progress} >= {"reference images", "flexify -p 8", "distill weak mode",
                                              "sample (steps x samples)", "metrics (settings)"}, lines
    finished = [m["stage"] for m in progress if m["done"] == m["total"]]
    assert len(finished) == len(set(finished)) == 5  # each stage reports its end once
    assert not any(line.strip() == "" for line in lines) and "\x1b[" not in log.read_text()
    printed = stdout.read_text()
    assert "flex vs fewer steps at or under 65 % compute" in printed and "FID" in printed
    assert str(tmp_path / "demo" / "pareto.csv") in printed.splitlines()
