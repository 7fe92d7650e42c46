"""Plots drawn from pareto.csv alone (so they can be redrawn from a CSV made elsewhere).

- fid_vs_compute.png: FID vs compute %, every point, the Pareto front highlighted (paper Fig. 6 left).
- fid_vs_cfg.png: FID vs CFG scale, one line per compute level (Fig. 6 middle).
- fid_vs_clip.png: FID vs CLIP score, one line per compute level over CFG scales (Fig. 7 left / 25);
  skipped, with a note, when the CSV has no CLIP values.
"""
from __future__ import annotations

from pathlib import Path


def _levels(df):
    """Rows grouped by compute level (compute fraction rounded to 0.1 %), most compute first."""
    df = df.assign(_level=(df["compute_fraction"] * 100).round(1))
    return [(lvl, g) for lvl, g in sorted(df.groupby("_level"), key=lambda t: -t[0])]


def _level_label(lvl, g) -> str:
    sched = g["schedule"].dropna().unique()
    return f"{lvl:g}% compute" + (f" ({', '.join(map(str, sched))})" if len(sched) else "")


def plot_pareto_csv(csv: str | Path, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Draw the plots from `csv` into `out_dir`; returns (files written, notes about skipped plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    df = pd.read_csv(csv, dtype={"schedule": str, "label": str})
    out_dir = Path(out_dir)
    has = df.dropna(subset=["compute_fraction", "fid"])
    if has.empty:
        return [], ["no plots: no row has both a compute fraction and an FID"]
    files, notes = [_fid_vs_compute(has, out_dir / "fid_vs_compute.png")], []
    with_cfg = has.dropna(subset=["cfg_scale"])
    if with_cfg.empty:
        notes.append("fid_vs_cfg.png skipped: no CFG scale recorded")
    else:
        files.append(_per_level(has, with_cfg, "cfg_scale", out_dir / "fid_vs_cfg.png", "CFG scale $s_{cfg}$",
                                "FID vs guidance scale per compute level"))
    with_clip = has.dropna(subset=["clip"]) if "clip" in has else has.iloc[0:0]
    if with_clip.empty:
        notes.append("fid_vs_clip.png skipped: no CLIP scores (pass --clip-weights and prompts)")
    else:
        files.append(_per_level(has, with_clip, "clip", out_dir / "fid_vs_clip.png",
                                "CLIP score (100 x cosine, higher is better)",
                                "FID vs CLIP score per compute level (points: CFG scales)"))
    return files, notes


def _save(fig, ax, path: Path, xlabel: str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.12)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fid_vs_compute(has, path: Path) -> Path:
    """FID vs compute %, every point, the Pareto front highlighted."""
    import matplotlib.pyplot as plt
    import pandas as pd

    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cfgs = sorted(has["cfg_scale"].dropna().unique())
    for i, c in enumerate(cfgs):
        g = has[has["cfg_scale"] == c]
        ax.scatter(100 * g["compute_fraction"], g["fid"], color=cmap(i / max(1, len(cfgs) - 1)), s=28, alpha=0.8,
                   label=f"CFG {c:g}", zorder=2)
    rest = has[has["cfg_scale"].isna()]
    if not rest.empty:
        ax.scatter(100 * rest["compute_fraction"], rest["fid"], color="grey", s=28, label="no CFG recorded", zorder=2)
    front = has[has["pareto_optimal"].astype(bool)].sort_values("compute_fraction")
    ax.plot(100 * front["compute_fraction"], front["fid"], "-o", color="crimson", mfc="none", ms=11, lw=1.5,
            label="Pareto front", zorder=3)
    for _, r in front.iterrows():
        txt = r["label"] if pd.isna(r["schedule"]) else f"{r['schedule']}" + (
            "" if pd.isna(r["cfg_scale"]) else f" @ {r['cfg_scale']:g}")
        ax.annotate(txt, (100 * r["compute_fraction"], r["fid"]), textcoords="offset points", xytext=(6, 6),
                    fontsize=7, color="crimson")
    return _save(fig, ax, path, "compute (% of FLOPs of the all-powerful schedule)",
                 "FID vs compute, Pareto front highlighted")


def _per_level(has, rows, x: str, path: Path, xlabel: str, title: str) -> Path:
    """FID vs `x` (CFG scale or CLIP score), one line per compute level over the CFG scales."""
    import matplotlib.pyplot as plt
    import pandas as pd

    cmap = plt.get_cmap("viridis")
    n_levels = len(_levels(has))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (lvl, g) in enumerate(_levels(rows)):
        g = g.sort_values("cfg_scale")
        ax.plot(g[x], g["fid"], "-o", color=cmap(i / max(1, n_levels - 1)), label=_level_label(lvl, g))
        if x != "cfg_scale":
            for _, r in g.iterrows():
                if not pd.isna(r["cfg_scale"]):
                    ax.annotate(f"{r['cfg_scale']:g}", (r[x], r["fid"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=7)
    return _save(fig, ax, path, xlabel, title)
