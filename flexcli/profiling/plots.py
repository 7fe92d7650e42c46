"""Plots of a `flexcli profile` CSV, drawn from the CSV alone (no model, no torch).

* `plot_roofline(csv, png)`: achieved TFLOP/s vs arithmetic intensity (FLOPs per byte of parameters), with
  the device's peak-compute and memory-bandwidth roofline when the CSV knows them (paper Fig. 9).
* `plot_latency_vs_flops(csv, png)`: latency ratio vs FLOPs ratio with the y = x line. Ratios are taken
  within a group (one `flexcli profile` run, `run_id`, and in it the same model, LoRA state, dtype, compile
  flag, batch, device; for schedule rows also the packing and step count) relative to the group's row with
  the most FLOPs, i.e. its largest token count (for schedule rows, the all-powerful schedule). Packed
  sampling runs are drawn hollow, so that they stay visible over the separate runs they may coincide with.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from flexcli.errors import FlexcliError

GROUP_COLUMNS = ["run_id", "kind", "model", "source", "lora", "depth", "width", "heads", "dtype", "compile",
                 "batch", "device_name", "packing", "steps"]
REQUIRED = ["kind", "model", "batch_flops", "gmacs"]


def read_profile(csv: str | Path) -> pd.DataFrame:
    csv = Path(csv)
    try:
        df = pd.read_csv(csv, keep_default_na=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise FlexcliError(f"cannot read the profile CSV {csv} ({e})", "pass a CSV written by flexcli profile") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise FlexcliError(f"{csv} is not a flexcli profile CSV (no column {missing[0]})",
                           "pass a CSV written by flexcli profile")
    return df


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add `group`, `flops_ratio` and (timed rows) `latency_ratio`, relative to each group's largest row."""
    df = df.copy()
    keys = [c for c in GROUP_COLUMNS if c in df.columns]
    df["group"] = df[keys].map(str).agg(" | ".join, axis=1)
    ref = df.groupby("group")["batch_flops"].transform("idxmax")
    df["flops_ratio"] = df["batch_flops"].to_numpy() / df.loc[ref, "batch_flops"].to_numpy()
    if "latency_ms" in df.columns:
        df["latency_ratio"] = df["latency_ms"].to_numpy() / df.loc[ref, "latency_ms"].to_numpy()
    return df


def _timed(df: pd.DataFrame, csv: Path) -> pd.DataFrame:
    if "latency_ms" not in df.columns or df["latency_ms"].isna().all():
        raise FlexcliError(f"{csv} has no measured latencies (an --analytic run?)", "profile without --analytic")
    return df[df["latency_ms"].notna()]


def _label(group: pd.DataFrame) -> str:
    row = group.iloc[0]
    parts = [str(row["model"])]
    if "latent" in group.columns and group["latent"].nunique() == 1 and row.get("kind") == "forward":
        parts.append(f"{row['latent']} latent")
    if str(row.get("lora", "none")) not in ("none", "nan"):
        parts.append(f"LoRA {row['lora']}")
    parts.append(str(row.get("dtype", "")))
    parts.append("compiled" if str(row.get("compile")) == "True" else "eager")
    parts.append(f"batch {row['batch']}")
    if row.get("kind") == "schedule":
        steps = row.get("steps")
        parts.append(f"sampling {int(steps) if pd.notna(steps) else '?'} steps, {row.get('packing')}")
    return ", ".join(p for p in parts if p and p != "nan")


def _point_label(row: pd.Series) -> str:
    if row.get("kind") == "schedule":
        return str(row.get("schedule"))
    p = row["patch_size"]
    p = int(p) if isinstance(p, (int, float)) else p  # images: an int; video: "1x2x2"
    return f"p{p}, {int(row['tokens'])} tokens"


def _devices(df: pd.DataFrame) -> str:
    names = [str(n) for n in df.get("device_name", pd.Series(dtype=str)).dropna().unique()]
    return " + ".join(names) if names else "unknown device"


def _figure(size=(8, 5.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, png: str | Path) -> Path:
    fig.savefig(png, format="png")
    return Path(png)


def plot_roofline(csv: str | Path, png: str | Path) -> Path:
    """Fig. 9 style: achieved TFLOP/s vs FLOPs per byte of parameters, log-log, with the roofline if known."""
    csv = Path(csv)
    df = _timed(read_profile(csv), csv)
    df = df[df["kind"] == "forward"]
    if df.empty:
        raise FlexcliError(f"{csv} has no timed forward rows", "profile with --patch-sizes or --seq-lengths")
    fig, ax = _figure()
    markers = "osD^vP*X"
    for i, (_, group) in enumerate(with_ratios(df).groupby("group", sort=False)):
        ax.plot(group["arithmetic_intensity"], group["achieved_tflops"], linestyle="none", marker=markers[i % 8],
                markersize=7, label=_label(group))
        for _, r in group.iterrows():
            ax.annotate(_point_label(r), (r["arithmetic_intensity"], r["achieved_tflops"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    x_lo, x_hi = df["arithmetic_intensity"].min() / 3, df["arithmetic_intensity"].max() * 3
    peaks = df[["peak_tflops", "peak_bandwidth_tbps"]].dropna(how="all").drop_duplicates()
    drawn = False
    for _, pk in peaks.iterrows():
        compute, bandwidth = pk["peak_tflops"], pk["peak_bandwidth_tbps"]
        if not math.isnan(compute) and not math.isnan(bandwidth):
            ridge = compute / bandwidth
            x_lo, x_hi = min(x_lo, ridge / 10), max(x_hi, ridge * 3)
            ax.plot([x_lo, ridge], [x_lo * bandwidth, compute], color="grey", linewidth=1.5,
                    label=f"memory bandwidth {bandwidth:g} TB/s")
            ax.plot([ridge, x_hi], [compute, compute], color="black", linewidth=1.5,
                    label=f"peak compute {compute:g} TFLOP/s")
            drawn = True
        elif not math.isnan(compute):
            ax.axhline(compute, color="black", linewidth=1.5, label=f"peak compute {compute:g} TFLOP/s")
            drawn = True
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of parameters)")
    ax.set_ylabel("achieved TFLOP/s")
    note = "" if drawn else "\n(no peak known for this device: pass --peak-tflops/--peak-bandwidth for the roofline)"
    ax.set_title(f"Roofline, one forward pass: {_devices(df)} (points: patch size, tokens){note}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    return _save(fig, png)


def plot_latency_vs_flops(csv: str | Path, png: str | Path) -> Path:
    """Latency ratio vs FLOPs ratio per group (relative to its largest row), with y = x."""
    csv = Path(csv)
    df = with_ratios(_timed(read_profile(csv), csv))
    fig, ax = _figure((7, 7))
    markers = "osD^vP*X"
    for i, (_, group) in enumerate(df.groupby("group", sort=False)):
        # packed sampling runs hollow and larger: without mixed-size steps they share the separate runs' timing
        hollow = group["kind"].iloc[0] == "schedule" and str(group["packing"].iloc[0]) == "packed"
        style = {"markerfacecolor": "none", "markeredgewidth": 1.5, "markersize": 11} if hollow else {"markersize": 7}
        ax.plot(group["flops_ratio"], group["latency_ratio"], linestyle="none", marker=markers[i % 8],
                label=_label(group), **style)
        for _, r in group.iterrows():
            if r["flops_ratio"] != 1.0:  # the references all sit at (1, 1): labelled once below
                ax.annotate(_point_label(r), (r["flops_ratio"], r["latency_ratio"]), fontsize=7,
                            xytext=(4, -10), textcoords="offset points")
    ax.annotate("reference: each group's\nlargest-FLOPs row", (1, 1), fontsize=7, xytext=(-12, -30),
                textcoords="offset points", ha="right")
    top = 1.05 * max(1.0, df["flops_ratio"].max(), df["latency_ratio"].max())
    ax.plot([0, top], [0, top], color="black", linestyle="--", linewidth=1,
            label="y = x (latency proportional to FLOPs)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    sampling = (df["kind"] == "schedule").any()
    ax.set_xlabel("FLOPs ratio (to the group's largest row: most tokens"
                  + (",\nor for sampling runs the all-powerful schedule)" if sampling else ")"))
    ax.set_ylabel("latency ratio (median latency, same reference)")
    what = {(True, False): "forward passes", (False, True): "whole sampling runs (points: schedules)",
            (True, True): "forward passes and whole sampling runs"}[((df["kind"] == "forward").any(), sampling)]
    ax.set_title(f"Latency vs FLOPs, {what}: {_devices(df)}\n(below the line: latency falls faster than FLOPs)",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=1)
    return _save(fig, png)
