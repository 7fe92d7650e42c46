"""The outputs of `flexcli profile`: where they go, the CSV, the plots drawn from it, and a readable summary.

Everything is written to temporary names and renamed only when all of it succeeded (`flexcli.io.atomic`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from flexcli.errors import FlexcliError


@dataclass
class Outputs:
    csv: Path
    roofline: Path
    latency: Path
    create_folder: Path | None = None  # a folder to create (atomically) for the outputs
    paths: list[Path] = field(default_factory=list)


def resolve_outputs(out: str | Path, force: bool, timed: bool, roofline: bool = True) -> Outputs:
    """PATH.csv -> that CSV with PNGs beside it; any other PATH is a folder holding profile.csv and the PNGs.

    Timed runs get the latency-vs-FLOPs plot, and the roofline when `roofline` (forward rows: a sampling run
    has no single arithmetic intensity)."""
    from flexcli.io.atomic import check_output

    out = Path(out)
    if out.suffix.lower() == ".csv":
        folder, prefix, csv = out.parent, f"{out.stem}-", out
    else:
        folder, prefix, csv = out, "", out / "profile.csv"
    o = Outputs(csv, folder / f"{prefix}roofline.png", folder / f"{prefix}latency_vs_flops.png")
    o.paths = ([o.csv] + ([o.roofline] if roofline else []) + [o.latency]) if timed else [o.csv]
    if folder.exists() and not folder.is_dir():
        raise FlexcliError(f"output location {folder} is a file, not a folder", "choose another --out")
    if folder.is_dir():
        for path in o.paths:
            check_output(path, force)
    else:
        check_output(folder, force)  # the parent must exist and be writable; the folder is made at the end
        o.create_folder = folder
    return o


def write_outputs(rows: list[dict], columns: list[str], o: Outputs) -> list[Path]:
    """Write the CSV, then draw the plots from that CSV; all to temporary names, renamed only on success."""
    from flexcli.io.atomic import atomic_dir, atomic_path
    from flexcli.profiling import plots

    with contextlib.ExitStack() as stack:
        if o.create_folder is not None:
            tmp_folder = stack.enter_context(atomic_dir(o.create_folder))
            targets = {p: tmp_folder / p.name for p in o.paths}
        else:
            targets = {p: stack.enter_context(atomic_path(p)) for p in o.paths}
        write_csv(rows, columns, targets[o.csv])
        if o.roofline in targets:
            plots.plot_roofline(targets[o.csv], targets[o.roofline])
        if o.latency in targets:
            plots.plot_latency_vs_flops(targets[o.csv], targets[o.latency])
    return o.paths


def write_csv(rows: list[dict], columns: list[str], path: Path) -> Path:
    """Exact integers for macs/flops, full-precision floats, empty cells for NaN."""
    import csv

    def cell(v):
        if isinstance(v, float) and math.isnan(v):
            return ""
        return repr(v) if isinstance(v, float) else v

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(row.get(k, "")) for k in columns})
    return path


def summary_lines(rows: list[dict]) -> list[str]:
    """One readable line per row (GMACs per sample rounded to 2 decimals; ratios to the group's largest row)."""
    from flexcli.profiling.plots import with_ratios
    import pandas as pd

    df = with_ratios(pd.DataFrame(rows))
    lines = []
    for _, r in df.iterrows():
        if r.get("kind") == "schedule":
            line = (f"{r['model']} lora={r['lora']} schedule {r['schedule']} ({r['steps']} steps, {r['packing']}): "
                    f"{r['gflops']:.2f} GFLOPs per sample, {r['batch_flops'] / 1e12:.4g} TFLOPs per batch of "
                    f"{r['batch']}")
        else:
            line = (f"{r['model']} lora={r['lora']} p={r['patch_size']} latent {r['latent']} tokens={r['tokens']}: "
                    f"{r['gmacs']:.2f} GMACs = {r['gflops']:.2f} GFLOPs per sample")
        if "latency_ms" in df.columns:
            line += (f"; {r['latency_ms']:.3f} ms (p25 {r['latency_ms_p25']:.3f}, p75 {r['latency_ms_p75']:.3f}), "
                     f"{r['achieved_tflops']:.3g} TFLOP/s")
            if not math.isnan(r["pct_of_peak"]):
                line += f" = {r['pct_of_peak']:.1f}% of peak"
            line += f"; latency ratio {r['latency_ratio']:.3f} vs FLOPs ratio {r['flops_ratio']:.3f}"
        lines.append(line)
    return lines
