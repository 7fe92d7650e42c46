"""`flexcli builtin ...`: train and check the built-in Fashion-MNIST default (its base DiT and domain classifier)."""
from __future__ import annotations

import typer

from flexcli.commands.builtin.check_base import check_base
from flexcli.commands.builtin.train_base import train_base
from flexcli.commands.builtin.train_classifier import train_classifier

app = typer.Typer(help="Train and check the built-in Fashion-MNIST default: its base DiT and domain classifier.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
app.command("train-base")(train_base)
app.command("train-classifier")(train_classifier)
app.command("check-base")(check_base)
