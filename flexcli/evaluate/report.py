"""Plain-text summaries of pareto.csv rows (the demo prints them on stdout; the library only builds the lines).

`table_lines`: one line per row, most compute first, FID and class accuracy side by side.
`comparison_lines`: the best flex point against the best fewer-steps point at or under a compute budget, each at
its best guidance scale (lowest FID), with both quality axes: a point that wins on FID by giving up class
accuracy is not a win for a user who asked for a class.
"""
from __future__ import annotations

import math

from flexcli.evaluate.pareto import compare_at, describe, fewer_steps, is_baseline


def _f(v, fmt: str, missing: str = "-") -> str:
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _pct(v) -> str:
    return _f(None if v is None else 100 * v, ".1f") + (" %" if v is not None else "")


def table_lines(rows: list[dict]) -> list[str]:
    """A fixed-width table of every row (setting, compute, FID, class accuracy, precision, recall)."""
    rows = sorted(rows, key=lambda r: (-(r.get("compute_fraction") or 0), r.get("fid") or 0))
    names = [("fewer steps: " if fewer_steps(r) else "baseline: " if is_baseline(r) else "flex: ") + describe(r)
             for r in rows]
    w = max([58, *map(len, names)])
    head = f"{'setting':<{w}} {'compute':>8} {'FID':>7} {'class acc':>9} {'precision':>9} {'recall':>6}"
    lines = [head, "-" * len(head)]
    for r, name in zip(rows, names):
        lines.append(f"{name:<{w}} {_pct(r.get('compute_fraction')):>8} {_f(r.get('fid'), '.1f'):>7} "
                     f"{_f(r.get('class_accuracy'), '.3f'):>9} {_f(r.get('precision'), '.3f'):>9} "
                     f"{_f(r.get('recall'), '.3f'):>6}")
    return lines


def _delta(flex: dict, base: dict) -> str:
    parts = []
    if flex.get("fid") and base.get("fid"):
        d = 100 * (flex["fid"] - base["fid"]) / base["fid"]
        parts.append(f"FID {d:+.1f} % ({'better' if d < 0 else 'worse' if d > 0 else 'equal'})")
    fa, ba = flex.get("class_accuracy"), base.get("class_accuracy")
    if fa is not None and ba is not None and not (math.isnan(fa) or math.isnan(ba)):
        d = 100 * (fa - ba)
        parts.append(f"class accuracy {d:+.1f} points ({'better' if d > 0 else 'worse' if d < 0 else 'equal'})")
    return ", ".join(parts) or "no common metric"


def comparison_lines(rows: list[dict], target: float) -> list[str]:
    """Flex vs fewer steps at or under `target` compute: one line each, then the difference."""
    pick = compare_at(rows, target)
    w = max([48, *(len(describe(r)) for r in pick.values() if r is not None)])
    lines = [f"flex vs fewer steps at or under {100 * target:.0f} % compute (each at its best CFG scale by FID):",
             f"  {'':<12} {'setting':<{w}} {'compute':>8} {'FID':>7} {'class acc':>9}"]
    for name, r in (("flex", pick["flex"]), ("fewer steps", pick["fewer_steps"])):
        if r is None:
            lines.append(f"  {name:<12} no measured point at or under {100 * target:.0f} % compute")
            continue
        lines.append(f"  {name:<12} {describe(r):<{w}} {_pct(r['compute_fraction']):>8} {_f(r.get('fid'), '.1f'):>7} "
                     f"{_f(r.get('class_accuracy'), '.3f'):>9}")
    if pick["flex"] is not None and pick["fewer_steps"] is not None:
        lines.append(f"  flex vs fewer steps: {_delta(pick['flex'], pick['fewer_steps'])}")
    return lines
