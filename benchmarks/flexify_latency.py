"""Scenario 1: latency of a flexified DiT vs the original, measured as ratios within one run (CPU or CUDA).

Rows: the original model at its pretrained patch size (the baseline), the flexified model in powerful mode
(expected ratio ~1.00), and the weak mode with LoRAs unmerged and merged. Calls are interleaved round-robin
so that drift in machine speed hits every variant alike; the median over repeats is reported.

    python benchmarks/flexify_latency.py --model DiT-S/2 --out benchmarks/results/flexify_latency_cpu.csv
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import provenance, random_dit, write_csv
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import merge_loras
from flexcli.compute import model_cost



def _timer(device: torch.device):
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3
    return run


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--weak-patch", type=int, default=4)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2, help="2 = one CFG step")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flexify_latency.csv"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    original = random_dit(args.model, args.input_size)
    cfg = original.config
    unmerged = flexify_model(copy.deepcopy(original), [args.weak_patch], "lora", args.lora_rank)
    with torch.no_grad():
        for name, p in unmerged.named_parameters():
            if ".lora_B" in name:
                p.normal_(0, 0.02)
    merged = copy.deepcopy(unmerged)
    merge_loras(merged)
    for m in (original, unmerged, merged):
        m.to(device)

    x = torch.randn(args.batch, cfg.in_channels, cfg.input_size, cfg.input_size, device=device)
    t = torch.randint(0, 1000, (args.batch,), device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    variants = {
        "original_powerful": (original, None, model_cost(original, None, args.batch)),
        "flex_powerful": (unmerged, None, model_cost(unmerged, None, args.batch)),
        "flex_weak_unmerged": (unmerged, args.weak_patch, model_cost(unmerged, args.weak_patch, args.batch)),
        "flex_weak_merged": (merged, args.weak_patch, model_cost(merged, args.weak_patch, args.batch, merged=True)),
    }
    timer = _timer(device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            for name, (model, p, _) in variants.items():
                ms = timer(lambda: model(x, t, y, patch_size=p))
                if i >= args.warmup:
                    times[name].append(ms)

    base_ms = statistics.median(times["original_powerful"])
    base_flops = variants["original_powerful"][2].flops
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for name, (model, p, cost) in variants.items():
        med = statistics.median(times[name])
        rows.append({
            "scenario": "flexify_latency", "variant": name, "model": args.model, "input_size": cfg.input_size,
            "patch_size": p or cfg.patch_size, "tokens": cost.tokens, "batch": args.batch,
            "lora_rank": args.lora_rank if "unmerged" in name else 0,
            "gmacs": round(cost.gmacs, 6), "gflops": round(cost.gflops, 6),
            "latency_ms_median": round(med, 3),
            "latency_ms_iqr": round(statistics.quantiles(times[name], n=4)[2] - statistics.quantiles(times[name], n=4)[0], 3),
            "latency_ratio_vs_original": round(med / base_ms, 4),
            "flops_ratio_vs_original": round(cost.flops / base_flops, 4),
            "repeats": args.repeats, "device": f"{device.type}:{device_name}", "threads": torch.get_num_threads(),
            **provenance(),
        })
    write_csv(rows, args.out)
    for r in rows:
        print(f"{r['variant']:>20}: {r['latency_ms_median']:8.2f} ms  latency ratio {r['latency_ratio_vs_original']:.3f}"
              f"  FLOPs ratio {r['flops_ratio_vs_original']:.3f}", file=sys.stderr)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
