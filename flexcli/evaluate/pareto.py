"""The Pareto front over (compute fraction, FID), both lower-is-better, the fewer-steps baseline and the budget pick.

A point is dominated when another point is no worse in both and strictly better in one. Exact ties (same
compute and same FID) dominate neither each other, so both stay on the front. Points with a missing compute
fraction or FID are never on the front.

The fewer-steps baseline: the rows that run every step at the powerful patch size (`baseline`), one per step
count and guidance scale; their compute is relative to the all-powerful run at the base step count, so 30
powerful steps of 50 cost 0.6. `baseline_front` marks the Pareto front of those rows alone: the line that a
flex schedule has to beat.
"""
from __future__ import annotations

import math
import re

from flexcli.errors import FlexcliError

# pareto.csv columns, in order. compute_fraction: FLOPs relative to the all-powerful schedule at the base step
# count (CFG included); latency_ratio: measured latency relative to the all-powerful row at the base step count
# with the same guidance scale, in the same sweep; class_accuracy: the share of samples that the feature
# extractor's classifier assigns to their requested label (when it has one, e.g. --features fmnist).
COLUMNS = ["label", "steps", "solver", "schedule", "guidance", "cfg_scale", "cfg_scale_all_weak", "compute_fraction",
           "gflops_per_sample", "latency_s", "latency_ratio", "fid", "class_accuracy", "isc", "isc_std", "kid",
           "kid_std", "precision", "recall", "clip", "num_samples", "baseline", "baseline_front", "pareto_optimal",
           "source"]
EPS = 1e-9


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


def is_baseline(row: dict) -> bool:
    """Whether the row belongs to the fewer-steps baseline (every step powerful); False when unknown."""
    v = row.get("baseline")
    return bool(v) and not _missing(v) and str(v).lower() not in ("false", "0")


def fewer_steps(row: dict) -> bool:
    """A baseline row below the base step count (the all-powerful row at the base count is both lines' anchor)."""
    return is_baseline(row) and not _missing(row.get("compute_fraction")) and row["compute_fraction"] < 1 - EPS


def best_at(rows: list[dict], target: float, eps: float = EPS) -> dict | None:
    """The lowest-FID row with compute_fraction <= target (then lowest compute, then order); None if none."""
    ok = [r for r in rows if not _missing(r.get("compute_fraction")) and not _missing(r.get("fid"))
          and r["compute_fraction"] <= target + eps]
    return min(ok, key=lambda r: (r["fid"], r["compute_fraction"])) if ok else None


def pick_budget(rows: list[dict], target: float, eps: float = EPS) -> dict:
    """The best Pareto-optimal row with compute_fraction <= target across every step count, schedule and
    guidance scale: lowest FID, then lowest compute, then order."""
    if not target > 0:
        raise FlexcliError(f"--target-compute {target} is not a positive fraction", "pass e.g. --target-compute 0.6")
    mask = pareto_mask([r.get("compute_fraction") for r in rows], [r.get("fid") for r in rows])
    front = [r for r, m in zip(rows, mask) if m]
    if not front:
        raise FlexcliError("no row has both a compute fraction and an FID",
                           "evaluate runs whose run.json records the compute, or name samples SCHEDULE@CFG=PATH")
    pick = best_at(front, target, eps)
    if pick is None:
        cheapest = min(front, key=lambda r: r["compute_fraction"])
        raise FlexcliError(f"no measured point at or under compute {target:g}; the cheapest on the front is "
                           f"{cheapest['compute_fraction']:.3f} ({describe(cheapest)})",
                           f"raise --target-compute to at least {cheapest['compute_fraction']:.3f} "
                           "or sweep cheaper schedules")
    return pick


def compare_at(rows: list[dict], target: float) -> dict:
    """The best flex point and the best fewer-steps point at or under `target` compute, each at its best
    guidance scale (lowest FID): {"flex": row or None, "fewer_steps": row or None}."""
    return {"flex": best_at([r for r in rows if not is_baseline(r)], target),
            "fewer_steps": best_at([r for r in rows if fewer_steps(r)], target)}


def describe(row: dict) -> str:
    """'schedule 23/23 of 50 steps, cfg 2.5', '30 steps all powerful, dpm++2m, cfg 2.5', 'schedule 30/15 of 50 steps,
    weak guidance, cfg 5, all-weak cfg 8' (the solver and s_cfg0 where the row names them), or the label."""
    parts = []
    steps = None if _missing(row.get("steps")) else int(row["steps"])
    sched = row.get("schedule")
    if is_baseline(row) and steps is not None:
        parts.append(f"{steps} steps all powerful")
    elif not _missing(sched) and sched != "":
        parts.append(f"schedule {sched}" + (f" of {steps} steps" if steps is not None else ""))
    if not _missing(row.get("solver")):
        parts.append(str(row["solver"]))
    if row.get("guidance") == "weak":
        parts.append("weak guidance")
    if not _missing(row.get("cfg_scale")):
        parts.append(f"cfg {row['cfg_scale']:g}")
    if not _missing(row.get("cfg_scale_all_weak")):
        parts.append(f"all-weak cfg {row['cfg_scale_all_weak']:g}")
    return ", ".join(parts) or str(row.get("label"))


def _asymmetric(schedule: str) -> bool:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", schedule)
    return not (m and m[1] == m[2]) and not re.fullmatch(r"\s*\d+\s*", schedule)


def sample_flags(row: dict) -> str:
    """The `flexcli sample` options that reproduce a row's (steps, solver, schedule, guidance)."""
    flags = []
    if not _missing(row.get("steps")):
        flags.append(f"--steps {int(row['steps'])}")
    if not _missing(row.get("solver")):
        flags.append(f"--solver {row['solver']}")
    sched = row.get("schedule")
    if not _missing(sched) and sched != "":
        flags.append(f"--schedule {sched}")
    if not _missing(row.get("cfg_scale")):
        flags.append(f"--cfg-scale {row['cfg_scale']:g}")
    if not _missing(row.get("cfg_scale_all_weak")):
        flags.append(f"--cfg-scale-all-weak {row['cfg_scale_all_weak']:g}")
    if row.get("guidance") == "cfg" and not _missing(sched) and _asymmetric(str(sched)):
        flags.append("--guidance cfg")  # `flexcli sample` guides weakly by default
    return " ".join(flags)


def write_pareto_csv(rows: list[dict], path) -> None:
    """pareto.csv with COLUMNS (extra keys appended), sorted by compute then FID, with the front flags."""
    import pandas as pd

    mask = pareto_mask([r.get("compute_fraction") for r in rows], [r.get("fid") for r in rows])
    base = [is_baseline(r) for r in rows]
    base_mask = pareto_mask([r.get("compute_fraction") if b else None for r, b in zip(rows, base)],
                            [r.get("fid") if b else None for r, b in zip(rows, base)])
    rows = [{**r, "baseline": b, "baseline_front": bm, "pareto_optimal": m}
            for r, b, bm, m in zip(rows, base, base_mask, mask)]
    extra = [k for r in rows for k in r if k not in COLUMNS]
    df = pd.DataFrame(rows, columns=COLUMNS + list(dict.fromkeys(extra)))
    df = df.sort_values(["compute_fraction", "fid", "label"], na_position="last", kind="stable")
    df.to_csv(path, index=False, float_format="%.6g")


def read_pareto_csv(path) -> list[dict]:
    import pandas as pd

    df = pd.read_csv(path, dtype={"schedule": str, "label": str, "guidance": str, "solver": str})
    return [{k: (None if (isinstance(v, float) and math.isnan(v)) else v) for k, v in r.items()}
            for r in df.to_dict("records")]
