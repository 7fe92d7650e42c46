"""The Pareto front over (compute fraction, FID), both lower-is-better, and the budget pick.

A point is dominated when another point is no worse in both and strictly better in one. Exact ties (same
compute and same FID) dominate neither each other, so both stay on the front. Points with a missing compute
fraction or FID are never on the front.
"""
from __future__ import annotations

import math

from flexcli.errors import FlexcliError

# pareto.csv columns, in order. compute_fraction: FLOPs relative to the all-powerful schedule (CFG included);
# latency_ratio: measured latency relative to the all-powerful run in the same sweep.
COLUMNS = ["label", "schedule", "cfg_scale", "compute_fraction", "gflops_per_sample", "latency_s", "latency_ratio",
           "fid", "isc", "isc_std", "kid", "kid_std", "precision", "recall", "clip", "num_samples",
           "pareto_optimal", "source"]


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pareto_mask(compute: list[float], fid: list[float]) -> list[bool]:
    """True where (compute[i], fid[i]) is not dominated (lower is better for both)."""
    pts = [(c, f) for c, f in zip(compute, fid)]
    out = []
    for i, (c, f) in enumerate(pts):
        if _missing(c) or _missing(f):
            out.append(False)
            continue
        dominated = any(not (_missing(c2) or _missing(f2)) and c2 <= c and f2 <= f and (c2 < c or f2 < f)
                        for j, (c2, f2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


def pick_budget(rows: list[dict], target: float, eps: float = 1e-9) -> dict:
    """The best Pareto-optimal row with compute_fraction <= target: lowest FID, then lowest compute, then order."""
    if not target > 0:
        raise FlexcliError(f"--target-compute {target} is not a positive fraction", "pass e.g. --target-compute 0.6")
    mask = pareto_mask([r.get("compute_fraction") for r in rows], [r.get("fid") for r in rows])
    front = [r for r, m in zip(rows, mask) if m]
    if not front:
        raise FlexcliError("no row has both a compute fraction and an FID",
                           "evaluate runs whose run.json records the compute, or name samples SCHEDULE@CFG=PATH")
    ok = [r for r in front if r["compute_fraction"] <= target + eps]
    if not ok:
        cheapest = min(front, key=lambda r: r["compute_fraction"])
        raise FlexcliError(f"no measured point at or under compute {target:g}; the cheapest on the front is "
                           f"{cheapest['compute_fraction']:.3f} ({describe(cheapest)})",
                           f"raise --target-compute to at least {cheapest['compute_fraction']:.3f} "
                           "or sweep cheaper schedules")
    return min(ok, key=lambda r: (r["fid"], r["compute_fraction"]))


def describe(row: dict) -> str:
    parts = []
    if not _missing(row.get("schedule")) and row.get("schedule") != "":
        parts.append(f"schedule {row['schedule']}")
    if not _missing(row.get("cfg_scale")):
        parts.append(f"cfg {row['cfg_scale']:g}")
    return ", ".join(parts) or str(row.get("label"))


def sample_flags(row: dict) -> str:
    """The `flexcli sample` options that reproduce a row's (schedule, guidance)."""
    flags = []
    if not _missing(row.get("schedule")) and row.get("schedule") != "":
        flags.append(f"--schedule {row['schedule']}")
    if not _missing(row.get("cfg_scale")):
        flags.append(f"--cfg-scale {row['cfg_scale']:g}")
    return " ".join(flags)


def write_pareto_csv(rows: list[dict], path) -> None:
    """pareto.csv with COLUMNS (extra keys appended), sorted by compute then FID, with the Pareto flag."""
    import pandas as pd

    mask = pareto_mask([r.get("compute_fraction") for r in rows], [r.get("fid") for r in rows])
    rows = [{**r, "pareto_optimal": m} for r, m in zip(rows, mask)]
    extra = [k for r in rows for k in r if k not in COLUMNS]
    df = pd.DataFrame(rows, columns=COLUMNS + list(dict.fromkeys(extra)))
    df = df.sort_values(["compute_fraction", "fid", "label"], na_position="last", kind="stable")
    df.to_csv(path, index=False, float_format="%.6g")


def read_pareto_csv(path) -> list[dict]:
    import pandas as pd

    df = pd.read_csv(path, dtype={"schedule": str, "label": str})
    return [{k: (None if (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()}
            for r in df.to_dict("records")]
