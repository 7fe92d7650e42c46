"""The built-in default's package (issue #11): the core never imports it, the registry reaches it by name, the
core packages' import graph has no circle through train, metrics, data or builtin, and the `flexcli builtin`
commands render their help and fail with one line."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flexcli import registry
from flexcli.cli import app

PACKAGE = Path(__file__).resolve().parents[1] / "flexcli"
runner = CliRunner()


def _imports(path: Path) -> set[str]:
    """Every flexcli module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "flexcli" or n.startswith("flexcli.")}


def _core_files() -> list[Path]:
    """Everything but the built-in default itself, the commands and the CLI root."""
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in ("builtin", "commands")
            and p.name != "cli.py"]


def test_no_core_module_imports_the_builtin_package():
    files = _core_files()
    assert PACKAGE / "data" / "datasets.py" in files and PACKAGE / "metrics" / "fid.py" in files
    offenders = {str(p.relative_to(PACKAGE)): sorted(n for n in _imports(p) if n.startswith("flexcli.builtin"))
                 for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def _package_graph() -> dict[str, set[str]]:
    """flexcli's top-level packages and modules (train, metrics, sampling.py, ...) -> those they import."""
    def unit(module: str) -> str | None:
        name = module.split(".")[1] if "." in module else ""
        return name if name and ((PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists()) else None
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if rel == ("__init__",):
            continue  # the root's face: `from flexcli import __version__` is no dependency on a package
        here = rel[0]
        for name in _imports(path):
            there = unit(name)
            if there and there != here:
                graph.setdefault(here, set()).add(there)
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return False


@pytest.mark.parametrize("unit", ["train", "metrics", "data", "builtin", "config", "registry", "recipes"])
def test_no_import_circle_through(unit):
    graph = _package_graph()
    assert {"train", "metrics", "data", "builtin"} <= set(graph)
    circles = sorted(other for other in graph.get(unit, ()) if _reaches(graph, other, unit))
    assert circles == [], f"{unit} imports {circles}, which import {unit} back"


def test_the_registry_names_resolve_to_the_builtin_parts():
    from flexcli.builtin import classifier, fashion_mnist

    assert registry.load(registry.FEATURE_EXTRACTORS["fmnist"]) is classifier.register
    assert registry.load(registry.TRAINING_DATA["fashion-mnist"]) is fashion_mnist.training_data
    assert all(t.startswith("flexcli.builtin.") for t in {**registry.FEATURE_EXTRACTORS, **registry.TRAINING_DATA}.values())


def test_named_training_data_goes_through_the_registry():
    from flexcli.data import load_training_data
    from flexcli.errors import FlexcliError
    from flexcli.models.configs import named_config

    with pytest.raises(FlexcliError, match="unknown fashion-mnist split 'val'"):
        load_training_data("fashion-mnist:val", named_config("DiT-FMNIST/4"))
    with pytest.raises(FlexcliError, match="one of: fashion-mnist"):
        load_training_data("no-such-set", named_config("DiT-FMNIST/4"))


# --------------------------------------------------------------------------------------------------
COMMANDS = {"train-base": ["--out", "OUT"], "train-classifier": ["--out", "OUT"], "check-base": ["CKPT", "--out", "OUT"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_builtin_command_help_renders(command):
    res = runner.invoke(app, ["builtin", command, "--help"])
    assert res.exit_code == 0, res.output
    assert "--out" in res.stdout and "Usage:" in res.stdout and f"builtin {command}" in res.stdout


def test_builtin_app_lists_its_commands():
    res = runner.invoke(app, ["builtin", "--help"])
    assert res.exit_code == 0 and all(c in res.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", ["train-base", "train-classifier"])
def test_bad_recipe_path_is_one_line_and_exit_2(command, tmp_path):
    res = runner.invoke(app, ["builtin", command, "--recipe", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: recipe {tmp_path / 'nope.yaml'} not found")
    assert res.stdout == "" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command, recipe, message", [
    ("train-base", "stepz: 3\n", "unknown setting 'stepz'"),
    ("train-classifier", "channels: 16\n", "'channels' has the wrong type"),
])
def test_bad_recipe_content_is_one_line_and_exit_2(command, recipe, message, tmp_path):
    (tmp_path / "r.yaml").write_text(recipe)
    res = runner.invoke(app, ["builtin", command, "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and message in res.stderr
    assert not (tmp_path / "o").exists()


def test_check_base_bad_paths_are_one_line_and_exit_2(tmp_path):
    res = runner.invoke(app, ["builtin", "check-base", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o"),
                              "--classifier", str(tmp_path / "no-classifier.safetensors")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "classifier weights" in res.stderr
    assert "flexcli builtin train-classifier" in res.stderr and not (tmp_path / "o").exists()


def test_demo_bad_recipe_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "r.yaml").write_text("weak_patches: 8\n")
    res = runner.invoke(app, ["demo", "--recipe", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "unknown demo setting 'weak_patches'" in res.stderr
    assert not (tmp_path / "o").exists()
