"""Every recipe YAML under recipes/ (recursively, every folder) loads and validates against the config of the
command its folder names; the named distill recipes exist and carry the paper's settings."""
from __future__ import annotations

from pathlib import Path

import pytest

from flexcli.train.config import DistillConfig, load_recipe, resolve

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FILES = sorted(p for p in RECIPES.rglob("*") if p.suffix in (".yaml", ".yml"))


def _distill(path: Path) -> None:
    cfg = resolve(path)  # unknown keys, wrong types and out-of-range values raise FlexcliError
    assert isinstance(cfg, DistillConfig) and cfg.recipe == str(path)
    assert set(load_recipe(path)) <= set(cfg.to_dict())
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("flexcli distill" in line for line in header), "the header comment must give the exact command"


def _sample(path: Path) -> None:
    from flexcli.sampling import resolve_config

    resolve_config({"checkpoint": "model.safetensors", "out": "out"}, path)


def _base(path: Path) -> None:
    """recipes/base/: training the built-in default's base model (flexcli builtin train-base) or its domain
    classifier (flexcli builtin train-classifier); every key is known and the header gives the exact command."""
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    if "flexcli builtin train-base" in header:
        from flexcli.builtin.train_base import resolve as resolve_pretrain

        cfg = resolve_pretrain(path)
        assert cfg.recipe == str(path) and set(load_recipe(path)) <= set(cfg.to_dict())
        assert f"flexcli builtin train-base --recipe recipes/base/{path.name}" in header
    elif "flexcli builtin train-classifier" in header:
        from flexcli.builtin.train_classifier import resolve as resolve_classifier

        cfg = resolve_classifier(path)
        assert cfg.recipe == str(path) and set(load_recipe(path)) <= set(cfg.to_dict())
        assert f"flexcli builtin train-classifier --recipe recipes/base/{path.name}" in header
    else:
        raise AssertionError("the header comment must give the exact training command")


VALIDATORS = {"distill": _distill, "sample": _sample, "base": _base}


def test_recipes_found():
    names = {p.relative_to(RECIPES).as_posix() for p in FILES}
    assert {"distill/tiny_cpu.yaml", "distill/dit_xl2_256.yaml", "base/fashion_mnist_dit.yaml",
            "base/fashion_mnist_classifier.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(RECIPES).as_posix())
def test_recipe_is_valid(path):
    kind = path.relative_to(RECIPES).parts[0]
    assert kind in VALIDATORS, f"no validator for recipes/{kind}/: add one to tests/test_recipes.py"
    assert load_recipe(path), f"{path} is empty"
    VALIDATORS[kind](path)


def test_paper_settings_in_the_dit_xl2_recipes():
    cfg = resolve(RECIPES / "distill" / "dit_xl2_256.yaml")  # Table 5 (LoRA fine-tuning)
    assert (cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.batch_size, cfg.ema_decay) == (8e-4, 1e-2, 0.02, 512, 0.9999)
    assert cfg.mode == "lora"
    shared = resolve(RECIPES / "distill" / "dit_xl2_256_shared.yaml")  # Table 4 (class-conditioned)
    assert (shared.lr, shared.weight_decay, shared.ema_decay, shared.mode) == (1e-4, 0.0, 0.9999, "shared")
    assert shared.mmd_weight > 0 and shared.mmd_respacing == 250
