"""Scenario: training throughput of `flexcli distill` at each patch size, and peak memory (CPU or CUDA).

Rows: LoRA mode (§3.2) at each weak size (one step = the frozen teacher's forward at the pretrained size + the
student's forward and backward), and shared mode (§3.1, DiT's loss) at every size. Each scenario runs the real
training loop (`flexcli.train.distill`) in its own subprocess, so that the peak resident memory (ru_maxrss) is
the scenario's own; on CUDA the peak allocated memory is reported too. Steps per second is the median over the
timed steps of the loop's own per-step times (the loss CSV), after `--warmup` steps.

    python benchmarks/distill_throughput.py --out benchmarks/results/distill_throughput_cpu.csv
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import provenance, write_csv



def worker(args) -> dict:
    """One scenario: build, flexify and save a seeded model, train `warmup + steps` steps, report."""
    import numpy as np

    from flexcli.flex.core import flexify_model
    from flexcli.io.checkpoint import save_checkpoint
    from flexcli.models.configs import named_config
    from flexcli.models.dit import DiT
    from flexcli.train import DistillConfig, distill
    from flexcli.train.logs import read_losses

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = named_config(args.model, input_size=args.input_size)
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)
    weak = [p for p in args.patch_sizes if p != cfg.patch_size]
    flexify_model(model, weak, args.mode, args.lora_rank)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = save_checkpoint(model, tmp / "flex.safetensors")
        rng = np.random.default_rng(0)
        np.savez(tmp / "lat.npz", latents=rng.standard_normal((512, cfg.in_channels, cfg.input_size,
                                                                cfg.input_size)).astype(np.float32),
                 labels=rng.integers(0, cfg.num_classes, 512))
        run_cfg = DistillConfig(data=str(tmp / "lat.npz"), steps=args.warmup + args.steps, batch_size=args.batch,
                                lr=1e-4, patch_sizes=[args.patch], ckpt_every=10 ** 9, ema_decay=0.9999)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        distill(ckpt, tmp / "run", config=run_cfg)
        seconds = [float(r["seconds"]) for r in read_losses(tmp / "run" / "loss.csv")][args.warmup:]
    med = statistics.median(seconds)
    return {"steps_per_s": round(1 / med, 3), "ms_per_step": round(1e3 * med, 2),
            "ms_per_step_iqr": round(1e3 * (statistics.quantiles(seconds, n=4)[2] - statistics.quantiles(seconds, n=4)[0]), 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available() else "",
            "threads": torch.get_num_threads(),
            "tokens": (cfg.input_size // args.patch) ** 2, "patch_sizes": weak}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="DiT-Tiny/2")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--modes", nargs="+", default=["lora", "shared"])
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads per scenario (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_throughput.csv"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="lora", help=argparse.SUPPRESS)
    ap.add_argument("--patch", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return args.out

    base = args.patch_sizes[0]
    device = (f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else f"cpu:{platform.processor() or 'cpu'}")
    rows = []
    for mode in args.modes:
        for p in args.patch_sizes:
            if mode == "lora" and p == base:
                continue  # LoRA mode trains only the weak sizes
            cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--patch", str(p), "--model", args.model,
                   "--input-size", str(args.input_size), "--patch-sizes", *map(str, args.patch_sizes),
                   "--lora-rank", str(args.lora_rank), "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append({
                "scenario": "distill_throughput", "mode": mode, "model": args.model, "input_size": args.input_size,
                "patch_size": p, "tokens": r["tokens"], "batch": args.batch,
                "lora_rank": args.lora_rank if mode == "lora" else 0,
                "steps_per_s": r["steps_per_s"], "ms_per_step_median": r["ms_per_step"],
                "ms_per_step_iqr": r["ms_per_step_iqr"], "peak_rss_mib": r["peak_rss_mib"],
                "peak_cuda_mib": r["peak_cuda_mib"], "timed_steps": args.steps, "device": device,
                "threads": r["threads"], "load_avg_1m": round(os.getloadavg()[0], 2),
                **provenance(),
            })
            print(f"{mode:>6} p={p}: {r['steps_per_s']:.2f} steps/s, peak RSS {r['peak_rss_mib']} MiB", file=sys.stderr)
    write_csv(rows, args.out)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
