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

# Help is plain text (rich_markup_mode=None): rich would read "[default: x]" in a help string as markup and drop
# it, and would show <bool> beside flags. Enumerated options list their choices in their metavar.
app = typer.Typer(help="Flexible-patch Diffusion Transformers (FlexiDiT): convert, inspect and benchmark DiTs.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  context_settings={"max_content_width": 120})  # as wide as the terminal, up to 120 columns


def short_help(fn) -> str:
    """The first line of a command's docstring, whole (click would cut it to fit the command list)."""
    return (fn.__doc__ or "").strip().splitlines()[0]


for name, command in (("flexify", flexify), ("info", info), ("export-lora", export_lora), ("profile", profile),
                      ("quickstart", quickstart), ("evaluate", evaluate), ("sample", sample), ("distill", distill),
                      ("demo", demo)):
    app.command(name, short_help=short_help(command))(command)
app.add_typer(builtin_app, name="builtin",
              short_help="Train and check the built-in Fashion-MNIST default: its base DiT and domain classifier.")


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
