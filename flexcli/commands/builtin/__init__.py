"""`flexcli builtin ...`: train and check the built-in Fashion-MNIST default (its base DiT and domain classifier)."""
from __future__ import annotations

import typer

from flexcli.commands.builtin.check_base import check_base
from flexcli.commands.builtin.train_base import train_base
from flexcli.commands.builtin.train_classifier import train_classifier

app = typer.Typer(help="Train and check the built-in Fashion-MNIST default: its base DiT and domain classifier.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
for name, command in (("train-base", train_base), ("train-classifier", train_classifier), ("check-base", check_base)):
    app.command(name, short_help=(command.__doc__ or "").strip().splitlines()[0])(command)
