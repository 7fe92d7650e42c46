"""Every command's --help (the `flexcli builtin ...` ones too) reads whole: each help sentence is shown as written
(rich markup once ate "[default: ...]"), enumerated options list their choices (the library's own), flags show
no <bool>, and the command lists do not cut their one-line summaries."""
import re

import pytest
import typer
from typer.testing import CliRunner

from flexcli.cli import app

runner = CliRunner()
WIDE = {"terminal_width": 1000, "max_content_width": 1000}  # no wrapping: sentences compare as written


def _walk(group, path=()):
    """(command path, command) for every command under `group`, groups included."""
    ctx = typer.main.get_command(app).make_context("flexcli", ["--help"], resilient_parsing=True)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield path + (name,), cmd
        if hasattr(cmd, "list_commands"):
            yield from _walk(cmd, path + (name,))


COMMANDS = dict(_walk(typer.main.get_command(app)))


def _enums() -> dict:
    """(command, option) -> the choices the library accepts."""
    from flexcli.diffusion.samplers import SOLVERS as DIT_SOLVERS
    from flexcli.diffusion.t2i_solvers import T2I_SOLVERS
    from flexcli.diffusion.schedule import GUIDANCE_MODES, ORDERS
    from flexcli.flex.core import MODES
    from flexcli.profiling.latency import DTYPES as PROFILE_DTYPES
    from flexcli.sampling.config import DTYPES, PACKING
    from flexcli.train.config import PRECISIONS, TIMESTEP_SAMPLING

    from flexcli.sampling.config import ALL_SOLVERS  # what flexcli.sampling.config.validate accepts

    SOLVERS = DIT_SOLVERS + tuple(T2I_SOLVERS)  # profile --schedules: the DDPM-family solvers

    return {("sample", "--solver"): ALL_SOLVERS, ("sample", "--guidance"): GUIDANCE_MODES,
            ("sample", "--order"): ORDERS, ("sample", "--packing"): PACKING, ("sample", "--dtype"): tuple(DTYPES),
            ("flexify", "--mode"): MODES, ("distill", "--precision"): PRECISIONS,
            ("distill", "--timesteps"): TIMESTEP_SAMPLING, ("profile", "--solver"): SOLVERS,
            ("profile", "--dtype"): tuple(PROFILE_DTYPES)}


def _norm(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_covered():
    names = {" ".join(p) for p in COMMANDS}
    assert {"flexify", "sample", "distill", "evaluate", "profile", "demo", "info", "export-lora", "quickstart",
            "builtin", "builtin train-base", "builtin train-classifier", "builtin check-base"} <= names


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_reads_whole(path):
    res = runner.invoke(app, [*path, "--help"], **WIDE)
    assert res.exit_code == 0, res.output
    out = _norm(res.output)
    assert "Usage:" in out and "<bool>" not in out, res.output
    assert not re.search(r"\w \.( |$)", out), "a help sentence lost a bracketed part: " + res.output
    cmd = COMMANDS[path]
    for p in cmd.params:
        if getattr(p, "help", None):
            assert _norm(p.help) in out, f"{p.name}: {p.help!r} is not shown whole"
        if getattr(p, "is_flag", False) and not getattr(p, "secondary_opts", None):
            assert re.search(re.escape(p.opts[-1]) + r" {2,}", res.output), f"{p.opts}: a flag shows a type"
    if cmd.help:
        assert _norm(cmd.help.split("\n\n")[0]) in out


@pytest.mark.parametrize("command,option", sorted(_enums()))
def test_enumerated_options_list_the_library_choices(command, option):
    res = runner.invoke(app, [command, "--help"], **WIDE)
    choices = _enums()[(command, option)]
    assert f"{option} <{'|'.join(choices)}>" in res.output, res.output


@pytest.mark.parametrize("path", [()] + sorted(p for p, c in COMMANDS.items() if hasattr(c, "list_commands")),
                         ids=lambda p: " ".join(p) or "flexcli")
def test_command_lists_show_whole_summaries(path):
    """At the default width the summaries wrap instead of ending in '...'."""
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0 and "..." not in res.output.split("Commands:")[1], res.output
    group = COMMANDS[path] if path else typer.main.get_command(app)
    ctx = group.make_context("flexcli", ["--help"], resilient_parsing=True)
    for name in group.list_commands(ctx):
        first = (group.get_command(ctx, name).help or "").strip().splitlines()[0]
        assert _norm(first) in _norm(res.output), (name, first)
