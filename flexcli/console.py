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


# ---------------------------------------------------------------------------------------------------------
def progress_bar(*columns, transient: bool = False, disable: bool = False):
    """A rich progress bar on a terminal; plain progress lines (`PlainProgress`) when stderr is a file or pipe."""
    if err.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=err, transient=transient, disable=disable)
    return PlainProgress(disable=disable)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class PlainProgress:
    """The part of rich's Progress that flexcli uses (add_task, update, start, stop, console, `with`), written as
    plain lines on stderr for logs: `[12:01:05] distill 120/1000 (12%) elapsed 0:01:05 ETA 0:07:56 1.85 it/s`.

    A task prints on its first update, then at most every `interval` seconds (10; FLEXCLI_PROGRESS_INTERVAL), and
    once when it completes. Adding a task prints nothing, so an error before any progress stays one line."""

    def __init__(self, interval: float | None = None, disable: bool = False):
        self.interval = float(os.environ.get("FLEXCLI_PROGRESS_INTERVAL", 10)) if interval is None else interval
        self.disable = disable
        self.console = err
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def add_task(self, description: str, total: float | None = 100, completed: float = 0, **fields) -> int:
        import time

        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": time.monotonic(), "start_done": completed, "last": None, "finished": False}
        return tid

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               advance: float | None = None, description: str | None = None, **fields) -> None:
        import time

        t = self.tasks[task_id]
        for key, value in (("total", total), ("description", description)):
            if value is not None:
                t[key] = value
        if completed is not None:
            t["completed"] = completed
        t["completed"] += advance or 0
        t["fields"].update(fields)
        now = time.monotonic()
        finished = t["total"] is not None and t["completed"] >= t["total"]
        due = t["last"] is None or now - t["last"] >= self.interval
        if self.disable or (finished and t["finished"]) or not (due or finished):
            return
        t["last"], t["finished"] = now, finished
        self._line(t, now - t["start"])

    def _line(self, t: dict, elapsed: float) -> None:
        done, total = t["completed"], t["total"]
        text = f"{t['description']} {done:g}/{total:g}" if total else f"{t['description']} {done:g}"
        if total:
            text += f" ({100 * done / total:.0f}%)"
        text += f" elapsed {_clock(elapsed)}"
        rate = (done - t["start_done"]) / elapsed if elapsed > 0 else 0
        if total and rate > 0 and done < total:
            text += f" ETA {_clock((total - done) / rate)}"
        if rate > 0:
            text += f" {rate:.3g} it/s"
        extra = [str(v) if k == "info" else f"{k}={v}" for k, v in t["fields"].items() if v not in ("", None)]
        log(" ".join([text, *extra]))
