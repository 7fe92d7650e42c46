"""Scenario 2: end-to-end sampling time of patch schedules at about 100 / 75 / 50 % compute vs their FLOPs ratio.

A random DiT is flexified (LoRA mode, one weak size); `flexcli.sampling` picks the x/x schedule that meets each
compute target (`--compute`) with the exact FLOPs model, then whole sampling runs (noise, every step with
classifier-free guidance, the solver) are timed, interleaved round-robin so that drift in machine speed hits
every schedule alike; the median over repeats is reported. One CSV row per schedule: the FLOPs ratio and the
measured time ratio vs the all-powerful schedule, and how far the time ratio lies above the FLOPs ratio.

At tiny sizes per-step Python and kernel-launch overhead does not shrink with the patch size, so the time ratio
stays above the FLOPs ratio; choose a model where compute dominates (DiT-S/2 at 32x32 on a CPU).

    python benchmarks/sample_schedules.py --model DiT-S/2 --out benchmarks/results/sample_schedules_cpu.csv

`--checkpoint` times a real flexified checkpoint instead, and `--schedules` names the schedules (as `flexcli sample
--schedule` reads them; `--weak-guidance` lists those to run with §3.4's weak guidance); the first one is the
reference, e.g. issue #7's table:

    python benchmarks/sample_schedules.py --checkpoint CKPT --merge-lora --steps 50 --num-samples 100 \
        --schedules 50/50,40/40,30/30,23/23,20/20,10/10,0/0,30/15 --weak-guidance 30/15 --threads 2 --out OUT.csv

Text-conditional checkpoints (PixArt, Wan) take `--prompt`, encoded once by the packaged all-MiniLM-L6-v2; a video
checkpoint flexified with both weak modes times segment schedules (issue #15's wall time vs FLOPs):

    python benchmarks/sample_schedules.py --checkpoint FLEX_BOTH --merge-lora --solver flow-unipc --steps 20 \
        --num-samples 50 --prompt "a photo of a sneaker" --threads 2 --out benchmarks/results/video/latency_cpu.csv \
        --schedules "1x4x4:20;2x4x4:10,1x4x4:10;2x4x4:20;1x8x8:10,1x4x4:10;1x8x8:20"
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import provenance, random_dit, write_csv
from flexcli.api import load_model
from flexcli.flex.core import flexify_model
from flexcli.flex.layers import merge_loras
from flexcli.diffusion.schedule import parse_schedules
from flexcli.sampling import SampleConfig, make_plan, sample_latents



def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="DiT-S/2")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--weak-patch", type=int, default=4)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--merge-lora", action="store_true", help="merge LoRAs into per-size weights (no LoRA FLOPs)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a flexified checkpoint instead of a random model")
    ap.add_argument("--targets", default="1.0,0.75,0.5", help="compute fractions")
    ap.add_argument("--schedules", default=None, help="x/y,... (as `flexcli sample --schedule`) instead of --targets; "
                    "the first is the reference")
    ap.add_argument("--weak-guidance", default=None, help="the schedules (of --schedules) to run with weak guidance")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--solver", default="ddpm")
    ap.add_argument("--num-samples", type=int, default=4, help="one batch; CFG doubles it")
    ap.add_argument("--packing", default="separate")
    ap.add_argument("--prompt", default=None, help="text-conditional checkpoints: the prompt of every sample "
                    "(encoded by the packaged all-MiniLM-L6-v2)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sample_schedules.csv"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.checkpoint is not None:
        model = load_model(args.checkpoint, merge_lora=args.merge_lora)
        args.model, args.weak_patch = str(args.checkpoint), min(model.patch_sizes[1:], default=None)
        args.lora_rank = getattr(model.flex, "lora_rank", 0)
    else:
        model = random_dit(args.model, args.input_size)
        flexify_model(model, [args.weak_patch], "lora", args.lora_rank)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B" in name:
                    p.normal_(0, 0.02)
        if args.merge_lora:
            merge_loras(model)
    cfg = model.config
    model.to(device).eval()

    common = dict(num_samples=args.num_samples, steps=args.steps, solver=args.solver, cfg_scale=4.0,
                  batch_size=args.num_samples, packing=args.packing, merge_lora=args.merge_lora, seed=0,
                  **({"prompts": [args.prompt], "text_encoder": "minilm"} if args.prompt else {}))
    runs = {}
    if args.schedules:
        weak = parse_schedules(args.weak_guidance) or []
        for schedule in parse_schedules(args.schedules):
            guidance = "weak" if schedule in weak else "cfg"
            sc = SampleConfig(schedule=schedule, guidance=guidance, **common)
            runs[schedule + (":weak" if guidance == "weak" else "")] = (sc, make_plan(sc, model))
    else:
        for target in [float(s) for s in args.targets.split(",")]:
            sc = SampleConfig(compute=target, **common)
            runs[target] = (sc, make_plan(sc, model))
    indices = list(range(args.num_samples))
    times: dict[float, list[float]] = {k: [] for k in runs}
    for i in range(args.warmup + args.repeats):
        for target, (sc, plan) in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            sample_latents(model, sc, plan, indices, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[target].append(time.perf_counter() - start)

    base = next(iter(runs)) if args.schedules else max(runs)  # the reference: first schedule / highest compute
    base_s = statistics.median(times[base])
    base_macs = sum(runs[base][1].step_macs)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for target, (sc, plan) in runs.items():
        med = statistics.median(times[target])
        flops_ratio = sum(plan.step_macs) / base_macs
        time_ratio = med / base_s
        rows.append({
            "scenario": "sample_schedules", "model": args.model,
            "input_size": getattr(cfg, "input_size", None) or "x".join(map(str, plan.latent_shape[1:])),
            "weak_patch": args.weak_patch, "lora": "merged" if args.merge_lora else f"unmerged r{args.lora_rank}",
            "target": target, "schedule": plan.schedule.spec.split(" ")[0], "guidance": sc.guidance, "steps": args.steps,
            "solver": args.solver, "num_samples": args.num_samples, "packing": args.packing,
            "compute_fraction": round(sum(plan.step_macs) / (plan.baseline_step_macs * plan.schedule.steps), 4),
            "gflops_per_sample": round(2 * sum(plan.step_macs) / 1e9, 4),
            "time_s_median": round(med, 4), "time_ratio": round(time_ratio, 4), "flops_ratio": round(flops_ratio, 4),
            "time_over_flops": round(time_ratio / flops_ratio, 4), "repeats": args.repeats,
            "device": f"{device.type}:{device_name}", "threads": torch.get_num_threads(),
            **provenance(),
        })
    write_csv(rows, args.out)
    for r in rows:
        print(f"target {r['target']} schedule {r['schedule']:>9}: {r['time_s_median']:8.3f} s  "
              f"time ratio {r['time_ratio']:.3f}  FLOPs ratio {r['flops_ratio']:.3f}  "
              f"time/FLOPs {r['time_over_flops']:.3f}", file=sys.stderr)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
