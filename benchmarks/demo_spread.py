"""The numbers `flexcli demo` prints, with their seed-to-seed spread: the README's table of expected demo output.

Run the demo once per seed (a recipe with `seed: N` changes the distillation's and the samples' seeds), then:

    python benchmarks/demo_spread.py demo-seed0 demo-seed1 demo-seed2 > spread.md

Each row: mean ± standard deviation over the runs of FID and class accuracy (rows matched by label, i.e. by
step count, schedule and CFG scale), then the flex vs fewer-steps comparison at the demo's compare_compute.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from flexcli.evaluate.pareto import compare_at, describe, fewer_steps, is_baseline, read_pareto_csv


def _ms(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{format(statistics.mean(values), fmt)} ± {format(sd, fmt)}"


def spread_table(runs: list[list[dict]]) -> list[str]:
    """Markdown: one line per setting, mean ± sd of FID and class accuracy over the runs."""
    by_label: dict[str, list[dict]] = {}
    for rows in runs:
        for r in rows:
            by_label.setdefault(r["label"], []).append(r)
    lines = ["| setting | compute % | FID | class accuracy | runs |", "|---|---|---|---|---|"]
    for label, rs in sorted(by_label.items(), key=lambda kv: (-kv[1][0]["compute_fraction"], kv[0])):
        kind = "fewer steps" if fewer_steps(rs[0]) else "baseline" if is_baseline(rs[0]) else "flex"
        lines.append(f"| {kind}: {describe(rs[0])} | {100 * rs[0]['compute_fraction']:.1f} | "
                     f"{_ms([r['fid'] for r in rs], '.1f')} | {_ms([r.get('class_accuracy') for r in rs], '.3f')} | "
                     f"{len(rs)} |")
    return lines


def comparison(runs: list[list[dict]], target: float) -> list[str]:
    """Per run, the best flex and fewer-steps points at or under `target` (as the demo's summary picks them)."""
    picks = [compare_at(rows, target) for rows in runs]
    lines = [f"flex vs fewer steps at or under {100 * target:.0f} % compute, per run (FID, class accuracy):"]
    for side in ("flex", "fewer_steps"):
        got = [p[side] for p in picks if p[side] is not None]
        names = sorted({describe(r) for r in got})
        lines.append(f"- {side.replace('_', ' ')}: {'; '.join(names) or 'none'}: FID "
                     f"{_ms([r['fid'] for r in got], '.1f')}, class accuracy "
                     f"{_ms([r.get('class_accuracy') for r in got], '.3f')}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demos", nargs="+", type=Path, help="demo output folders (each holds pareto.csv)")
    ap.add_argument("--compare-compute", type=float, default=None, help="default: the demos' compare_compute")
    args = ap.parse_args(argv)
    runs = [read_pareto_csv(d / "pareto.csv") for d in args.demos]
    target = args.compare_compute
    if target is None:
        import yaml

        target = float(yaml.safe_load((args.demos[0] / "config.yaml").read_text())["compare_compute"])
    print("\n".join(spread_table(runs) + [""] + comparison(runs, target)))


if __name__ == "__main__":
    main()
