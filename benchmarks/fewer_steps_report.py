"""Issue #16's verdicts from `fewer_steps.py` CSVs: at each compute budget, the best flex point vs the best
fewer-steps point, with FID, class accuracy, precision/recall and their spread over seeds.

    python benchmarks/fewer_steps_report.py benchmarks/results/fewer_steps/final.csv \\
        --out benchmarks/results/fewer_steps --budgets 0.60,0.45,0.30,0.25

A cell is (ckpt, solver, steps, sched, guid, s1, s2, s0); its seeds give mean and sample standard deviation. Only
cells with every seed of the CSV count. A *fewer-steps* cell runs every step at the powerful patch size (its compute
is steps/50); a *flex* cell has at least one weak step. At budget B the candidates are the cells with compute <= B +
0.5 % (so the 60 % budget holds 30 steps = 60.0 %, and 45 % holds 22 steps = 44 %). Best fewer-steps: the lowest
mean FID (each schedule at its best guidance). Best flex: the lowest mean FID among flex cells whose class accuracy
is at most 2 points below the best fewer-steps point's (the target's accuracy condition); the unconstrained
FID-best flex cell and the most accurate fewer-steps cell are reported too. Target: that flex FID is at least 5 %
below. Stretch (B <= 25 %): a flex point within +5 % of the 100 % baseline's FID and -2 points of its accuracy.
Writes OUT/claims.md and OUT/table.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

KEY = ["ckpt", "solver", "steps", "sched", "guid", "s1", "s2", "s0"]
METRICS = ["fid", "class_accuracy", "precision", "recall"]
TOL = 0.005


def cell_stats(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for k in ("s2", "s0"):
        df[k] = df[k].fillna("").astype(str)
    agg = {"compute": ("compute", "first"), "seeds": ("seed", "nunique"), "n": ("num_samples", "first")}
    for m in METRICS:
        agg[f"{m}_mean"] = (m, "mean")
        agg[f"{m}_std"] = (m, "std")
    cells = df.groupby(KEY, as_index=False, dropna=False).agg(**agg)
    cells["flex"] = [not _all_powerful(r.sched, int(r.steps)) for r in cells.itertuples()]
    return cells[cells.seeds == df.seed.nunique()].reset_index(drop=True)


def _all_powerful(sched: str, steps: int) -> bool:
    return sched == f"{steps}/{steps}"


def describe(r) -> str:
    g = f"{r.guid} s1 {r.s1}" + (f" s2 {r.s2}" if str(r.s2) not in ("", "nan") else "") + \
        (f" s0 {r.s0}" if str(r.s0) not in ("", "nan") and str(r.s0) != str(r.s1) else "")
    what = f"{r.steps} {r.solver} steps" + ("" if not r.flex else f", schedule {r.sched}")
    return f"{what} ({g}; {r.ckpt}), {100 * r.compute:.1f} % compute"


def nums(r) -> str:
    return (f"FID {r.fid_mean:.1f} ± {r.fid_std:.1f}, accuracy {r.class_accuracy_mean:.3f} ± "
            f"{r.class_accuracy_std:.3f}, precision {r.precision_mean:.3f}, recall {r.recall_mean:.3f}")


def paired(df: pd.DataFrame, a, b) -> str:
    def sel(r):
        s = df
        for k in KEY:  # empty s2/s0 are NaN in df and "" in the cell table
            s = s[s[k].fillna("").astype(str) == str(getattr(r, k))]
        return s.set_index("seed")
    A, B = sel(a), sel(b)
    d = (B.fid / A.fid - 1).dropna() * 100
    da = (B.class_accuracy - A.class_accuracy).dropna() * 100
    return ", ".join(f"seed {s}: FID {d[s]:+.1f} %, acc {da[s]:+.1f} pt" for s in sorted(d.index))


def lower(gain: float) -> str:
    """A FID change in percent, as '12.1 % lower' or '9.1 % higher'."""
    return f"{abs(gain):.1f} % {'lower' if gain >= 0 else 'higher'}"


def versus(flex_fid: float, rival_fid: float, accuracy_gain: float, tol: float) -> str:
    """Flex against a rival: 'beats' (lower FID, at most `tol` points less accuracy), 'does NOT beat' (higher FID,
    at most `tol` points more) or 'MIXED' (better on one score, worse on the other by more than `tol`)."""
    if flex_fid < rival_fid and accuracy_gain >= -tol - 1e-9:
        return "beats"
    if flex_fid >= rival_fid and accuracy_gain <= tol + 1e-9:
        return "does NOT beat"
    return "MIXED"


def verdicts(df: pd.DataFrame, budgets: list[float]) -> tuple[list[str], list[dict]]:
    cells = cell_stats(df)
    fs = cells[~cells.flex]
    base = fs[fs.compute >= 1 - 1e-9]
    base = base.loc[base.fid_mean.idxmin()] if len(base) else None
    lines, table = [], []
    if base is not None:
        lines += [f"- 100 % baseline: {describe(base)}: {nums(base)}.", ""]
        table.append({"budget": "100 %", "kind": "baseline", "r": base})
    for B in budgets:
        f_c = fs[fs.compute <= B + TOL]
        x_c = cells[cells.flex & (cells.compute <= B + TOL)]
        if f_c.empty or x_c.empty:
            lines.append(f"- **{100 * B:.0f} %**: no complete cells for both kinds.")
            continue
        f = f_c.loc[f_c.fid_mean.idxmin()]
        ok_acc = x_c[x_c.class_accuracy_mean >= f.class_accuracy_mean - 0.02]
        x_any = x_c.loc[x_c.fid_mean.idxmin()]
        x = ok_acc.loc[ok_acc.fid_mean.idxmin()] if len(ok_acc) else x_any
        gain = 100 * (1 - x.fid_mean / f.fid_mean)
        dacc = 100 * (x.class_accuracy_mean - f.class_accuracy_mean)
        reached = gain >= 5 and dacc >= -2
        lines.append(f"- **{100 * B:.0f} % compute: target {'REACHED' if reached else 'NOT reached'}.** Best fewer-steps: "
                     f"{describe(f)}: {nums(f)}. Best flex: {describe(x)}: {nums(x)}. FID {lower(gain)} "
                     f"(target >= 5 %), accuracy {dacc:+.1f} points (target >= -2). Paired per seed (flex vs "
                     f"fewer-steps): {paired(df, f, x)}.")
        if x_any is not x and x_any.name != x.name:
            lines.append(f"  The FID-best flex cell ignoring accuracy: {describe(x_any)}: {nums(x_any)}.")
        f_acc = f_c.loc[f_c.class_accuracy_mean.idxmax()]
        if f_acc.name != f.name:  # a user who asked for a class may prefer the most accurate fewer-steps cell
            dacc2 = 100 * (x.class_accuracy_mean - f_acc.class_accuracy_mean)
            lines.append(f"  The most accurate fewer-steps cell: {describe(f_acc)}: {nums(f_acc)}. Against it the "
                         f"best flex point's FID is {lower(100 * (1 - x.fid_mean / f_acc.fid_mean))} and its "
                         f"accuracy {dacc2:+.1f} points.")
        table += [{"budget": f"{100 * B:.0f} %", "kind": "fewer steps", "r": f},
                  {"budget": f"{100 * B:.0f} %", "kind": "flex", "r": x}]
        if B <= 0.25 + 1e-9 and base is not None:
            good = x_c[(x_c.fid_mean <= 1.05 * base.fid_mean)
                       & (x_c.class_accuracy_mean >= base.class_accuracy_mean - 0.02)]
            best = x_c.loc[x_c.fid_mean.idxmin()] if good.empty else good.loc[good.fid_mean.idxmin()]
            lines.append(f"- **Stretch ({100 * B:.0f} % compute vs the 100 % baseline): "
                         f"{'REACHED' if len(good) else 'NOT reached'}.** {describe(best)}: {nums(best)}; baseline "
                         f"FID {base.fid_mean:.1f} (limit {1.05 * base.fid_mean:.1f}), accuracy "
                         f"{base.class_accuracy_mean:.3f} (limit {base.class_accuracy_mean - 0.02:.3f}).")
    return lines, table


def table_md(table: list[dict]) -> str:
    out = ["| budget | kind | solver | steps | schedule | guidance | s1 | s2 | s0 | ckpt | compute % | FID | class acc | "
           "precision | recall |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        r = t["r"]
        out.append(f"| {t['budget']} | {t['kind']} | {r.solver} | {r.steps} | {r.sched} | {r.guid} | {r.s1} | "
                   f"{r.s2 or '-'} | {r.s0 or '-'} | {r.ckpt} | {100 * r.compute:.1f} | {r.fid_mean:.1f} ± "
                   f"{r.fid_std:.1f} | {r.class_accuracy_mean:.3f} ± {r.class_accuracy_std:.3f} | "
                   f"{r.precision_mean:.3f} ± {r.precision_std:.3f} | {r.recall_mean:.3f} ± {r.recall_std:.3f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budgets", default="0.60,0.45,0.30,0.25")
    ap.add_argument("--title", default="Issue #16: flex schedules vs fewer steps on the built-in default")
    a = ap.parse_args(argv)
    df = pd.concat([pd.read_csv(p, dtype={"s1": str, "s2": str, "s0": str}) for p in a.csv], ignore_index=True)
    lines, table = verdicts(df, [float(b) for b in a.budgets.split(",")])
    head = [f"# {a.title}", "", f"From {', '.join(p.name for p in a.csv)}: {df.seed.nunique()} seeds "
            f"({', '.join(map(str, sorted(df.seed.unique())))}) x {int(df.num_samples.iloc[0])} samples per cell, "
            f"FID/precision/recall in the shipped classifier's features against {int(df.ref_images.iloc[0])} "
            "Fashion-MNIST test images; mean ± standard deviation over seeds.", ""]
    md = table_md(table)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "claims.md").write_text("\n".join(head + lines) + "\n\n" + md)
    (a.out / "table.md").write_text(md)
    print("\n".join(head + lines) + "\n\n" + md, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
