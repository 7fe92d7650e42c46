"""Merge `flexcli profile` CSVs, draw the two plots from the merged CSV, and print issue #5's GPU check.

    python benchmarks/profile_summary.py OUTDIR A.csv B.csv ...   # OUTDIR/profile.csv, roofline.png, latency_vs_flops.png

Forward rows and schedule rows (whole sampling runs, `flexcli profile --schedules`) are printed as two tables.
The check (issue #5 acceptance, on a GPU): for DiT-XL/2 at 512x512 (64x64 latent), bf16 and compiled, the
weak/powerful (p=4 / p=2) latency ratio is at most the FLOPs ratio plus 0.05, for each batch size profiled. The
figures are printed either way; the exit code is 0 unless the inputs are missing.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from flexcli.profiling.plots import plot_latency_vs_flops, plot_roofline, read_profile, with_ratios


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, inputs = Path(argv[0]), [Path(a) for a in argv[1:]]
    out.mkdir(parents=True, exist_ok=True)
    df = pd.concat([read_profile(p) for p in inputs], ignore_index=True)
    csv = out / "profile.csv"
    tmp = csv.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv)
    print(csv)
    print(plot_roofline(csv, out / "roofline.png"))
    print(plot_latency_vs_flops(csv, out / "latency_vs_flops.png"))

    r = with_ratios(read_profile(csv))
    cols = ["model", "latent", "patch_size", "tokens", "dtype", "compile", "gmacs", "latency_ms", "latency_ms_p25",
            "latency_ms_p75", "achieved_tflops", "pct_of_peak", "peak_mem_mb", "flops_ratio", "latency_ratio"]
    sched_cols = ["model", "latent", "lora", "dtype", "compile", "batch", "schedule", "steps", "packing", "gflops",
                  "latency_ms", "latency_ms_min", "repeats", "achieved_tflops", "peak_mem_mb", "flops_ratio",
                  "latency_ratio"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        fwd, sched = r[r["kind"] == "forward"], r[r["kind"] == "schedule"]
        if not fwd.empty:
            print(fwd[[c for c in cols if c in r.columns]].to_string(index=False), file=sys.stderr)
        if not sched.empty:  # whole sampling runs: ratios to the all-powerful schedule of the same packing
            print(sched[[c for c in sched_cols if c in r.columns]].to_string(index=False), file=sys.stderr)
    sel = r[(r["model"] == "DiT-XL/2") & (r["latent"] == "64x64") & (r["dtype"] == "bf16")
            & (r["compile"].astype(str) == "True")]
    sel = sel.assign(patch=sel["patch_size"].astype(str))  # text once a 3-D patch (Wan's "1x2x2") shares the column
    found = False
    for batch, rows in sel.groupby("batch"):  # one check per batch size profiled
        if not {"2", "4"} <= set(rows["patch"]):
            continue
        found = True
        p2, p4 = (rows[rows["patch"] == p].iloc[0] for p in ("2", "4"))
        lat_ratio, flops_ratio = p4["latency_ms"] / p2["latency_ms"], p4["batch_flops"] / p2["batch_flops"]
        verdict = "PASS" if lat_ratio <= flops_ratio + 0.05 else "FAIL"
        print(f"check (issue #5): DiT-XL/2 512x512 bf16 compiled on {p2['device_name']}, batch {batch}: p2 "
              f"{p2['latency_ms']:.3f} ms, p4 {p4['latency_ms']:.3f} ms; latency ratio {lat_ratio:.4f} vs FLOPs ratio "
              f"{flops_ratio:.4f} (+0.05 allowed): {verdict}", file=sys.stderr)
    if not found:
        print("check: no compiled bf16 DiT-XL/2 rows at 512x512 with patch 2 and 4 in these CSVs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
