"""Issue #17: the NaN guard can be recovered from (a huge lr stops the run with a checkpoint worth resuming, or
with advice that works), and `--resume` checks its settings (changes are errors unless --allow-changes, and
then recorded in config.yaml with the step they took effect)."""
from __future__ import annotations

import math
import os
import shlex

import pytest
import torch
import yaml
from typer.testing import CliRunner

from distill_helpers import latent_shard, tiny_flex
from flexcli.cli import app
from flexcli.families import read_checkpoint
from flexcli.train.logs import read_losses
from flexcli.train.step import LossGuard

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return {"flex": tiny_flex(d / "flex.safetensors"), "other": tiny_flex(d / "other.safetensors", seed=1),
            "lat": latent_shard(d / "lat.npz"), "lat2": latent_shard(d / "lat2.npz", seed=1)}


def _run(*args, code=0):
    res = runner.invoke(app, ["distill", *map(str, args), "--no-progress"])
    assert res.exit_code == code, res.output
    if code:
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr
        return lines[0]
    return res


def _suggested(line: str, marker: str) -> list[str]:
    command = shlex.split(line.split(marker)[1])
    assert command[:2] == ["flexcli", "distill"]
    return command[2:]


def _final_loss(run) -> float:
    return float(read_losses(run / "loss.csv")[-1]["loss"])


# --------------------------------------------------------------------------------------------------
def test_huge_lr_stops_resume_from_named_checkpoint_with_sane_lr(inputs, tmp_path):
    """Four sane steps, then a huge lr: its first update damages the weights, the checkpoint written right after
    is suspect (the next loss spikes), so the guard rolls back to the checkpoint before it and names it; the
    suggested command (resume, lower lr) finishes with a finite loss."""
    run = tmp_path / "run"
    _run(inputs["flex"], "-o", run, "--data", inputs["lat"], "--steps", "10", "--batch-size", "8", "--lr", "1e-3",
         "--ckpt-every", "2", "--stop-after", "4")
    line = _run(inputs["flex"], "-o", run, "--resume", "--lr", "0.1", "--ckpt-every", "1", code=2)
    assert "the loss jumped to" in line and "at step 6 and" in line and "more than 10x the running median" in line
    assert "the last good checkpoint (state.pt, step 4) is kept" in line and "--resume --lr 0.01" in line, line
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 4  # rolled back from step 5
    assert read_checkpoint(run / "distilled.safetensors").metadata["training"]["steps"] == 4
    assert not [n for n in os.listdir(run) if ".flexcli-" in n]
    _run(*_suggested(line, "continue from it with a lower lr: "))
    rows = read_losses(run / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 11)) and math.isfinite(_final_loss(run))
    assert _final_loss(run) < 1.0
    changes = yaml.safe_load((run / "config.yaml").read_text())["changes"]
    assert changes[-1] == {"step": 5, "setting": "lr", "from": 0.1, "to": 0.01}


def test_huge_lr_before_any_checkpoint_advises_a_fresh_start_that_works(inputs, tmp_path):
    run = tmp_path / "run"
    line = _run(inputs["flex"], "-o", run, "--data", inputs["lat"], "--steps", "6", "--batch-size", "8",
                "--lr", "1", "--ckpt-every", "2", code=2)
    assert "at step 2 and" in line and "training stopped before any good checkpoint was written" in line, line
    assert "--force --lr 0.1" in line and f"-r {run / 'config.yaml'}" in line
    assert sorted(os.listdir(run)) == ["config.yaml", "loss.csv", "loss.png"]  # no damaged state or output
    _run(*_suggested(line, "start over with a lower lr: "))
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 6 and math.isfinite(_final_loss(run))
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 0.1


def test_loss_guard_rule():
    g = LossGuard(10.0)
    assert g.problem(1, 0.3, 1.0) is None  # nothing to compare with yet
    g.accept(0.3)
    assert g.problem(2, 3.1, 1.0) is None and g.pending == (2, 3.1, 0.3)  # a first spike: not yet
    g.accept(3.1)
    assert list(g.history) == [0.3]  # and not in the median
    assert g.problem(3, 0.3, 1.0) is None and g.pending is None  # it was one odd batch
    g.accept(0.3)
    assert g.problem(4, 5.0, 1.0) is None
    g.accept(5.0)
    assert "at step 4 and 4 at step 5" in g.problem(5, 4.0, 1.0) and g.failed_step == 4
    assert "became nan at step 6" in LossGuard(10.0).problem(6, float("nan"), 1.0)
    assert "gradient norm became inf" in LossGuard(10.0).problem(6, 0.3, math.inf)
    assert LossGuard(0.0, [0.3]).problem(2, 1e9, 1.0) is None  # spike_factor 0: off


# --------------------------------------------------------------------------------------------------
def test_resume_checks_its_settings(inputs, tmp_path):
    run = tmp_path / "run"
    _run(inputs["flex"], "-o", run, "--data", inputs["lat"], "--steps", "4", "--batch-size", "8",
         "--ckpt-every", "2", "--stop-after", "2")
    saved = (run / "config.yaml").read_bytes()
    listing = sorted(os.listdir(run))
    for args, words in [(["--seed", "7"], "seed changed from 0 to 7"),
                        (["--batch-size", "4"], "batch_size changed from 8 to 4"),
                        (["--data", inputs["lat2"]], f"data changed from {inputs['lat']} to {inputs['lat2']}"),
                        (["--data-limit", "32"], "data_limit changed from None to 32")]:
        line = _run(inputs["flex"], "-o", run, "--resume", *args, code=2)
        assert f"--resume: {words} since the run started" in line and "--allow-changes" in line, line
    line = _run(inputs["other"], "-o", run, "--resume", code=2)
    assert "is not the checkpoint this run started from" in line and "--allow-changes" in line
    assert (run / "config.yaml").read_bytes() == saved and sorted(os.listdir(run)) == listing  # nothing written
    # With --allow-changes the new settings are used and recorded with the step they took effect.
    _run(inputs["flex"], "-o", run, "--resume", "--seed", "7", "--batch-size", "4", "--allow-changes")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["seed"] == 7 and cfg["batch_size"] == 4
    assert cfg["changes"] == [{"step": 3, "setting": "batch_size", "from": 8, "to": 4},
                              {"step": 3, "setting": "seed", "from": 0, "to": 7}]
    assert read_checkpoint(run / "distilled.safetensors").metadata["training"]["config"]["changes"] == cfg["changes"]
    assert len(read_losses(run / "loss.csv")) == 4


def test_a_fresh_run_from_a_saved_config_has_no_history(inputs, tmp_path):
    """`-r OLD/config.yaml` (as the guard's advice uses it) starts a new history."""
    old = tmp_path / "old"
    _run(inputs["flex"], "-o", old, "--data", inputs["lat"], "--steps", "2", "--batch-size", "8", "--stop-after", "1")
    _run(inputs["flex"], "-o", old, "--resume", "--steps", "3")
    assert yaml.safe_load((old / "config.yaml").read_text())["changes"] == [
        {"step": 2, "setting": "steps", "from": 2, "to": 3}]
    _run(inputs["flex"], "-o", tmp_path / "new", "-r", old / "config.yaml")
    assert yaml.safe_load((tmp_path / "new" / "config.yaml").read_text())["changes"] is None


def test_a_nan_that_repeats_on_the_saved_weights_rolls_back(inputs, tmp_path, monkeypatch):
    """A NaN right after a checkpoint is checked on the saved weights (the same step's draws again): when it
    repeats, the weights are damaged, so the run rolls back to last-good.pt (test_distill's one-off NaN keeps
    the checkpoint)."""
    from distill_helpers import quick_config
    from flexcli.errors import FlexcliError
    from flexcli.train import distill, objectives

    real, calls = objectives.lora_distill_loss, {"n": 0}

    def poisoned(*args, **kw):
        calls["n"] += 1
        terms = real(*args, **kw)
        if calls["n"] >= 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(objectives, "lora_distill_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(FlexcliError) as e:
        distill(inputs["flex"], run, config=quick_config(inputs["lat"], steps=10, ckpt_every=2))
    assert calls["n"] == 6  # step 5, and its recheck on the step-4 weights
    assert "loss became nan at step 5" in e.value.line()
    assert "the last good checkpoint (state.pt, step 2) is kept" in e.value.line()
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 2
    assert read_checkpoint(run / "distilled.safetensors").metadata["training"]["steps"] == 2
