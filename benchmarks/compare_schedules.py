"""Scenario: compare patch schedules on a tiny model; FLOPs exactly and quality within a tolerance vs a baseline.

A seeded random pixel-space DiT-Tiny/2 (3 x 16 x 16, flexified with weak patch 4, LoRA rank 4) stands in for
the built-in default model until one is trained. Every (schedule, CFG scale) is sampled through flexcli's sample
library with the same seeds, then evaluated by `flexcli evaluate`'s library against a reference set (the
all-powerful schedule with other seeds). Quality columns:
- fid: FID through torch-fidelity on the 64-d first-block features of a randomly initialised, seeded
  InceptionV3 (the code path is real and fast on a CPU; the value only tracks changes in the samples, it is no
  quality claim);
- mse_vs_full: mean squared pixel difference (images in [0, 1]) to the all-powerful samples of the same seeds
  and scale: how much the weak steps change each sample.
Latency is recorded (seconds per sample and the ratio to the all-powerful run in the same process) but never
compared: it depends on the machine.

    python benchmarks/compare_schedules.py --quick        # CI: ~30 s on 2 cores; compares against the baseline
    python benchmarks/compare_schedules.py                # the full scenario
    python benchmarks/compare_schedules.py --quick --update-baseline   # after an intended change
Exit code 1 on a regression: a FLOPs count that differs at all, or a quality value outside the tolerance.
"""
from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE = HERE / "baselines" / "compare_schedules.csv"
SCENARIOS = {
    "quick": dict(steps=10, schedules=["10/10", "6/6", "2/2"], cfg_scales=[1.5, 4.0], num_samples=8),
    "full": dict(steps=50, schedules=["50/50", "36/36", "24/24", "12/12", "0/0"], cfg_scales=[1.5, 4.0],
                 num_samples=16),
}
FEATURE_LAYER = "64"  # Inception's first pooled block: the forward stops there, and FID needs no 2048-d eigvals
# Quality tolerance: |new - baseline| <= ABS + REL * |baseline| (CPU kernels differ slightly between machines).
TOLERANCE = {"fid": (0.05, 1e-3), "mse_vs_full": (0.05, 1e-4)}  # (REL, ABS)
EXACT = ("flops_per_sample", "baseline_flops_per_sample")
COLUMNS = ["scenario", "schedule", "cfg_scale", "steps", "num_samples", "flops_per_sample",
           "baseline_flops_per_sample", "compute_fraction", "fid", "mse_vs_full", "latency_s", "latency_ratio",
           "device", "torch", "git_sha"]


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=HERE).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def tiny_pixel_checkpoint(folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from flexcli.api import flexify_checkpoint
    from flexcli.models.configs import named_config
    from flexcli.models.dit import DiT

    torch.manual_seed(0)
    model = DiT(named_config("DiT-Tiny/2", in_channels=3))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "tiny.safetensors"))
    out = folder / "tiny-flex.safetensors"
    flexify_checkpoint(folder / "tiny.safetensors", [4], out, mode="lora", lora_rank=4)
    return out


def run_scenario(name: str, out: Path, work: Path) -> list[dict]:
    import json

    import numpy as np
    import torch

    from flexcli.evaluate.core import sweep
    from flexcli.evaluate.sampling import library_sample_fn
    from flexcli.metrics.fid import MetricOptions, random_inception_weights

    sc = SCENARIOS[name]
    steps, n = sc["steps"], sc["num_samples"]
    ckpt = tiny_pixel_checkpoint(work)
    full = f"{steps}/{steps}"
    ref_fn = library_sample_fn(ckpt, n, seed=1000, steps=steps, solver="ddim")
    ref = ref_fn(full, sc["cfg_scales"][-1], work / "ref") / "samples.npz"
    weights = random_inception_weights(work / "weights-inception-2015-12-05-6726825d.pth", seed=0)
    layer = {f"feature_layer_{m}": FEATURE_LAYER for m in ("fid", "kid", "prc")}
    opts = MetricOptions(inception_weights=weights, metrics=("fid", "kid", "prc"), kid_subset_size=n // 2,
                         kid_subsets=10, cache_dir=work / "cache", extra=layer)
    fn = library_sample_fn(ckpt, n, seed=0, steps=steps, solver="ddim")
    schedules = sc["schedules"] if full in sc["schedules"] else [full, *sc["schedules"]]
    res = sweep(fn, schedules, sc["cfg_scales"], ref, out / "evaluate", opts, ckpt=ckpt, steps=steps, force=True,
                progress=lambda m: print(m, file=sys.stderr))
    runs = {}
    for r in res.rows:
        run_dir = Path(r["source"]).parent
        rec = json.loads((run_dir / "run.json").read_text())
        runs[(r["schedule"], r["cfg_scale"])] = (r, rec, np.load(run_dir / "samples.npz")["arr_0"])
    rows = []
    device = f"cpu ({torch.get_num_threads()} threads)" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    for (schedule, cfg), (r, rec, arr) in sorted(runs.items(), key=lambda kv: (-kv[1][0]["compute_fraction"], kv[0][1])):
        ref_arr = runs[(full, cfg)][2]
        mse = float(((arr.astype(np.float64) - ref_arr.astype(np.float64)) / 255.0).__pow__(2).mean())
        rows.append({"scenario": name, "schedule": schedule, "cfg_scale": cfg, "steps": steps, "num_samples": n,
                     "flops_per_sample": int(rec["flops"]["total"]),
                     "baseline_flops_per_sample": int(rec["flops"]["baseline_all_powerful"]),
                     "compute_fraction": r["compute_fraction"], "fid": r["fid"], "mse_vs_full": mse,
                     "latency_s": r["latency_s"], "latency_ratio": r["latency_ratio"], "device": device,
                     "torch": torch.__version__, "git_sha": _git_sha()})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def compare(rows: list[dict], baseline: Path) -> list[str]:
    """Regressions of `rows` against the baseline rows of the same scenario (empty list: all good)."""
    with open(baseline, newline="") as f:
        base = [r for r in csv.DictReader(f) if r["scenario"] == rows[0]["scenario"]]
    if not base:
        return [f"{baseline} has no rows for scenario {rows[0]['scenario']} (run with --update-baseline)"]
    now = {(r["schedule"], float(r["cfg_scale"])): r for r in rows}
    problems = []
    for b in base:
        key = (b["schedule"], float(b["cfg_scale"]))
        tag = f"schedule {key[0]} cfg {key[1]:g}"
        if key not in now:
            problems.append(f"{tag}: missing from this run")
            continue
        r = now[key]
        for k in EXACT:
            if int(b[k]) != int(r[k]):
                problems.append(f"{tag}: {k} {r[k]} != baseline {b[k]} (FLOPs must match exactly)")
        for k, (rel, ab) in TOLERANCE.items():
            old, new = float(b[k]), float(r[k])
            if not (abs(new - old) <= ab + rel * abs(old)) or math.isnan(new):
                problems.append(f"{tag}: {k} {new:.6g} vs baseline {old:.6g} (tolerance {ab:g} + {rel:.0%})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the reduced CI scenario")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tmp" / "compare_schedules")
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--update-baseline", action="store_true", help="replace this scenario's rows in --baseline")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        rows = run_scenario(name, args.out, Path(work))
    write_csv(rows, args.out / "compare_schedules.csv")
    print(f"{name}: {len(rows)} rows in {time.perf_counter() - start:.1f} s -> {args.out / 'compare_schedules.csv'} "
          f"(plots in {args.out / 'evaluate'})")
    for r in rows:
        print(f"  {r['schedule']:>7} cfg {r['cfg_scale']:g}: compute {r['compute_fraction']:.4f}, "
              f"GFLOPs/sample {r['flops_per_sample'] / 1e9:.4f}, FID {r['fid']:.4g}, mse_vs_full {r['mse_vs_full']:.3g}, "
              f"latency ratio {r['latency_ratio']:.2f}")
    if args.update_baseline:
        old = []
        if args.baseline.exists():
            with open(args.baseline, newline="") as f:
                old = [r for r in csv.DictReader(f) if r["scenario"] != name]
        write_csv(old + rows, args.baseline)
        print(f"baseline updated: {args.baseline}")
        return 0
    problems = compare(rows, args.baseline)
    if problems:
        print(f"REGRESSION against {args.baseline}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"OK: FLOPs identical and quality within tolerance of {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
