"""The `flexcli` command line: one thin module per command under flexcli/commands/."""
from __future__ import annotations

import typer

from flexcli.version import __version__
from flexcli.commands.builtin import app as builtin_app
from flexcli.commands.demo import demo
from flexcli.commands.distill import distill
from flexcli.commands.evaluate import evaluate
from flexcli.commands.export_lora import export_lora
from flexcli.commands.flexify import flexify
from flexcli.commands.info import info
from flexcli.commands.profile import profile
from flexcli.commands.quickstart import quickstart
from flexcli.commands.sample import sample

app = typer.Typer(help="Flexible-patch Diffusion Transformers (FlexiDiT): convert, inspect and benchmark DiTs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command()(flexify)
app.command()(info)
app.command("export-lora")(export_lora)
app.command()(profile)
app.command()(quickstart)
app.command()(evaluate)
app.command()(sample)
app.command()(distill)
app.command()(demo)
app.add_typer(builtin_app, name="builtin")


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version.")) -> None:
    pass


def main() -> None:
    app()


if __name__ == "__main__":
    main()
