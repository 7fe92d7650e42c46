"""CLI output: results on stdout, progress and messages on stderr (rich). Only commands import this."""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
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


def _terminate(signum, frame):
    from flexcli.errors import Interrupted

    raise Interrupted(signum=signum)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises like SIGINT while a command runs, so temporaries are removed on the way out (#17)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def user_errors():
    """Turn FlexcliError into one line on stderr and exit code 2 (a traceback only with FLEXCLI_DEBUG=1);
    SIGINT and SIGTERM into one line and exit code 130 or 143, once temporaries are removed."""
    from flexcli.io.atomic import release_all

    debug = os.environ.get("FLEXCLI_DEBUG") == "1"
    try:
        with _sigterm_as_interrupt():
            yield
    except FlexcliError as e:
        if debug:
            traceback.print_exc()
        _one_line("error", e.line())
        raise typer.Exit(2)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        _one_line("error", f"{what}; {getattr(e, 'detail', '') or 'no output was written'}")
        raise typer.Exit(128 + int(signum))
    except (typer.Exit, SystemExit):
        raise
    except Exception as e:  # an internal error: still one line, with a way to get the details
        if debug:
            traceback.print_exc()
        _one_line("internal error", f"{type(e).__name__}: {e}. Rerun with FLEXCLI_DEBUG=1 for the traceback")
        raise typer.Exit(1)
    finally:
        release_all()
