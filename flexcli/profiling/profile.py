"""`flexcli profile`: exact FLOPs beside measured latency (paper §4.4, Fig. 9), as a CSV and two plots.

Rows are forward passes (`flexcli.profiling.forward`, `kind="forward"`) or, with `schedules`, whole sampling
runs (`flexcli.profiling.schedules`, `kind="schedule"`); `flexcli.profiling.spec` holds the settings and columns.
"""
from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Callable

from flexcli.version import __version__
from flexcli.profiling import latency as lat
from flexcli.profiling.forward import run_forward
from flexcli.profiling.schedules import run_schedules
from flexcli.profiling.spec import FLOPS_COLUMNS, META_COLUMNS, TIMING_COLUMNS, ProfileSpec, _check_numbers, _git_sha


def run_profile(spec: ProfileSpec, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Profile every row of `spec`; returns the rows (dicts keyed by the CSV columns)."""
    say = progress or (lambda message: None)
    _check_numbers(spec)
    device, notice = lat.resolve_device(spec.device) if not spec.analytic else (None, None)
    dtype = lat.parse_dtype(spec.dtype, device)
    common = {"run_id": uuid.uuid4().hex[:8], "flexcli": __version__, "git_sha": _git_sha(),
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    run = run_schedules if spec.schedules is not None else run_forward
    return run(spec, device, dtype, common, say, notice)  # each checks every input before the notice


def profile(spec: ProfileSpec, out: str | Path, force: bool = False,
            progress: Callable[[str], None] | None = None) -> tuple[list[dict], list[Path]]:
    """Check the outputs, profile, then write the CSV and (timed runs) the two plots drawn from it."""
    from flexcli.profiling.report import resolve_outputs, write_outputs

    outputs = resolve_outputs(out, force, timed=not spec.analytic, roofline=spec.schedules is None)
    rows = run_profile(spec, progress)
    columns = FLOPS_COLUMNS + ([] if spec.analytic else TIMING_COLUMNS) + META_COLUMNS
    return rows, write_outputs(rows, columns, outputs)
