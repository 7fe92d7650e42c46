"""Issue #15's benchmark: the paper's video claim (Fig. 8) on the video built-in default, seeds x clips per cell.

Per weak mode (temporal 2x4x4, spatial 1x8x8) the base is flexified and the weak mode distilled once
(`--distill-steps`; kept in --work and reused). Then, for every seed, each cell is sampled and scored as the demo
does (`flexcli.builtin.demo_video.sample_and_score`; clip i is prompted by held-out caption i, class i mod 10,
and seeded seed x 1,000,000 + i; FID per frame against `--ref-clips` held-out real clips):
* the all-powerful baseline at `--steps`, and the fewer-steps baseline at each of `--baseline-steps`;
* per mode, the weak-first schedules that run each of `--weak-steps` weak, at every `--cfg-scales`;
* per mode, `--weak-guidance` schedules (x/y, y < x) with weak guidance (§3.4);
* per mode, the ablations at `--ablation` (x/x): PI-only (the flexified checkpoint, not distilled) and weak-last.
* `--short-flex`: weak-first schedules over fewer total steps than `--steps` ('MODE x/y of N'), the flex cells
  that sit at the fewer-steps baseline's compute (25, 35, 50 and 75 %), at every `--cfg-scales`.
Cells run seed-major (every cell at the first seed, then the next). Rows are appended to the CSV as they finish,
so a run resumes: a (label, seed) in any CSV in --out is skipped. `--shard i/n` splits the cells over processes,
one CSV each (`cells.shardI.csv`). `--report` reads every CSV in --out and writes `claims.md`: each cell's mean
and seed spread, and the issue's verdicts. `--prepare` only distils and encodes the prompts: a lent GPU has no
MiniLM and no training data, so `benchmarks/video_bundle.sh` packs the distilled checkpoints, the encoded prompts
and the test split for `benchmarks/gpu_session.sh` (there the PI-only checkpoints are flexified again).

    python benchmarks/video_claims.py --out benchmarks/results/video --work runs/video-bench \\
        --num-samples 1000 --seeds 0,1,2 --shard 0/2 &
    python benchmarks/video_claims.py --out benchmarks/results/video --work runs/video-bench \\
        --num-samples 1000 --seeds 0,1,2 --shard 1/2
    python benchmarks/video_claims.py --out benchmarks/results/video --report
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import statistics
import sys
from pathlib import Path

import torch

from _common import provenance
from fewer_steps_report import versus
from flexcli.builtin import demo_video as V

SEED_STRIDE = 1_000_000
# at 25, 35, 50 and 75 % of the compute (a weak step costs 0.452 of a powerful one in the temporal mode, 0.218 in
# the spatial): the flex cells beside the fewer-steps baseline at 5, 7, 10 and 15 steps, 1/8 to 1/2 of them weak
SHORT_FLEX = ["temporal 4/4 of 6", "spatial 4/4 of 6", "spatial 4/4 of 8", "temporal 6/6 of 8", "spatial 6/6 of 10",
              "temporal 9/9 of 11", "spatial 9/9 of 13", "temporal 14/14 of 16", "spatial 14/14 of 18"]


def cells(job: V.VideoJobSettings, weak_guidance: list[str], ablation: str,
          short: list[str] = ()) -> list[tuple[str, V.Setting]]:
    """(checkpoint kind, setting): the demo's grid, weak guidance, the PI-only and weak-last ablations, and the
    schedules over fewer total steps (`short`: 'MODE x/y of N')."""
    out = [("distilled", s) for s in V.job_settings(job)]
    for mode in job.modes:
        for c in job.cfg_scales:
            out += [("distilled", V.Setting(mode, sched, job.steps, c, {"guidance": "weak"}))
                    for sched in weak_guidance]
            out.append(("distilled", V.Setting(mode, ablation, job.steps, c, {"order": "weak-last"})))
            out.append(("pi-only", V.Setting(mode, ablation, job.steps, c)))
    parsed = [_short(spec, job) for spec in short]  # each spec checked once
    out += [("distilled", V.Setting(mode, sched, n, c)) for mode, sched, n in parsed for c in job.cfg_scales]
    labels = [_label(kind, s) for kind, s in out]
    if len(set(labels)) < len(labels):
        _fail(f"the grid has {next(x for x in labels if labels.count(x) > 1)} twice; drop it from --short-flex")
    return out


def _short(spec: str, job: V.VideoJobSettings) -> tuple[str, str, int]:
    """'spatial 4/4 of 8' -> (mode, schedule, steps), checked against the job's modes and the schedule syntax."""
    from flexcli.diffusion.schedule import parse_schedule
    from flexcli.errors import FlexcliError

    words = spec.split()
    if len(words) != 4 or words[0] not in job.modes or words[2] != "of" or not words[3].isdigit():
        _fail(f"--short-flex {spec!r} is not 'MODE x/y of N' with MODE one of {', '.join(job.modes)}; "
              "e.g. 'spatial 4/4 of 8'")
    try:
        parse_schedule(words[1], int(words[3]), 1, 2)
    except FlexcliError as e:
        _fail(f"--short-flex {spec!r}: {e}")
    return words[0], words[1], int(words[3])


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _prompts(work: Path, num_samples: int, text_length: int) -> tuple[Path, list[int]]:
    """The held-out prompts' embeddings file (MiniLM-encoded once, then reused: a GPU lease has no MiniLM) and
    each sample's class."""
    from flexcli.builtin.captions import heldout_prompt_set

    path = work / f"prompts-{num_samples}.safetensors"
    if path.exists():
        return path, heldout_prompt_set(num_samples)[1]
    return V.write_prompts(path, num_samples, text_length, work / "cache", negative=True)


def _label(kind: str, s: V.Setting) -> str:
    return f"{'PI-only ' if kind == 'pi-only' else ''}{s.label}"


def _done(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {(r["label"], int(r["seed"])) for r in csv.DictReader(f)}


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def run(args) -> Path:
    from flexcli.builtin import classifier
    from flexcli.builtin.demo import metric_options
    from flexcli.builtin.moving_fmnist import heldout_clips
    from flexcli.builtin.video_metrics import score_clips

    if args.threads:
        torch.set_num_threads(args.threads)
    job = V.VideoJobSettings(lora_rank=args.lora_rank, distill_steps=args.distill_steps,
                             num_samples=args.num_samples, steps=args.steps,
                             weak_steps=args.weak_steps, cfg_scales=args.cfg_scales,
                             baseline_steps=args.baseline_steps, batch_size=args.batch_size,
                             flow_shift=args.flow_shift)
    grid = cells(job, args.weak_guidance, args.ablation, args.short_flex)  # checked before any work
    unknown = args.only - {_label(kind, s) for kind, s in grid}
    if unknown:
        _fail(f"--only names no cell of this grid: {'; '.join(sorted(unknown))}; use the labels of cells.csv")
    base = args.base or V.BASE
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    quiet = lambda *a: None  # noqa: E731
    ckpts = {}
    for name, patch in job.modes.items():
        flex, distilled = work / f"flex-{name}.safetensors", work / f"distill-{name}" / "distilled.safetensors"
        if not distilled.exists():  # one process distils; run shards after it finished
            flex, distilled, _ = V.flexify_and_distill(base, name, patch, job, work, quiet)
        elif not flex.exists():  # a work folder carried without it (--prepare): LoRA B starts at zero, so the
            flex = V.flexify_mode(base, name, patch, job, work)  # PI-only model is the same whatever A's random init
        ckpts[("distilled", name)], ckpts[("pi-only", name)] = distilled, flex
    from flexcli.api import load_model

    embeds, labels = _prompts(work, args.num_samples, load_model(base).text_length)
    if args.prepare:
        return work
    net, _ = classifier.load_classifier()
    real, _ = heldout_clips(args.ref_clips)
    ref = score_clips(real, net)
    opts = metric_options(args.num_samples * ref.predicted.shape[1], work / "cache")
    index, count = args.shard
    # seed-major, so that a run cut short has every cell at its first seeds
    todo = [(kind, s, seed) for seed in args.seeds for kind, s in grid]
    if args.only:  # chosen cells, by label
        todo = [(kind, s, seed) for kind, s, seed in todo if _label(kind, s) in args.only]
    todo = todo[index::count]
    path = args.out / (f"cells.shard{index}.csv" if count > 1 else "cells.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    done = set().union(*map(_done, args.out.glob("cells*.csv")))  # done by any shard layout, or an earlier run
    (work / "runs").mkdir(exist_ok=True)
    for kind, s, seed in todo:
        label = _label(kind, s)
        if (label, seed) in done:
            continue
        ckpt = base if s.mode is None else ckpts[(kind, s.mode)]
        run_dir = work / "runs" / hashlib.sha1(f"{label} {seed} {args.num_samples}".encode()).hexdigest()[:16]
        shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short
        row = V.sample_and_score(s, ckpt, job, embeds, labels, ref, net, opts, run_dir, seed * SEED_STRIDE)
        row.update(label=label, checkpoint=kind, seed=seed, ref_clips=args.ref_clips, **provenance(),
                   source=str(run_dir.relative_to(work)))  # under --work, wherever that was (a GPU's /tmp)
        _append(path, row)
        print(f"{label} seed {seed}: FID {row['fid']:.2f}, accuracy {100 * row['class_accuracy']:.1f} %, "
              f"gap {row['temporal_gap']:.2f}", file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------------------
def _load(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("cells*.csv")):
        with open(p, newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def _cells(rows: list[dict]) -> list[dict]:
    """One entry per label: mean and seed standard deviation of every score."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    out = []
    for label, rs in by.items():
        cell = {k: rs[0][k] for k in ("label", "mode", "checkpoint", "schedule", "guidance", "cfg_scale", "steps")}
        cell.update(compute=float(rs[0]["compute_fraction"]), weak_share=float(rs[0]["weak_share"]), seeds=len(rs),
                    by_seed={int(r["seed"]): (float(r["fid"]), float(r["class_accuracy"])) for r in rs})
        for k in ("fid", "class_accuracy", "temporal_gap", "speed"):
            vals = [float(r[k]) for r in rs]
            cell[k], cell[k + "_sd"] = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(cell)
    return out


def report(out: Path, steps: int, fid_tol: float = 0.05, acc_tol: float = 2.0) -> Path:
    cells_ = _cells(_load(out))
    fmt = lambda c: (f"{c['label']} ({100 * c['compute']:.1f} %): FID {c['fid']:.2f} ± {c['fid_sd']:.2f}, "  # noqa
                     f"accuracy {100 * c['class_accuracy']:.1f} ± {100 * c['class_accuracy_sd']:.1f} %, "
                     f"temporal gap {c['temporal_gap']:.2f}")
    full = [c for c in cells_ if c["mode"] == "powerful" and int(c["steps"]) == steps]
    lines = ["# Video claims (issue #15): Fig. 8 on the video built-in default", "",
             f"Cells: {len(cells_)}; seeds per cell: {sorted({c['seeds'] for c in cells_})}.", ""]
    if not full:
        return _write(out, lines + ["No all-powerful baseline rows yet."])
    base = min(full, key=lambda c: c["fid"])
    rule = V.VideoJobSettings(fid_tol=fid_tol, accuracy_tol=acc_tol)
    ok = lambda c: V.matches_baseline(c, base, rule)  # noqa: E731  (the demo's rule)
    lines += [f"Baseline (its lowest-FID scale): {fmt(base)}.", "",
              "## Most compute saved with a match (FID +5 %, accuracy -2 points, temporal within the real spread)"]
    flex = [c for c in cells_ if c["mode"] not in ("powerful",) and c["checkpoint"] == "distilled"]
    for mode in sorted({c["mode"] for c in flex}):
        good = [c for c in flex if c["mode"] == mode and ok(c)]
        best = min(good, key=lambda c: c["compute"]) if good else None
        lines.append(f"- {mode}: " + (f"{100 * (1 - best['compute']):.1f} % saved, {fmt(best)}" if best
                                      else "no match"))
    lines += ["", "## Distilled vs PI-only, weak-first vs weak-last (best scale each)"]
    for mode in sorted({c["mode"] for c in flex}):
        groups = {"PI-only": [c for c in cells_ if c["mode"] == mode and c["checkpoint"] == "pi-only"],
                  "weak-last": [c for c in flex if c["mode"] == mode and "weak-last" in c["label"]]}
        for name, group in groups.items():
            if not group:
                continue
            rival = min(group, key=lambda c: c["fid"])
            same = [c for c in flex if c["mode"] == mode and c["schedule"] == rival["schedule"]
                    and "[" not in c["label"]]
            if same:
                mine = min(same, key=lambda c: c["fid"])
                lines.append(f"- {mode}: distilled weak-first {fmt(mine)} vs {name} {fmt(rival)}")
    lines += ["", "## Flex vs fewer steps at equal or lower compute (the lowest-FID cell of each)",
              f"Flex beats fewer steps with a lower FID and at most {acc_tol:g} points less accuracy, does NOT beat "
              f"them with a higher FID and at most {acc_tol:g} points more, and is MIXED otherwise. Then flex minus "
              "fewer steps seed by seed (a seed fixes the noise of clip i in every cell).", ""]
    fewer = [c for c in cells_ if c["mode"] == "powerful" and int(c["steps"]) < steps]
    for n in sorted({int(c["steps"]) for c in fewer}):
        f = min((c for c in fewer if int(c["steps"]) == n), key=lambda c: c["fid"])
        at = [c for c in flex if c["compute"] <= f["compute"] + 1e-9 and "weak-last" not in c["label"]]
        if at:
            best = min(at, key=lambda c: c["fid"])
            verdict = versus(best["fid"], f["fid"], 100 * (best["class_accuracy"] - f["class_accuracy"]), acc_tol)
            lines.append(f"- {fmt(best)} **{'is MIXED against' if verdict == 'MIXED' else verdict}** {fmt(f)}"
                         + _paired(best, f))
    lines += ["", "## Every cell", ""] + [f"- {fmt(c)}" for c in sorted(cells_, key=lambda c: -c["compute"])]
    return _write(out, lines)


def _paired(a: dict, b: dict) -> str:
    """a minus b seed by seed: a seed fixes every clip's noise in every cell, so the noise the two cells share
    cancels in these differences."""
    seeds = sorted(a["by_seed"].keys() & b["by_seed"].keys())
    if not seeds:
        return ""
    d = [(a["by_seed"][s][0] - b["by_seed"][s][0], 100 * (a["by_seed"][s][1] - b["by_seed"][s][1])) for s in seeds]
    return (f"; seed by seed ({', '.join(map(str, seeds))}): FID {', '.join(f'{x:+.2f}' for x, _ in d)}, "
            f"accuracy {', '.join(f'{y:+.1f}' for _, y in d)} points")


def _write(out: Path, lines: list[str]) -> Path:
    path = out / "claims.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/video"))
    ap.add_argument("--work", type=Path, default=Path("runs/video-bench"), help="checkpoints and samples")
    ap.add_argument("--base", type=Path, default=None, help="the base (default: the shipped Wan-FMNIST)")
    ap.add_argument("--report", action="store_true", help="write claims.md from the CSVs in --out, then stop")
    ap.add_argument("--prepare", action="store_true",
                    help="distil both modes and encode the prompts into --work, then stop (before a GPU lease: "
                         "benchmarks/video_bundle.sh)")
    ap.add_argument("--distill-steps", type=int, default=1000)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--ref-clips", type=int, default=2000)
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--weak-steps", type=_ints, default=[5, 10, 15, 20])
    ap.add_argument("--baseline-steps", type=_ints, default=[15, 10, 7, 5])
    ap.add_argument("--cfg-scales", type=lambda t: [float(x) for x in t.split(",")], default=[3.0, 5.0])
    ap.add_argument("--weak-guidance", type=lambda t: [x for x in t.split(",") if x], default=["10/5"])
    ap.add_argument("--ablation", default="10/10")
    ap.add_argument("--short-flex", type=lambda t: [x.strip() for x in t.split(";") if x.strip()],
                    default=SHORT_FLEX, help="weak-first schedules over fewer total steps, 'MODE x/y of N', "
                                             "separated by ';' ('' for none)")
    ap.add_argument("--flow-shift", type=float, default=3.0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--shard", type=lambda t: tuple(int(x) for x in t.split("/")), default=(0, 1))
    ap.add_argument("--only", type=lambda t: {x.strip() for x in t.split(";") if x.strip()}, default=set(),
                    help="run only these cells: labels as in the CSV, separated by ';'")
    args = ap.parse_args(argv)
    if args.prepare:
        return run(args)
    if args.report:
        path = report(args.out, args.steps)
    else:
        run(args)
        path = report(args.out, args.steps)
    print(path)
    return path


if __name__ == "__main__":
    main()
