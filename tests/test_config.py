"""The one config resolver (flexcli.config, issue #11): precedence, coercion, errors that name the key and its
source, exclusive key groups, flag-only keys, the validate hook and the saved resolved config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from flexcli import config
from flexcli.errors import FlexcliError

SCHEDULE = ("schedule", "schedule_steps", "compute")


@dataclass
class Cfg:
    steps: int = 250
    lr: float = 1e-4
    ema: bool = True
    name: str = "base"
    limit: int | None = None
    sizes: list[int] = field(default_factory=lambda: [2, 4])
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str | None = None
    schedule_steps: Any = None
    compute: float | None = None
    out: str = ""
    recipe: str | None = None


def _recipe(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(FlexcliError) as e:
        fn(*args, **kwargs)
    return e.value.line()


def test_defaults_then_recipe_then_flags(tmp_path):
    r = _recipe(tmp_path, "steps: 50\nlr: 2.0e-3\nname: recipe\n")
    cfg = config.resolve(Cfg, r, {"lr": 0.5, "name": None, "limit": None})  # None: not given
    assert (cfg.steps, cfg.lr, cfg.name, cfg.limit, cfg.ema) == (50, 0.5, "recipe", None, True)
    assert cfg.recipe == str(r)  # provenance, for dataclasses with a `recipe` field
    assert config.resolve(Cfg) == Cfg()
    base = Cfg(steps=7, name="quick")
    assert config.resolve(Cfg, None, {"lr": 1}, base=base) == Cfg(steps=7, name="quick", lr=1.0)
    assert base == Cfg(steps=7, name="quick")  # not changed in place


def test_values_are_coerced_to_the_field_types(tmp_path):
    r = _recipe(tmp_path, "lr: 1e-4\nsteps: 3.0\nsizes: [8]\nbetas: [1, 0.5]\nname: 12\nlimit: null\n")
    cfg = config.resolve(Cfg, r)
    assert cfg.lr == 1e-4 and type(cfg.lr) is float  # YAML 1.1 reads "1e-4" as a string
    assert cfg.steps == 3 and type(cfg.steps) is int
    assert cfg.sizes == [8] and cfg.betas == [1.0, 0.5] and all(type(b) is float for b in cfg.betas)
    assert cfg.name == "12" and cfg.limit is None
    assert config.resolve(Cfg, None, {"sizes": (4, 8), "schedule_steps": [[2, 4], "x"]}).sizes == [4, 8]
    assert config.resolve(Cfg, None, {"schedule_steps": {"any": "thing"}}).schedule_steps == {"any": "thing"}


@pytest.mark.parametrize("key, value, message", [
    ("lr", "fast", "command line: 'lr' = 'fast' is not a valid float; 'lr' has the wrong type: write a float, "
                   "e.g. lr: 0.0001"),
    ("steps", 2.5, "'steps' = 2.5 is not a valid int"),
    ("steps", True, "'steps' = True is not a valid int"),
    ("ema", "yes", "'ema' = 'yes' is not a valid bool; 'ema' has the wrong type: write a bool, e.g. ema: true"),
    ("sizes", 16, "'sizes' = 16 is not a valid list of int"),
    ("sizes", [4, "x"], "'sizes' = [4, 'x'] is not a valid list of int"),
    ("name", [1], "'name' = [1] is not a valid str"),
    ("limit", "many", "'limit' = 'many' is not a valid int; 'limit' has the wrong type: write an int"),
])
def test_a_wrong_type_names_the_key_and_its_source(key, value, message):
    assert message in _error(config.resolve, Cfg, None, {key: value})


def test_empty_and_unknown_keys_name_the_key_and_the_recipe(tmp_path):
    r = _recipe(tmp_path, "steps:\n")
    assert _error(config.resolve, Cfg, r) == f"recipe {r}: 'steps' must not be empty; give 'steps' a value"
    r = _recipe(tmp_path, "stpes: 5\n")
    line = _error(config.resolve, Cfg, r)
    assert line.startswith(f"recipe {r}: unknown setting 'stpes'; rename or remove unknown keys")
    assert "steps, lr, ema" in line  # the known keys, in field order
    assert "unknown classifier setting 'epoch'" in _error(config.resolve, Cfg, None, {"epoch": 3},
                                                           noun="classifier setting")
    assert _error(config.resolve, Cfg, tmp_path / "missing.yaml").startswith("recipe")
    r = _recipe(tmp_path, "- a list\n")
    assert "not a mapping" in _error(config.resolve, Cfg, r)


def test_exclusive_group_a_higher_level_replaces_the_lower_ones(tmp_path):
    r = _recipe(tmp_path, "schedule: 30/30\nsteps: 50\n")
    cfg = config.resolve(Cfg, r, {"compute": 0.5}, exclusive=[SCHEDULE])
    assert (cfg.schedule, cfg.compute, cfg.steps) == (None, 0.5, 50)
    cfg = config.resolve(Cfg, r, {"schedule_steps": [[2], [2]]}, exclusive=[SCHEDULE])
    assert (cfg.schedule, cfg.schedule_steps) == (None, [[2], [2]])
    cfg = config.resolve(Cfg, r, {"steps": 10, "compute": None}, exclusive=[SCHEDULE])  # not given: kept
    assert (cfg.schedule, cfg.compute) == ("30/30", None)
    base = Cfg(compute=0.7)
    assert config.resolve(Cfg, r, {}, base=base, exclusive=[SCHEDULE]).compute is None  # base < recipe
    assert config.resolve(Cfg, r, {}, base=base).compute == 0.7  # without the group, both stay


def test_exclusive_group_two_keys_in_one_level_is_an_error(tmp_path):
    r = _recipe(tmp_path, "schedule: 3/3\ncompute: 0.5\n")
    assert _error(config.resolve, Cfg, r, exclusive=[SCHEDULE]) == \
        f"recipe {r}: schedule and compute are both given; give only one of schedule, schedule_steps, compute"
    r = _recipe(tmp_path, "schedule: 3/3\n")
    line = _error(config.resolve, Cfg, r, {"compute": 0.5, "schedule_steps": [4]}, exclusive=[SCHEDULE])
    assert line.startswith("command line: schedule_steps and compute are both given")
    assert config.resolve(Cfg, r, {"compute": 0.5, "schedule": None}, exclusive=[SCHEDULE]).compute == 0.5


def test_flag_only_keys_cannot_come_from_a_recipe(tmp_path):
    r = _recipe(tmp_path, "out: somewhere\n")
    assert _error(config.resolve, Cfg, r, flag_only=("out",)) == \
        f"recipe {r}: 'out' cannot be set in a recipe; give it on the command line"
    assert config.resolve(Cfg, None, {"out": "o"}, flag_only=("out",)).out == "o"


def test_validate_hook_sees_the_resolved_config_and_its_sources(tmp_path):
    seen = []

    def validate(cfg, where):
        seen.append((cfg.steps, where))
        if cfg.steps < 1:
            raise FlexcliError(f"{where}: steps must be positive", "set steps >= 1")
    r = _recipe(tmp_path, "steps: 0\n")
    assert config.resolve(Cfg, r, {"steps": 5}, validate=validate).steps == 5  # a flag fixes the recipe
    assert seen == [(5, f"config (recipe {r} < command line)")]
    assert _error(config.resolve, Cfg, r, validate=validate) == \
        f"config (recipe {r}): steps must be positive; set steps >= 1"
    config.resolve(Cfg, validate=validate)
    assert seen[-1] == (250, "config")


def test_save_resolved_round_trips_and_writes_atomically(tmp_path):
    r = _recipe(tmp_path, "steps: 9\nsizes: [8]\n")
    cfg = config.resolve(Cfg, r, {"lr": 0.25})
    path = config.save_resolved(cfg, tmp_path / "config.yaml", "resolved test config\n(defaults < recipe < flags)")
    text = path.read_text()
    assert text.startswith("# resolved test config\n# (defaults < recipe < flags)\nsteps: 9\n")
    assert yaml.safe_load(text)["lr"] == 0.25
    assert config.load_resolved(Cfg, path) == cfg  # `recipe` stays the original recipe's path
    assert config.load_resolved(Cfg, path).recipe == str(r)
    bad = Cfg(schedule_steps=object())  # not YAML: the write fails, the old file and the folder stay as they were
    with pytest.raises(yaml.YAMLError):
        config.save_resolved(bad, path, "x")
    assert path.read_text() == text and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "r.yaml"]


def test_not_a_dataclass():
    with pytest.raises(TypeError):
        config.resolve(dict)
