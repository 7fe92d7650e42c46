"""Every sampling recipe (recipes/sample/, recursively) loads, validates and has a schedule that parses;
precedence is defaults < recipe < CLI flag."""
import re
from pathlib import Path

import pytest

from flexcli.diffusion.schedule import compute_fraction, from_list, parse_schedule
from flexcli.errors import FlexcliError
from flexcli.models.configs import named_config
from flexcli.compute import step_cost_fn
from flexcli.sampling import SampleConfig, resolve_config

RECIPES = sorted((Path(__file__).parent.parent / "recipes" / "sample").rglob("*.yaml"))


def test_there_are_recipes():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_validates(path):
    cfg = resolve_config({"checkpoint": "model.safetensors", "out": "out"}, path)
    if cfg.schedule_steps is not None:
        s = from_list(cfg.schedule_steps, cfg.steps)
    else:
        s = parse_schedule(cfg.schedule or f"{cfg.steps}/{cfg.steps}", cfg.steps, 2, 4)
    assert s.steps == cfg.steps
    m = re.search(r"(\d+)pct", path.name)
    if path.name.startswith("dit_xl2_256") and m:  # the name states the paper's compute percentage
        frac = compute_fraction(s, step_cost_fn(named_config("DiT-XL/2"), shared=True), 2)
        assert round(100 * frac) == int(m.group(1))
    if path.name.startswith("fashion_mnist") and m:  # the built-in default (patch 4, weak 8, LoRAs merged), the
        s = parse_schedule(cfg.schedule, cfg.steps, 4, 8)  # percentage of 50 all-powerful steps
        frac = compute_fraction(s, step_cost_fn(named_config("DiT-FMNIST/4")), 4) * cfg.steps / 50
        assert round(100 * frac) == int(m.group(1)) and cfg.merge_lora


def test_precedence(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("steps: 50\ncfg_scale: 2.0\nschedule: 30/30\n")
    cfg = resolve_config({"checkpoint": "c", "out": "o", "cfg_scale": 3.0, "compute": 0.5}, r)
    assert cfg.steps == 50 and cfg.cfg_scale == 3.0 and cfg.solver == SampleConfig().solver
    assert cfg.compute == 0.5 and cfg.schedule is None  # a CLI schedule choice replaces the recipe's
    r.write_text("stpes: 5\n")
    with pytest.raises(FlexcliError, match="unknown keys"):
        resolve_config({}, r)
    r.write_text("schedule: 3/3\ncompute: 0.5\n")
    with pytest.raises(FlexcliError, match="both given"):
        resolve_config({}, r)
