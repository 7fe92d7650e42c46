"""The text-to-image built-in default (issue #13): the caption templates (held-out ones disjoint from the training
ones, every class covered), base training on captions for a few steps, and `demo --family t2i` end to end on a
tiny random base."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from flexcli.builtin import captions as C
from flexcli.builtin import classifier as fmnist_classifier
from flexcli.cli import app

runner = CliRunner()
needs_classifier = pytest.mark.skipif(not fmnist_classifier.DEFAULT_WEIGHTS.exists(), reason="no classifier")


def test_heldout_templates_are_disjoint_from_the_training_ones():
    assert set(C.TRAIN_TEMPLATES).isdisjoint(C.HELDOUT_TEMPLATES)
    assert len(C.HELDOUT_TEMPLATES) >= 3 and all(t.count("{}") == 1 for t in C.TRAIN_TEMPLATES + C.HELDOUT_TEMPLATES)
    train = {p for c in range(10) for p in C.captions(c)}
    held = {p for c in range(10) for p in C.captions(c, heldout=True)}
    assert train.isdisjoint(held)  # no held-out caption is ever a training caption


def test_every_class_has_captions_and_each_caption_names_one_class():
    assert len(C.SYNONYMS) == len(fmnist_classifier.CLASSES) == 10
    named = C.class_of_prompt()
    for c in range(10):
        for held in (False, True):
            caps = C.captions(c, heldout=held)
            assert len(caps) == len(C.SYNONYMS[c]) * len(C.HELDOUT_TEMPLATES if held else C.TRAIN_TEMPLATES)
            assert all(named[p] == c for p in caps)
    n = sum(len(C.captions(c, h)) for c in range(10) for h in (False, True))
    assert len(named) == n  # no caption is shared by two classes


def test_heldout_prompts_cover_every_class_and_mix_templates():
    prompts, labels = C.heldout_prompts(5)
    assert labels == [i % 10 for i in range(50)]
    named = C.class_of_prompt()
    assert [named[p] for p in prompts] == labels
    held = {p for c in range(10) for p in C.captions(c, heldout=True)}
    assert set(prompts) <= held
    for c in range(10):  # several templates per class, not one template repeated
        own = prompts[c::10]
        assert len(set(own)) == 5 and len({t for t in C.HELDOUT_TEMPLATES for p in own if p in
                                           {t.format(s) for s in C.SYNONYMS[c]}}) >= 3


def test_training_captions_name_the_image_class_and_are_fixed():
    labels = torch.arange(200) % 10
    table, index = C.caption_index(labels)
    again = C.caption_index(labels)
    assert table == again[0] and torch.equal(index, again[1])
    named = C.class_of_prompt()
    assert [named[table[i]] for i in index.tolist()] == labels.tolist()
    assert set(table) == {p for c in range(10) for p in C.captions(c)}
    assert len(set(index.tolist())) > 50  # varied captions, not one per class


def test_text_base_training_a_few_steps(tmp_path):
    """The caption path of `train-base` on 64 images: losses finite, the EMA checkpoint
    loads as a PixArt with its learned null caption, and the resolved config is saved."""
    from flexcli.api import load_model
    from flexcli.builtin import train_base as P

    cfg = P.resolve(None, {"model": "PixArt-FMNIST/4", "data": "fashion-mnist-captions", "data_limit": 64,
                           "steps": 3, "batch_size": 8, "warmup_steps": 1, "log_every": 1,
                           "ckpt_every": 3})
    res = P.pretrain(cfg, tmp_path / "run")
    assert res.steps == 3 and len(res.losses) == 3 and all(0 < v < 10 for v in res.losses)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.family == "pixart" and model.text_length == C.TEXT_LENGTH and model.text_width == 384
    null = model.learned_null_caption()
    assert null is not None and null.shape == (C.TEXT_LENGTH, 384)
    for name in ("config.yaml", "losses.csv", "losses.png", "raw.safetensors", "state.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert "fashion-mnist-captions" in (tmp_path / "run" / "config.yaml").read_text()


def test_caption_data_names_its_splits():
    from flexcli.errors import FlexcliError
    from flexcli.models.pixart import PixArt
    from flexcli.models.pixart_config import named_pixart_config

    with pytest.raises(FlexcliError, match="unknown fashion-mnist-captions split 'nope'"):
        C.training_data(PixArt(named_pixart_config("PixArt-FMNIST/4", num_layers=1)), "nope")


@pytest.fixture
def tiny_base(tmp_path):
    from flexcli.io.checkpoint import save_checkpoint
    from flexcli.models.pixart import random_pixart
    from flexcli.models.pixart_config import named_pixart_config

    model = random_pixart(named_pixart_config("PixArt-FMNIST/4", num_layers=1), seed=0, std=0.02)
    return save_checkpoint(model, tmp_path / "base.safetensors")


@needs_classifier
def test_demo_t2i_end_to_end_tiny(tiny_base, tmp_path):
    recipe = tmp_path / "job.yaml"
    recipe.write_text("distill_steps: 2\ndistill_batch: 8\nnum_samples: 10\nref_images: 40\nsteps: 4\n"
                      "schedules: [4/4, 2/2]\ncfg_scales: [3.0, 4.5]\nbatch_size: 10\nbaseline_steps: [2]\n"
                      "cells: [{schedule: 3/1, cfg_scale: 6, guidance: weak}]\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["demo", "--family", "t2i", "--base", str(tiny_base), "--recipe", str(recipe),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("pareto.csv", "fid_vs_alignment_t2i.png", "t2i_match_alignment.csv", "summary.txt", "job.json",
                 "config.yaml"):
        assert (out / name).is_file(), name
        assert str(out / name) in res.stdout
    import pandas as pd

    rows = pd.read_csv(out / "pareto.csv")
    assert len(rows) == 7 and rows["alignment"].between(0, 100).all()  # 3 settings x 2 scales + the cell
    assert sorted(rows["compute_fraction"].round(6).unique())[-1] == 1.0
    table = pd.read_csv(out / "t2i_match_alignment.csv")
    assert table["role"].iloc[0] == "baseline" and table["cfg_scale"].iloc[0] == 4.5
    assert sorted(table["schedule"].tolist()[1:]) == ["2/2", "2/2 of 2", "3/1 [guidance weak]"]
    assert json.loads((out / "job.json").read_text())["settings"]["num_samples"] == 10
    assert "class acc" in (out / "summary.txt").read_text()


def test_demo_t2i_bad_family_and_clip_weights_are_one_line(tmp_path):
    res = runner.invoke(app, ["demo", "--family", "audio", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown --family 'audio'" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["demo", "--clip-weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--family t2i" in res.output
    res = runner.invoke(app, ["demo", "--family", "t2i", "--clip-weights", str(tmp_path / "w.pt"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not found" in res.output


def test_match_table_keeps_settings_with_one_schedule_apart():
    """The fewer-steps baseline and a cell with its own options share a schedule string with other rows, yet
    each is its own setting (Fig. 7 middle), shown at its own best scale."""
    from flexcli.evaluate.t2i import MatchOptions, match_table

    def row(label, schedule, cfg, frac, fid, align):
        return {"label": label, "schedule": schedule, "cfg_scale": cfg, "compute_fraction": frac, "fid": fid,
                "alignment": align}
    rows = [row("50/50@4.5", "50/50", 4.5, 1.0, 100.0, 90.0),
            row("22/22@3", "22/22", 3.0, 0.59, 90.0, 85.0), row("22/22@6", "22/22", 6.0, 0.59, 104.0, 89.5),
            row("22/22@6 [guidance weak]", "22/22", 6.0, 0.59, 80.0, 92.0),
            row("30/30 of 30@3", "30/30", 3.0, 0.6, 120.0, 91.0)]
    table = match_table(rows, MatchOptions(baseline_cfg=4.5, fid_tol=0.05, clip_tol=1.0, score="alignment"))
    got = {r["schedule"]: (r["cfg_scale"], r["matches"], r["cheapest_match"]) for r in table[1:]}
    assert got == {"22/22": (6.0, True, False), "22/22 [guidance weak]": (6.0, True, True),
                   "30/30 of 30": (3.0, False, False)}
