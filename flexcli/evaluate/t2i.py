"""Text-to-image evaluation (paper §4.2, Fig. 7, App. B.5): the CFG grids of the FID-vs-CLIP curves and the
Fig. 7 (middle) table.

* `CFG_GRIDS`: the guidance scales App. B.5 sweeps, for the baseline and every schedule alike
  (`--cfg-scales t2i` for the T2I Transf./PixArt model, `--cfg-scales emu` for Emu).
* `match_table`: the baseline is the all-powerful schedule (compute fraction 1) at a fixed CFG scale (4.5 for
  PixArt, 6.0 for Emu). A schedule matches it at some CFG scale when its FID is at most the baseline's times
  (1 + fid_tol) and its CLIP score at least the baseline's minus clip_tol (CLIP points). Each schedule is shown
  at its best matching CFG scale (lowest FID among its matches; its lowest-FID scale when none matches), and
  the cheapest matching schedule is marked. A "schedule" here is a sweep setting without its scale: the fewer-steps
  baseline ('30/30 of 30') and single cells ('28/14 [guidance weak]') are settings of their own.
* The text-alignment score is CLIP by default; `MatchOptions.score` names another column of the rows (the
  built-in default's `alignment`: the classifier's accuracy on the class the prompt names, in points), with its
  tolerance `clip_tol` in that score's points. Its table and plot are `t2i_match_<score>.csv` and
  `fid_vs_<score>_t2i.png`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from flexcli.evaluate.runs import label_setting

CFG_GRIDS = {
    "t2i": [1.0, 1.125, 1.25, 1.375, 1.5, 1.625, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5,
            7.0, 7.5, 8.0, 8.5],
    "emu": [1.0, 1.5, 2.0, 2.5, 3.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5],
}
BASELINE_CFG = {"t2i": 4.5, "emu": 6.0}
TABLE_COLUMNS = ["role", "schedule", "cfg_scale", "compute_fraction", "fid", "clip", "matches", "cheapest_match"]


@dataclass
class MatchOptions:
    baseline_cfg: float = 4.5
    fid_tol: float = 0.02  # relative: FID <= baseline FID x (1 + fid_tol)
    clip_tol: float = 0.1  # absolute CLIP points: CLIP >= baseline CLIP - clip_tol
    score: str = "clip"  # the alignment column: "clip", or e.g. "alignment" (class accuracy in points)
    score_label: str = "CLIP score"

    def names(self) -> tuple[str, str]:
        """(table file, plot file) names."""
        if self.score == "clip":
            return "t2i_match.csv", "fid_vs_clip_t2i.png"
        return f"t2i_match_{self.score}.csv", f"fid_vs_{self.score}_t2i.png"


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _setting(r: dict) -> str:
    """A row's setting without its CFG scale: its sweep label less '@scale' ('30/30 of 30', '28/14 [guidance
    weak]'), or its schedule."""
    label = r.get("label")
    return label_setting(label) if isinstance(label, str) and "@" in label else r.get("schedule")


def _is_baseline(r: dict) -> bool:
    frac = _num(r.get("compute_fraction"))
    return frac is not None and abs(frac - 1.0) < 1e-9


def match_table(rows: list[dict], opts: MatchOptions) -> list[dict] | None:
    """Fig. 7 (middle): the baseline row, then each other schedule at its best CFG scale; None without a
    baseline at `opts.baseline_cfg` with FID and the score (CLIP). Rows hold the score under `opts.score`."""
    key = opts.score
    scored = [r for r in rows if _num(r.get("fid")) is not None and _num(r.get(key)) is not None
              and _num(r.get("cfg_scale")) is not None]
    base = [r for r in scored if _is_baseline(r) and abs(float(r["cfg_scale"]) - opts.baseline_cfg) < 1e-9]
    if not base:
        return None
    b = base[0]
    fid_max, clip_min = float(b["fid"]) * (1 + opts.fid_tol), float(b[key]) - opts.clip_tol
    out = [{"role": "baseline", "schedule": b.get("schedule"), "cfg_scale": float(b["cfg_scale"]),
            "compute_fraction": 1.0, "fid": float(b["fid"]), key: float(b[key]), "matches": True,
            "cheapest_match": False}]
    schedules = dict.fromkeys(_setting(r) for r in scored if not _is_baseline(r))
    for s in schedules:
        own = [r for r in scored if _setting(r) == s and not _is_baseline(r)]
        ok = [r for r in own if float(r["fid"]) <= fid_max and float(r[key]) >= clip_min]
        best = min(ok or own, key=lambda r: (float(r["fid"]), -float(r[key])))
        out.append({"role": "schedule", "schedule": s, "cfg_scale": float(best["cfg_scale"]),
                    "compute_fraction": _num(best.get("compute_fraction")), "fid": float(best["fid"]),
                    key: float(best[key]), "matches": bool(ok), "cheapest_match": False})
    matching = [r for r in out[1:] if r["matches"] and r["compute_fraction"] is not None]
    if matching:
        min(matching, key=lambda r: (r["compute_fraction"], r["fid"]))["cheapest_match"] = True
    return out


def write_match_table(rows: list[dict], folder: Path, opts: MatchOptions) -> tuple[list[Path], list[str]]:
    """t2i_match.csv (+ the FID-vs-CLIP plot with the baseline and the cheapest match marked), or a note why not."""
    import pandas as pd

    table = match_table(rows, opts)
    table_name, plot_name = opts.names()
    key, label = opts.score, opts.score_label
    if table is None:
        return [], [f"{table_name} skipped: no all-powerful row at CFG {opts.baseline_cfg:g} with FID and {label}"]
    path = Path(folder) / table_name
    columns = [key if c == "clip" else c for c in TABLE_COLUMNS]
    pd.DataFrame(table, columns=columns).to_csv(path, index=False, float_format="%.6g")
    notes = []
    cheapest = [r for r in table if r["cheapest_match"]]
    if cheapest:
        c = cheapest[0]
        notes.append(f"cheapest match of the baseline (CFG {opts.baseline_cfg:g}): schedule {c['schedule']} at CFG "
                     f"{c['cfg_scale']:g}, {100 * c['compute_fraction']:.1f}% compute (FID {c['fid']:.4g}, "
                     f"{label} {c[key]:.4g})")
    else:
        notes.append(f"no schedule matches the baseline at CFG {opts.baseline_cfg:g} within FID x{1 + opts.fid_tol:g} "
                     f"and {label} -{opts.clip_tol:g}")
    return [path, _plot(rows, table, Path(folder) / plot_name, key, label)], notes


def _plot(rows: list[dict], table: list[dict], path: Path, key: str = "clip", label: str = "CLIP score") -> Path:
    """Fig. 7 (left): FID vs CLIP over the CFG scales, the baseline curve and one curve per schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    scored = [r for r in rows if _num(r.get("fid")) is not None and _num(r.get(key)) is not None]
    groups = dict.fromkeys((_setting(r), _is_baseline(r)) for r in scored)
    cmap = plt.get_cmap("viridis")
    for i, (s, base) in enumerate(groups):
        g = sorted((r for r in scored if _setting(r) == s and _is_baseline(r) == base),
                   key=lambda r: float(r["cfg_scale"]))
        frac = _num(g[0].get("compute_fraction"))
        name = f"{'baseline' if base else s} ({100 * frac:.0f}% compute)" if frac is not None else str(s)
        ax.plot([float(r[key]) for r in g], [float(r["fid"]) for r in g], "-o", ms=3,
                color="crimson" if base else cmap(i / max(1, len(groups) - 1)), label=name)
    b = table[0]
    ax.scatter([b[key]], [b["fid"]], marker="*", s=180, color="crimson", zorder=4,
               label=f"baseline at CFG {b['cfg_scale']:g}")
    for r in table[1:]:
        if r["cheapest_match"]:
            ax.scatter([r[key]], [r["fid"]], marker="D", s=60, facecolor="none", edgecolor="black", zorder=4,
                       label=f"cheapest match: {r['schedule']} @ {r['cfg_scale']:g}")
    ax.set_xlabel(f"{label} (higher is better)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(f"FID vs {label} over guidance scales (Fig. 7 left)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
