"""`flexcli sample` on a PixArt (issue #12): prompts, PixArt's solvers and step counts, run.json records the prompts,
the null caption and the FLOPs with cross-attention; every bad input is one line, exit 2, nothing left behind."""
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flexcli.api import flexify_checkpoint, load_model
from flexcli.cli import app
from flexcli.compute import model_cost, model_step_cost
from flexcli.sampling import resolve_config
from flexcli.text import TextEncoding, save_prompt_embeds
from pixart_helpers import tiny_pixart

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("pixart")
    tiny_pixart(sample_size=8).save_pretrained(d / "t")
    path, _, _ = flexify_checkpoint(d / "t", [4], d / "flex.safetensors", lora_rank=4)
    return path


def _embeds(path, n=2, length=8, width=16, negative=True):
    enc = TextEncoding(torch.randn(n, length, width), torch.ones(n, length, dtype=torch.long), [f"p{i}" for i in range(n)])
    if negative:
        enc.negative = TextEncoding(torch.randn(1, length, width), torch.ones(1, length, dtype=torch.long), [""])
    return save_prompt_embeds(path, enc)


def _sample(ckpt, out, *args):
    return runner.invoke(app, ["sample", str(ckpt), "-o", str(out), *args])


def test_prompt_embeds_run_records_prompts_and_cross_attention_flops(ckpt, tmp_path):
    emb = _embeds(tmp_path / "e.safetensors")
    res = _sample(ckpt, tmp_path / "o", "--prompt-embeds", str(emb), "--solver", "dpm-solver", "-n", "3",
                  "--schedule", "10/10")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "o" / "run.json").read_text())
    assert rec["config"]["steps"] == 20 and rec["schedule"]["cond"] == [4] * 10 + [2] * 10  # DPM-Solver: 20 steps
    assert rec["prompts"] == ["p0", "p1", "p0"] and "negative prompt" in rec["null_caption"]
    assert rec["timesteps"][:2] == [999, 949]
    model = load_model(ckpt)
    cost = model_step_cost(model)
    assert rec["steps"][0]["macs"] == cost(4, 4) and rec["steps"][-1]["macs"] == cost(2, 2)
    one = model_cost(model, 2)  # both branches of a guided step at p=2, cross-attention included
    assert rec["steps"][-1]["macs"] == 2 * one.macs and one.breakdown["cross_attention"] == 2 * 2 * 16 * 120 * 16


def test_default_steps_per_solver():
    for solver, steps in (("iddpm", 100), ("dpm-solver", 20), ("sa-solver", 25), ("ddpm", 250)):
        assert resolve_config({"solver": solver}).steps == steps
    assert resolve_config({"solver": "iddpm", "steps": 7}).steps == 7


# ------------------------------------------------------------------------------------------------ bad input
def _bad(res, out, *words):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()


def test_class_labels_to_a_text_checkpoint(ckpt, tmp_path):
    _bad(_sample(ckpt, tmp_path / "o", "--class-labels", "1,2", "--prompt", "a cat"), tmp_path / "o",
         "--class-labels given to a text-conditional checkpoint")


def test_empty_prompts_file(ckpt, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n  \n")
    _bad(_sample(ckpt, tmp_path / "o", "--prompts-file", str(f), "--text-encoder", "minilm"), tmp_path / "o",
         "holds no prompts")


def test_no_prompts_and_no_text_encoder(ckpt, tmp_path):
    _bad(_sample(ckpt, tmp_path / "o", "--steps", "2"), tmp_path / "o", "needs prompts")
    _bad(_sample(ckpt, tmp_path / "o", "--prompt", "a cat", "--steps", "2"), tmp_path / "o",
         "needs a text encoder", "--text-encoder")


def test_missing_text_encoder_pipeline_or_embeds_paths(ckpt, tmp_path):
    for flag in ("--text-encoder", "--pipeline", "--prompt-embeds"):
        _bad(_sample(ckpt, tmp_path / "o", "--prompt", "a cat", flag, str(tmp_path / "nope")), tmp_path / "o",
             f"{flag} {tmp_path / 'nope'} not found")


def test_pipeline_folder_without_text_encoder(ckpt, tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    _bad(_sample(ckpt, tmp_path / "o", "--prompt", "a cat", "--pipeline", str(tmp_path / "pipe")), tmp_path / "o",
         "pipeline folder without text_encoder/")


def test_embeddings_wider_than_the_caption_projection(ckpt, tmp_path):
    emb = _embeds(tmp_path / "e.safetensors", width=24)
    _bad(_sample(ckpt, tmp_path / "o", "--prompt-embeds", str(emb)), tmp_path / "o",
         "24-wide but the model's caption_channels is 16")


def test_text_encoder_of_the_wrong_width(ckpt, tmp_path):
    _bad(_sample(ckpt, tmp_path / "o", "--prompt", "a cat", "--text-encoder", "minilm", "--steps", "2"),
         tmp_path / "o", "384-d embeddings", "takes 16")


def test_mask_and_embeddings_of_different_lengths(ckpt, tmp_path):
    f = tmp_path / "bad.safetensors"
    save_file({"prompt_embeds": torch.randn(2, 8, 16), "prompt_attention_mask": torch.ones(2, 6, dtype=torch.long)},
              str(f), metadata={"format": "flexcli.prompt_embeds"})
    _bad(_sample(ckpt, tmp_path / "o", "--prompt-embeds", str(f)), tmp_path / "o", "lengths do not match")


def test_guidance_without_a_null_caption(ckpt, tmp_path):
    emb = _embeds(tmp_path / "e.safetensors", negative=False)
    _bad(_sample(ckpt, tmp_path / "o", "--prompt-embeds", str(emb)), tmp_path / "o", "no learned null caption")
    ok = _sample(ckpt, tmp_path / "o", "--prompt-embeds", str(emb), "--cfg-scale", "1", "--steps", "2")
    assert ok.exit_code == 0, ok.output
