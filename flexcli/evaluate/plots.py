"""Plots drawn from pareto.csv alone (so they can be redrawn from a CSV made elsewhere); evaluate.json beside it,
when there, names the feature space and the reference set in the titles.

- fid_vs_compute.png: FID vs compute %. The fewer-steps baseline (every step powerful, one point per step count
  and guidance scale) in grey squares with its front as a black dashed line; the flex points coloured by guidance
  scale (triangles: weak guidance) with their front in vermillion over it (paper Fig. 6 left, with the baseline
  of App. B, Fig. 27). Points of different CFG scales at one compute are drawn 0.6 % apart, so none hides another.
- accuracy_vs_compute.png: the same for class accuracy (higher is better), when the CSV has it.
- fid_vs_cfg.png: FID vs CFG scale, one line per (step count, schedule) (Fig. 6 middle).
- fid_vs_clip.png: FID vs CLIP score, one line per (step count, schedule) over CFG scales (Fig. 7 left / 25);
  skipped, with a note, when the CSV has no CLIP values.
Axes start at zero (FID) or span 0-1 (accuracy), so the gaps between points read at their true size.
"""
from __future__ import annotations

import json
from pathlib import Path

from flexcli.evaluate.pareto import fewer_steps, is_baseline, pareto_mask

# Okabe-Ito (colour-blind safe), without its yellow: flex points by guidance scale; the two fronts apart.
PALETTE = ["#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#882255", "#44AA99", "#999933"]
FLEX_FRONT, BASE_FRONT, BASE_POINTS = "#D55E00", "#000000", "#8C8C8C"
METRICS = {"fid": ("FID", "lower is better"), "class_accuracy": ("class accuracy", "higher is better")}


def plot_pareto_csv(csv: str | Path, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Draw the plots from `csv` into `out_dir`; returns (files written, notes about skipped plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    csv, out_dir = Path(csv), Path(out_dir)
    df = pd.read_csv(csv, dtype={"schedule": str, "label": str, "guidance": str})
    for col in ("steps", "baseline", "class_accuracy", "clip"):
        if col not in df:
            df[col] = None
    has = df.dropna(subset=["compute_fraction", "fid"])
    if has.empty:
        return [], ["no plots: no row has both a compute fraction and an FID"]
    ctx = _context(csv, has)
    files, notes = [_vs_compute(has, "fid", out_dir / "fid_vs_compute.png", ctx)], []
    acc = has.dropna(subset=["class_accuracy"])
    if not acc.empty:
        files.append(_vs_compute(acc, "class_accuracy", out_dir / "accuracy_vs_compute.png", ctx))
    with_cfg = has.dropna(subset=["cfg_scale"])
    if with_cfg.empty:
        notes.append("fid_vs_cfg.png skipped: no CFG scale recorded")
    else:
        files.append(_per_setting(with_cfg, "cfg_scale", out_dir / "fid_vs_cfg.png", "CFG scale $s_{cfg}$",
                                  "FID vs guidance scale per setting", ctx))
    with_clip = has.dropna(subset=["clip"])
    if with_clip.empty:
        notes.append("fid_vs_clip.png skipped: no CLIP scores (pass --clip-weights and prompts)")
    else:
        files.append(_per_setting(with_clip, "clip", out_dir / "fid_vs_clip.png",
                                  "CLIP score (100 x cosine, higher is better)",
                                  "FID vs CLIP score per setting (points: CFG scales)", ctx))
    return files, notes


def _context(csv: Path, df) -> list[str]:
    """What is measured: the feature space, n and the reference set (from evaluate.json beside the CSV)."""
    info = {}
    if (csv.parent / "evaluate.json").is_file():
        try:
            info = json.loads((csv.parent / "evaluate.json").read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    lines = []
    if info.get("features"):
        desc = info.get("features_description")
        lines.append(f"feature space: {info['features']}" + (f" = {desc}" if desc else ""))
    ns = sorted({int(n) for n in df["num_samples"].dropna()}) if "num_samples" in df else []
    sample = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}" if ns else ""
    ref = f"reference: {Path(info['ref']).name} ({info.get('ref_images', '?')} images)" if info.get("ref") else ""
    lines.append("; ".join(x for x in (sample and f"{sample} samples per point", ref) if x))
    return [x for x in lines if x]


def _title(ax, title: str, ctx: list[str]) -> None:
    import textwrap

    wrapped = [w for line in ctx for w in textwrap.wrap(line, 110)]
    ax.set_title("\n".join([title, *wrapped]), fontsize=9)


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _front(g, metric: str):
    """The rows of `g` on its Pareto front (less compute; lower FID or higher accuracy), by compute."""
    sign = -1 if metric == "class_accuracy" else 1
    mask = pareto_mask(list(g["compute_fraction"]), [sign * v for v in g[metric]])
    return g[mask].sort_values("compute_fraction")


def _setting(r) -> str:
    """'30 steps' for a fewer-steps row; the schedule, with ' of N' at another step count than the base."""
    import pandas as pd

    steps = None if pd.isna(r["steps"]) else int(r["steps"])
    if is_baseline(r) and steps:
        return f"{steps} steps"
    sched = r["label"] if pd.isna(r["schedule"]) else str(r["schedule"])
    base = r.get("_base_steps")
    return sched + (f" of {steps}" if steps and base is not None and not pd.isna(base) and steps != int(base) else "")


def _with_base_steps(df):
    """A `_base_steps` column: the step count of the all-powerful row at compute 1 (if any)."""
    full = df[[is_baseline(r) and abs(r["compute_fraction"] - 1) < 1e-6 for r in df.to_dict("records")]]
    base = full["steps"].dropna()
    return df.assign(_base_steps=int(base.iloc[0]) if len(base) else None)


def _vs_compute(has, metric: str, path: Path, ctx: list[str]) -> Path:
    """`metric` vs compute %: fewer-steps baseline points and front, flex points and front over them."""
    import matplotlib.pyplot as plt

    has = _with_base_steps(has)
    recs = has.to_dict("records")
    base = has[[is_baseline(r) for r in recs]]
    flex = has[[not fewer_steps(r) for r in recs]]  # the base all-powerful row anchors both fronts
    fig, ax = plt.subplots(figsize=(9.6, 5.0))
    if not base.empty:
        ax.scatter(_dodged(base, sorted(has["cfg_scale"].dropna().unique())), base[metric], marker="s", s=34,
                   facecolors="none",
                   edgecolors=BASE_POINTS, linewidths=1.2, label="fewer steps, all powerful (each CFG scale)", zorder=2)
        bf = _front(base, metric)
        ax.plot(100 * bf["compute_fraction"], bf[metric], "--s", color=BASE_FRONT, ms=6, lw=1.4,
                label="fewer-steps baseline front", zorder=3)
        _annotate(ax, bf, metric, BASE_FRONT, below=False)  # the two fronts' labels face away from each other
    pts = flex[[not is_baseline(r) for r in flex.to_dict("records")]]
    cfgs = sorted(has["cfg_scale"].dropna().unique())
    for (weak, c), g in pts.groupby([pts["guidance"].fillna("") == "weak", pts["cfg_scale"].fillna(-1)]):
        colour = PALETTE[cfgs.index(c) % len(PALETTE)] if c in cfgs else "#555555"
        name = "flex schedule" + (f", CFG {c:g}" if c in cfgs else ", no CFG recorded")
        ax.scatter(_dodged(g, cfgs), g[metric], color=colour, marker="^" if weak else "o", s=32, alpha=0.9,
                   edgecolors="white", linewidths=0.5, label=name + (", weak guidance" if weak else ""), zorder=4)
    if not flex.empty:
        ff = _front(flex, metric)
        ax.plot(100 * ff["compute_fraction"], ff[metric], "-o", color=FLEX_FRONT, mfc="none", ms=10, lw=1.6,
                label="flex front", zorder=5)
        _annotate(ax, ff[[not is_baseline(r) for r in ff.to_dict("records")]], metric, FLEX_FRONT, below=True)
    name, better = METRICS[metric]
    ax.set_xlabel("compute (% of the FLOPs of the all-powerful run at the base step count)")
    ax.set_ylabel(f"{name} ({better})")
    ax.set_xlim(0, 105)
    top = float(has[metric].max())
    ax.set_ylim(0, 1.0 if metric == "class_accuracy" else top * 1.12 if top > 0 else 1.0)
    _title(ax, f"{name} vs compute: flex schedules against fewer powerful steps", ctx)
    return _save(fig, ax, path)


def _dodged(g, cfgs: list) -> list[float]:
    """Compute % of each row, spread by 0.6 % per CFG scale around its value so that equal points stay visible."""
    k = len(cfgs)
    return [100 * r["compute_fraction"] + (0.6 * (cfgs.index(r["cfg_scale"]) - (k - 1) / 2) if r["cfg_scale"] in cfgs
                                           else 0.0) for r in g.to_dict("records")]


def _annotate(ax, rows, metric: str, color: str, below: bool) -> None:
    """Label front points once per place, alternating offsets so that neighbours do not overlap."""
    seen = set()
    solvers = rows["solver"].dropna().unique() if "solver" in rows else []
    for _, r in rows.iterrows():
        s0 = r.get("cfg_scale_all_weak")
        more = [r["solver"]] if len(solvers) > 1 and isinstance(r["solver"], str) else []
        more += ["weak"] if r.get("guidance") == "weak" else []  # weak guidance (the triangles)
        more += [f"s0 {s0:g}"] if s0 is not None and s0 == s0 else []  # the all-weak steps' CFG scale
        text = _setting(r) + (f" ({', '.join(more)})" if more else "")
        key = (round(r["compute_fraction"], 4), text)
        if key in seen:
            continue
        step = 11 * (0, 2, 1)[len(seen) % 3]  # neighbours two rows apart
        dy = -13 - step if below else 7 + step
        seen.add(key)
        right = r["compute_fraction"] > 0.9  # near the right edge the text runs leftwards, on the other side
        dy = (7 if below else -13) if right else dy
        ax.annotate(text, (100 * r["compute_fraction"], r[metric]), textcoords="offset points",
                    xytext=(-4 if right else 4, dy), ha="right" if right else "left", fontsize=7, color=color)


def _per_setting(rows, x: str, path: Path, xlabel: str, title: str, ctx: str) -> Path:
    """FID vs `x` (CFG scale or CLIP score), one line per (step count, schedule); fewer-steps lines dashed."""
    import matplotlib.pyplot as plt
    import pandas as pd

    rows = _with_base_steps(rows)
    rows = rows.assign(_setting=[_setting(r) + (", weak guidance" if r.get("guidance") == "weak" else "")
                                 for _, r in rows.iterrows()])
    groups = sorted(rows.groupby("_setting", sort=False), key=lambda t: -t[1]["compute_fraction"].max())
    fig, ax = plt.subplots(figsize=(9.6, 5.0))
    for i, (name, g) in enumerate(groups):
        g = g.sort_values("cfg_scale")
        dashed = any(fewer_steps(r) for r in g.to_dict("records"))
        ax.plot(g[x], g["fid"], "--s" if dashed else "-o", color=PALETTE[i % len(PALETTE)], ms=5,
                label=f"{name} ({100 * g['compute_fraction'].max():.1f}% compute)")
        if x != "cfg_scale":
            for _, r in g.iterrows():
                if not pd.isna(r["cfg_scale"]):
                    ax.annotate(f"{r['cfg_scale']:g}", (r[x], r["fid"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (lower is better)")
    ax.set_ylim(0, max(1.0, float(rows["fid"].max()) * 1.12))
    _title(ax, title, ctx)
    return _save(fig, ax, path)
