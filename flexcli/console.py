"""CLI output: results on stdout, progress and messages on stderr (rich). Only commands import this."""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
import traceback

import typer
from rich.console import Console

from flexcli.errors import FlexcliError

err = Console(stderr=True, soft_wrap=True, highlight=False)


def result(line: str) -> None:
    """A result (usually a path) on stdout."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def log(message: str) -> None:
    """A time-stamped progress line on stderr (long jobs: training)."""
    err.print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", markup=False)


def _one_line(prefix: str, message: str) -> None:
    sys.stderr.write(f"{prefix}: {' '.join(message.split())}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def user_errors():
    """Turn FlexcliError into one line on stderr and exit code 2 (a traceback only with FLEXCLI_DEBUG=1)."""
    debug = os.environ.get("FLEXCLI_DEBUG") == "1"
    try:
        yield
    except FlexcliError as e:
        if debug:
            traceback.print_exc()
        _one_line("error", e.line())
        raise typer.Exit(2)
    except KeyboardInterrupt:
        _one_line("error", "interrupted; no output was written")
        raise typer.Exit(130)
    except (typer.Exit, SystemExit):
        raise
    except Exception as e:  # an internal error: still one line, with a way to get the details
        if debug:
            traceback.print_exc()
        _one_line("internal error", f"{type(e).__name__}: {e}. Rerun with FLEXCLI_DEBUG=1 for the traceback")
        raise typer.Exit(1)
