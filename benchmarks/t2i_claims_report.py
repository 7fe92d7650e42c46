"""Issue #13's verdicts (the paper's T2I claim, Fig. 7) from `fewer_steps.py --heldout-prompts` CSVs.

    python benchmarks/t2i_claims_report.py benchmarks/results/t2i/final.csv --out benchmarks/results/t2i

Cells and their seed statistics are `fewer_steps_report.cell_stats`'s; `class_accuracy` is the text alignment
(the share of samples the shipped classifier puts in the class the prompt names). A *setting* is a cell without
its guidance scales (ckpt, solver, steps, schedule, guidance); its *best-CFG point* is its lowest-mean-FID cell.
Kinds: `baseline` (50 all-powerful steps), `fewer steps` (fewer all-powerful steps), `weak-last` (segment schedules
that start at the powerful patch), `PI-only` (the checkpoint named by --pi-ckpt: flexified, not distilled) and
`flex` (weak-first, distilled). The verdicts:

1. Fixed CFG (Fig. 7 middle): the baseline at s1 = --baseline-cfg; a match is a flex (weak-first, distilled) cell
   at <= --budget compute with mean FID <= baseline x 1.05 and alignment >= baseline - 1 point. The cheapest
   match, or the closest miss; matches of the other kinds (fewer steps) are listed beside it.
2. Best CFG: the scale of the lowest-FID flex cell at <= --budget vs the baseline's lowest-FID scale.
3. At each budget's best-CFG points: distilled vs PI-only, weak-first vs weak-last, and both vs fewer steps (the
   lowest-FID cell of each kind at <= the budget), with the paired per-seed FID change. Flex beats a rival with
   a lower FID and at most 1 point less alignment, does NOT beat it with a higher FID and at most 1 point more
   alignment, and is MIXED against it otherwise (better on one score, clearly worse on the other).
Writes OUT/claims.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewer_steps_report import TOL, cell_stats, describe, lower, paired, versus  # noqa: E402

BASE_STEPS = 50
ALIGN_TOL = 1.0  # points: a match may lose at most this much alignment (the acceptance)


def kind_of(r, pi_ckpt: str) -> str:
    if not r.flex:
        return "baseline" if int(r.steps) == BASE_STEPS else "fewer steps"
    if r.ckpt == pi_ckpt:
        return "PI-only"
    segments = [seg.split(":")[0] for seg in str(r.sched).split("/")[0].split(",")]
    weak_last = ":" in str(r.sched) and int(segments[0]) < int(segments[-1])  # starts at the smaller, powerful patch
    return "weak-last" if weak_last else "flex"


def nums(r) -> str:
    return (f"FID {r.fid_mean:.1f} ± {r.fid_std:.1f}, alignment {100 * r.class_accuracy_mean:.1f} ± "
            f"{100 * r.class_accuracy_std:.1f} %, precision {r.precision_mean:.3f}, recall {r.recall_mean:.3f}")


def best(cells: pd.DataFrame):
    return None if cells.empty else cells.loc[cells.fid_mean.idxmin()]


def fixed_cfg(cells: pd.DataFrame, cfg: float, budget: float) -> list[str]:
    base = cells[(cells.kind == "baseline") & (cells.s1.astype(float) == cfg)]
    if base.empty:
        return [f"- **Fixed CFG {cfg:g}:** no complete baseline cell at s1 = {cfg:g}."]
    b = base.iloc[0]
    cand = cells[(cells.kind != "baseline") & (cells.compute <= budget + TOL)]
    fid_lim, acc_lim = 1.05 * b.fid_mean, b.class_accuracy_mean - ALIGN_TOL / 100
    match = cand[(cand.fid_mean <= fid_lim) & (cand.class_accuracy_mean >= acc_lim)]
    head = (f"- **Fixed CFG {cfg:g}, a weak-first schedule (<= {100 * budget:.0f} % compute, FID <= {fid_lim:.1f}, "
            f"alignment >= {100 * acc_lim:.1f} %): ")
    lines = [f"- Baseline: {describe(b)}: {nums(b)}."]
    flex, others = match[match.kind == "flex"], match[match.kind != "flex"]
    if not flex.empty:
        m = flex.loc[flex.compute.idxmin()]
        lines.append(head + f"REACHED.** The cheapest match: {describe(m)}: {nums(m)}. {len(flex)} flex cells match.")
    else:
        cand_flex = cand[cand.kind == "flex"]
        if cand_flex.empty:
            return lines + [head + "no flex cells.**"]
        gap = (cand_flex.fid_mean / fid_lim - 1).clip(lower=0) + (acc_lim - cand_flex.class_accuracy_mean).clip(lower=0)
        m = cand_flex.loc[gap.idxmin()]
        lines.append(head + f"NOT reached.** The closest flex cell: {describe(m)}: {nums(m)} (FID "
                     f"{100 * (m.fid_mean / b.fid_mean - 1):+.1f} %, alignment "
                     f"{100 * (m.class_accuracy_mean - b.class_accuracy_mean):+.1f} points).")
        anywhere = cells[(cells.kind == "flex") & (cells.fid_mean <= fid_lim) & (cells.class_accuracy_mean >= acc_lim)]
        if not anywhere.empty:
            a = anywhere.loc[anywhere.compute.idxmin()]
            lines.append(f"  The cheapest flex match at any compute: {describe(a)}: {nums(a)}.")
    if not others.empty:
        o = others.loc[others.compute.idxmin()]
        lines.append(f"  Other kinds that match: {len(others)} cells ({', '.join(sorted(set(others.kind)))}); the "
                     f"cheapest: {describe(o)} [{o.kind}]: {nums(o)}.")
    return lines


def best_cfg(cells: pd.DataFrame, budget: float) -> list[str]:
    b = best(cells[cells.kind == "baseline"])
    f = best(cells[(cells.kind == "flex") & (cells.compute <= budget + TOL)])
    if b is None or f is None:
        return ["- **Best CFG:** no complete cells for both the baseline and flex."]
    ok = float(f.s1) >= float(b.s1)
    scales = ", ".join(f"{float(r.s1):g}: {r.fid_mean:.1f}" for r in
                       cells[cells.kind == "baseline"].sort_values("s1", key=lambda s: s.astype(float)).itertuples())
    return [f"- **Best CFG (flex at <= {100 * budget:.0f} % vs the baseline): {'HOLDS' if ok else 'does NOT hold'}.** "
            f"Flex's lowest FID is at s1 {float(f.s1):g} ({describe(f)}: {nums(f)}); the baseline's at s1 "
            f"{float(b.s1):g} ({nums(b)}). Baseline FID by s1: {scales}."]


def comparisons(df: pd.DataFrame, cells: pd.DataFrame, budget: float) -> list[str]:
    within = cells[cells.compute <= budget + TOL]
    pick = {k: best(within[within.kind == k]) for k in ("flex", "PI-only", "weak-last", "fewer steps")}
    lines = [f"- **At <= {100 * budget:.0f} % compute** (each kind at its lowest-FID cell):"]
    for k, r in pick.items():
        lines.append(f"  - {k}: " + ("no complete cell" if r is None else f"{describe(r)}: {nums(r)}"))
    f = pick["flex"]
    for other in ("PI-only", "weak-last", "fewer steps"):
        o = pick[other]
        if f is None or o is None:
            continue
        gain = 100 * (1 - f.fid_mean / o.fid_mean)
        dacc = 100 * (f.class_accuracy_mean - o.class_accuracy_mean)
        verdict = versus(f.fid_mean, o.fid_mean, dacc, ALIGN_TOL)
        verdict = f"Flex vs {other} is MIXED" if verdict == "MIXED" else f"Flex {verdict} {other}"
        lines.append(f"  - {verdict}: FID {lower(gain)}, alignment {dacc:+.1f} points. "
                     f"Paired ({other} -> flex): {paired(df, o, f)}.")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--baseline-cfg", type=float, default=4.5)
    ap.add_argument("--budget", type=float, default=0.60, help="the claim's compute budget")
    ap.add_argument("--budgets", default="0.85,0.70,0.60,0.50", help="budgets of the kind comparisons")
    ap.add_argument("--pi-ckpt", default="p", help="the --ckpt name of the flexified, undistilled checkpoint")
    ap.add_argument("--title", default="Issue #13: the paper's T2I claim (Fig. 7) on PixArt-FMNIST/4")
    a = ap.parse_args(argv)
    df = pd.concat([pd.read_csv(p, dtype={"s1": str, "s2": str, "s0": str}) for p in a.csv], ignore_index=True)
    cells = cell_stats(df)
    cells["kind"] = [kind_of(r, a.pi_ckpt) for r in cells.itertuples()]
    head = [f"# {a.title}", "", f"From {', '.join(p.name for p in a.csv)}: {df.seed.nunique()} seed(s) "
            f"({', '.join(map(str, sorted(df.seed.unique())))}) x {int(df.num_samples.iloc[0])} held-out prompts per "
            f"cell, FID/precision/recall in the shipped classifier's features against {int(df.ref_images.iloc[0])} "
            "Fashion-MNIST test images, alignment = the classifier's accuracy on the class each prompt names; mean ± "
            "standard deviation over seeds.", ""]
    lines = fixed_cfg(cells, a.baseline_cfg, a.budget) + best_cfg(cells, a.budget)
    for b in (float(x) for x in a.budgets.split(",")):
        lines += comparisons(df, cells, b)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "claims.md").write_text("\n".join(head + lines) + "\n")
    print("\n".join(head + lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
