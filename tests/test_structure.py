"""The package's structure (issue #11), read from the code with `ast`: no import cycles, imports only flow
commands -> library -> models/flex/diffusion, the library never talks to the terminal, and modules and
functions stay small enough to read."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flexcli"
CORE = ("flexcli.models", "flexcli.flex", "flexcli.diffusion")  # the ground floor: the method itself
GROUND = ("flexcli.errors", "flexcli.version")  # what anything may import
FRONT = ("flexcli.commands", "flexcli.cli", "flexcli.console", "flexcli.__main__")  # may use typer/rich/stdout


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _imports(path: Path) -> set[str]:
    """Every flexcli module this file imports, at any level (module top or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("flexcli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flexcli"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m in MODULES}


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_import_graph_has_no_cycles():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_method_imports_nothing_above_it():
    """models/, flex/ and diffusion/ import only each other and the ground floor, never the library."""
    bad = [f"{m} -> {n}" for m in GRAPH if _within(m, CORE)
           for n in GRAPH[m] if not _within(n, CORE + GROUND)]
    assert not bad, bad


def test_nothing_imports_the_command_line_but_the_command_line():
    bad = [f"{m} -> {n}" for m in GRAPH if not _within(m, FRONT)
           for n in GRAPH[m] if _within(n, FRONT)]
    assert not bad, bad


def _talks(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"imports {n}" for n in names if n.split(".")[0] in ("typer", "rich", "click")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"print() on line {node.lineno}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys" \
                and node.attr in ("stdout", "stderr"):
            found.append(f"sys.{node.attr} on line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in ("ArgumentParser", "parse_args"):
            found.append(f"argv parsing ({node.attr}) on line {node.lineno}")
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _within(m, FRONT)))
def test_library_never_prints_or_parses_argv(module):
    assert not _talks(MODULES[module]), (module, _talks(MODULES[module]))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_small_modules_and_functions(module):
    tree = ast.parse(MODULES[module].read_text())
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 400, f"{module} has {lines} lines"
    long = [f"{n.name}: {n.end_lineno - n.lineno + 1} lines" for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, (module, long)


def test_the_checks_can_fail():
    """The readers above see real imports, prints and cycles (so passing means something)."""
    assert "flexcli.flex.core" in GRAPH["flexcli.models.dit"]
    assert _talks(ROOT / "console.py")  # the console module does write to the terminal
    GRAPH["flexcli.flex.core"].add("flexcli.models.dit")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["flexcli.flex.core"].discard("flexcli.models.dit")


def test_the_method_reads_in_six_files_under_1000_lines():
    """The README's "How the code is laid out" names the files that hold the method; keep that claim true."""
    import re

    readme = (ROOT.parent / "README.md").read_text()
    section = readme[readme.index("## How the code is laid out"):]
    table = section[:section.index("**A model family**")]
    files = re.findall(r"^\| `(flexcli/[\w/]+\.py)` \|", table, flags=re.M)
    total = sum(len((ROOT.parent / f).read_text().splitlines()) for f in files)
    assert 3 <= len(files) <= 6, files
    assert total < 1000, (total, files)
