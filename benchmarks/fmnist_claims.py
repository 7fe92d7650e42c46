"""Issue #7's fuller run: the paper's central claim measured on the built-in Fashion-MNIST default.

One run flexifies the shipped base DiT (`DiT-FMNIST/4`, 64 tokens) with the weak patch 8 (16 tokens), distils the
weak mode, then samples every (variant, order, schedule, guidance scale, seed) cell and scores it against the
Fashion-MNIST test split with the shipped domain classifier's features (FID, KID, precision/recall through
torch-fidelity) and its class accuracy. Each seed fixes the noise and the labels (10 classes, balanced) of every
sample, so all cells with the same seed are paired comparisons.

Variants: `distilled` (the weak mode after distillation, §3.2), `pi` (PI-resize only, LoRAs still zero: the
undistilled weak mode), `distilled` with `order=weak-last` (Fig. 19's ablation) and with `guidance=weak` (§3.4).
LoRAs are merged for sampling (zero-overhead inference), and compute fractions are the exact FLOPs of that.
The cells run in priority order (baseline, then the claims' schedules, then the rest of the curve) and the run stops
starting new ones after --budget-s, so a short lease still returns the cells that matter. Metrics are computed by
CPU worker processes while the sampler keeps the accelerator busy.

    python benchmarks/fmnist_claims.py --out OUT    # H200: distillation ~3 min, then ~3 s per cell (210 cells)
    python benchmarks/fmnist_claims.py --out OUT --num-samples 200 --seeds 2 --cfg-scales 4 --distill-steps 50

Writes OUT/fmnist_claims.csv (one row per cell), OUT/run.json (settings, distillation losses, device, timings) and
OUT/distilled.safetensors. `benchmarks/fmnist_claims_report.py` turns the CSV into the claims and the README table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BASELINE = "{steps}/{steps}"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--ref-images", type=int, default=10000, help="first N test images (10000 = the whole split)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg-scales", default="1.5,2,3,4,6")
    ap.add_argument("--claim-schedules", default="40/40,23/23",
                    help="the ~85%% and <=60%% compute points (0.849 and 0.593 with merged LoRAs)")
    ap.add_argument("--curve-schedules", default="0/0,10/10,30/30,45/45")
    ap.add_argument("--weak-guidance-schedules", default="30/15,35/15")
    ap.add_argument("--weak-patch", type=int, default=8)
    ap.add_argument("--distill-steps", type=int, default=4000)
    ap.add_argument("--distill-batch", type=int, default=256)
    ap.add_argument("--distill-lr", type=float, default=1e-3)
    ap.add_argument("--data-limit", type=int, default=None, help="train images used for distillation (all: 60000)")
    ap.add_argument("--groups", default=None,
                    help="cells to run instead of the default plan: VARIANT:ORDER:GUIDANCE:SCHEDULES:CFGS;... e.g. "
                         "'pi:weak-first:cfg:40/40,23/23:2,3' (every seed of each)")
    ap.add_argument("--distilled", type=Path, default=None, help="reuse this distilled checkpoint (skip distilling)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new cell after this many seconds")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


def cells(a: argparse.Namespace) -> list[dict]:
    """Every (variant, order, guidance, schedule, cfg, seed), most important first."""
    scales = [float(s) for s in a.cfg_scales.split(",")]
    claims = [s for s in a.claim_schedules.split(",") if s]
    if a.groups:
        out = []
        for g in a.groups.split(";"):
            variant, order, guidance, schedules, cfgs = g.split(":")
            out += [dict(variant=variant, order=order, guidance=guidance, schedule=s, cfg_scale=float(c), seed=seed)
                    for s in schedules.split(",") for seed in range(a.seeds) for c in cfgs.split(",")]
        return out
    groups = [("distilled", "weak-first", "cfg", [BASELINE.format(steps=a.steps)]),
              ("distilled", "weak-first", "cfg", claims),
              ("pi", "weak-first", "cfg", claims),
              ("distilled", "weak-last", "cfg", claims),
              ("distilled", "weak-first", "cfg", [s for s in a.curve_schedules.split(",") if s]),
              ("distilled", "weak-first", "weak", [s for s in a.weak_guidance_schedules.split(",") if s]),
              ("pi", "weak-first", "cfg", ["0/0"])]
    out = []
    for variant, order, guidance, schedules in groups:
        for schedule in schedules:
            for seed in range(a.seeds):  # all seeds of a schedule before the next: complete rows first
                for cfg in scales:
                    out.append(dict(variant=variant, order=order, guidance=guidance, schedule=schedule,
                                    cfg_scale=cfg, seed=seed))
    return out


# ---------------------------------------------------------------------------------------------- metric workers
_REF = None


def _init_worker(ref_path: str, cache_dir: str, threads: int | None = 1) -> None:
    import torch

    from flexcli.builtin import classifier
    from flexcli.metrics.images import open_images

    if threads:
        torch.set_num_threads(threads)
    classifier.register()
    global _REF
    _REF = (open_images(Path(ref_path), "--ref"), cache_dir)


def score(images, labels: list[int]) -> dict:
    """FID/KID/precision/recall against the reference and class accuracy, for uint8 NHWC images."""
    import torch

    from flexcli.builtin import classifier
    from flexcli.builtin.demo import metric_options
    from flexcli.metrics.fid import compute_metrics
    from flexcli.metrics.images import ImageSet

    ref, cache = _REF
    opts = metric_options(len(images), Path(cache))
    m = compute_metrics(ImageSet.from_array(images, "samples"), ref, opts)
    acc = classifier.class_accuracy(torch.from_numpy(images), labels)["accuracy"]
    return {"fid": m["fid"], "kid": m["kid"], "precision": m["precision"], "recall": m["recall"],
            "class_accuracy": acc}


# ---------------------------------------------------------------------------------------------- main
def distill_weak(flex: Path, out: Path, a: argparse.Namespace, say) -> tuple[Path, dict]:
    from flexcli.builtin.demo import distill_config
    from flexcli.train import distill

    cfg = distill_config(a.distill_steps, a.distill_batch, a.distill_lr, data_limit=a.data_limit, where="fmnist_claims")
    start = time.perf_counter()

    def on_step(event, data):
        if event == "step" and (data.step % 500 == 0 or data.step == data.steps):
            say(f"distill step {data.step}/{data.steps} loss {data.loss:.4f}")
    res = distill(flex, out, config=cfg, callback=on_step)
    return res.checkpoint, {"config": cfg.to_dict(), "final_loss": res.final_loss,
                            "losses_every_100": res.losses[::100], "seconds": round(time.perf_counter() - start, 1)}


def run_cells(a: argparse.Namespace, models: dict, device, pool, t0: float, say) -> tuple[list[dict], int]:
    """Sample every cell in priority order until the budget is spent; score them (the first here, the rest in the
    worker pool). Returns the scored rows and the number of cells not started."""
    import torch

    from flexcli.sampling import SampleConfig, sample

    todo = cells(a)
    labels = [i % 10 for i in range(a.num_samples)]
    warm = SampleConfig(num_samples=min(64, a.num_samples), steps=2, schedule="1/1", cfg_scale=4.0,
                        class_labels=list(range(10)), batch_size=a.num_samples, merge_lora=True)
    for m in models.values():
        sample(m, warm, device=device)
    primed = False
    futures, rows, skipped = [], [], 0
    for i, c in enumerate(todo):
        if time.perf_counter() - t0 > a.budget_s:
            skipped = len(todo) - i
            say(f"budget reached: {skipped} cells not started")
            break
        cfg = SampleConfig(num_samples=a.num_samples, steps=a.steps, solver="ddpm", cfg_scale=c["cfg_scale"],
                           guidance=c["guidance"], class_labels=list(range(10)), seed=c["seed"] * 1_000_000,
                           schedule=c["schedule"], order=c["order"], batch_size=a.num_samples, dtype="float32",
                           merge_lora=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, images, record = sample(models[c["variant"]], cfg, device=device)
        seconds = time.perf_counter() - start
        row = {**c, "num_samples": a.num_samples, "steps": a.steps,
               "compute_fraction": record["flops"]["compute_fraction"],
               "gflops_per_sample": record["flops"]["total"] / 1e9, "sample_seconds": round(seconds, 3)}
        arr = images.numpy()
        if not primed:  # the reference features are computed (and cached) once, here, before the workers read them
            row.update(score(arr, labels))
            rows.append(row)
            primed = True
        else:
            futures.append((row, pool.submit(score, arr, labels)))
        say(f"[{i + 1}/{len(todo)}] {c['variant']} {c['order']} {c['guidance']} {c['schedule']} cfg {c['cfg_scale']:g} "
            f"seed {c['seed']}: compute {row['compute_fraction']:.3f}, {seconds:.2f} s")
    for row, fut in futures:
        row.update(fut.result())
        rows.append(row)
    return rows, skipped


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from _common import provenance, write_csv
    from flexcli.api import flexify_checkpoint, load_model
    from flexcli.builtin.demo import BASE, write_reference

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 sampling, the same arithmetic as on a CPU
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    ref = write_reference(work / "ref.npz", a.ref_images)

    ctx = mp.get_context("spawn")  # before CUDA is touched; workers use the CPU only
    pool = ProcessPoolExecutor(a.workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(str(ref), str(work / "cache")))
    _init_worker(str(ref), str(work / "cache"), threads=None)  # the main process scores the first cell
    flex, _, _ = flexify_checkpoint(BASE, [a.weak_patch], work / "flex.safetensors", force=True)
    if a.distilled is not None:
        distilled, distill_info = a.distilled, {"reused": str(a.distilled)}
    else:
        distilled, distill_info = distill_weak(flex, work / "distill", a, say)
        shutil.copy(distilled, a.out / "distilled.safetensors")
        say(f"distilled in {distill_info['seconds']} s, final loss {distill_info['final_loss']:.4f}")
    # LoRAs merged into per-size weight copies: the zero-overhead deployment of §3.2, and its FLOPs
    models = {"pi": load_model(flex, merge_lora=True).to(device).eval(),
              "distilled": load_model(distilled, merge_lora=True).to(device).eval()}

    rows, skipped = run_cells(a, models, device, pool, t0, say)
    pool.shutdown()
    prov = provenance()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    csv = write_csv([{**r, "device": device_name, **prov} for r in rows], a.out / "fmnist_claims.csv")
    info = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": {k: str(v) for k, v in vars(a).items()},
            "device": device_name, "cells_done": len(rows), "cells_skipped": skipped, "distill": distill_info,
            "seconds": round(time.perf_counter() - t0, 1), **prov}
    (a.out / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {csv} ({len(rows)} cells)")
    print(csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
