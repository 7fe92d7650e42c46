"""PixArt on the command line (issue #12): flexify / info / profile know the family; bad input is one line, exit 2
and leaves nothing behind."""
import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from flexcli.cli import app
from flexcli.compute import forward_cost
from flexcli.models.pixart_config import named_pixart_config
from pixart_helpers import tiny_pixart

runner = CliRunner()


def _ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _bad(args, *words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pixart") / "transformer"
    tiny_pixart().save_pretrained(path)
    return path


def test_flexify_and_info(folder, tmp_path):
    out = tmp_path / "flex.safetensors"
    res = _ok(["flexify", str(folder), "--weak-patch", "4", "--lora-rank", "8", "-o", str(out)])
    assert res.stdout.strip() == str(out) and "caption width 16" in res.stderr
    info = json.loads(_ok(["info", str(out), "--json"]).stdout)
    assert info["family"] == "pixart" and info["patch_sizes"] == [2, 4]
    assert info["text"] == {"width": 16, "tokens": 120, "null_caption": "encoded negative prompt"}
    assert not any("attn2" in t for t in info["flex"]["lora"]["targets"])
    text = _ok(["info", str(out)]).stdout
    assert "family: pixart" in text and "text: width 16, 120 caption tokens" in text
    assert "token budget: image tokens p=2: 16, p=4: 4; + 120 caption tokens" in text


def test_flexify_lora_cross_attn_round_trips(folder, tmp_path):
    from flexcli.api import load_model
    from flexcli.flex.layers import lora_layers

    out = tmp_path / "cross.safetensors"
    _ok(["flexify", str(folder), "-p", "4", "--lora-rank", "4", "--lora-cross-attn", "-o", str(out)])
    model = load_model(out)
    assert sum(".attn2." in n for n, _ in lora_layers(model)) == 8
    info = json.loads(_ok(["info", str(out), "--json"]).stdout)
    assert "attn2.to_k" in info["flex"]["lora"]["targets"]
    shared = tmp_path / "shared.safetensors"
    _bad(["flexify", str(folder), "-p", "4", "--mode", "shared", "--lora-cross-attn", "-o", str(shared)],
         "needs --mode lora")
    assert not shared.exists()


def test_lora_cross_attn_on_a_dit_is_refused(tmp_path):
    from flexcli.quickstart import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "dit.safetensors")
    _bad(["flexify", str(ckpt), "-p", "4", "--lora-cross-attn"], "has no cross-attn layers")
    assert sorted(os.listdir(tmp_path)) == ["dit.safetensors"]


def test_pipeline_folder_without_transformer(tmp_path):
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    _bad(["flexify", str(tmp_path / "pipe"), "-p", "4"], "pipeline folder without transformer/")
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


@pytest.mark.parametrize("name,tokens", [("PixArt-XL/2", (256, 64)), ("PixArt-XL/2-512", (1024, 256)),
                                         ("PixArt-XL/2-1024", (4096, 1024)), ("Emu/2", (4096, 1024))])
def test_profile_analytic_knows_the_family(tmp_path, name, tokens):
    res = _ok(["profile", "--model", name, "--analytic", "-o", str(tmp_path / "p.csv")])
    df = pd.read_csv(tmp_path / "p.csv")
    cfg = named_pixart_config(name)
    assert list(df["tokens"]) == list(tokens) and list(df["patch_size"]) == [2, 4]
    assert list(df["macs"]) == [forward_cost(cfg, p).macs for p in (2, 4)]
    assert (df["depth"][0], df["width"][0]) == (cfg.num_layers, cfg.inner_dim)
    assert f"tokens={tokens[0]}" in res.stderr


def test_emu_shape_figures(tmp_path):
    """The paper's Emu shape (24 layers, width 2048, 120 text tokens): 4096 vs 1024 tokens."""
    emu = named_pixart_config("Emu/2")
    p2, p4 = forward_cost(emu, 2), forward_cost(emu, 4)
    assert (p2.tokens, p4.tokens) == (4096, 1024)
    assert round(p2.gmacs, 2) == 7496.12 and round(p4.gmacs, 2) == 1584.37
    assert p2.breakdown["cross_attention"] == 24 * 2 * 4096 * 120 * 2048
    assert round(forward_cost(named_pixart_config("PixArt-XL/2"), 2).gmacs, 2) == 149.05


def test_pixart_recipes_carry_the_papers_settings():
    """recipes/*/pixart_xl2_256_*.yaml: Table 5 for the LoRA distillation; PixArt's solvers, step counts and CFG 4.5,
    and the compute percentage each name states (the exact FLOPs model, LoRAs merged)."""
    import re
    from pathlib import Path

    from flexcli.compute import step_cost_fn
    from flexcli.diffusion.schedule import compute_fraction, parse_schedule
    from flexcli.sampling import resolve_config
    from flexcli.train.config import resolve

    root = Path(__file__).resolve().parents[1] / "recipes"
    d = resolve(root / "distill" / "pixart_xl2_256_lora.yaml")
    assert (d.lr, d.weight_decay, d.grad_clip, d.batch_size, d.ema_decay, d.mode) == (8e-4, 1e-2, 0.02, 512, 0.9999, "lora")
    cost = step_cost_fn(named_pixart_config("PixArt-XL/2"))
    samples = sorted((root / "sample").glob("pixart_xl2_256_*.yaml"))
    assert len(samples) == 4
    for path in samples:
        cfg = resolve_config({"checkpoint": "c", "out": "o"}, path)
        assert (cfg.solver, cfg.steps) in {("iddpm", 100), ("dpm-solver", 20), ("sa-solver", 25)}
        frac = compute_fraction(parse_schedule(cfg.schedule, cfg.steps, 2, 4), cost, 2)
        m = re.search(r"(\d+)pct", path.name)
        assert round(100 * frac) == (int(m.group(1)) if m else 100), path.name
        assert cfg.cfg_scale == (5.0 if "58pct" in path.name else 4.5)
