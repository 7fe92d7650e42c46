"""Which sample sets to evaluate, and what each one's run.json says about how it was made.

A `--samples` value is `[LABEL=]PATH`. PATH is an ADM-style .npz, a folder of images, a run folder
(samples.npz or images, plus run.json from `flexcli sample`) or a folder of run folders (one row each).
A LABEL of the form SCHEDULE@CFG (e.g. 130/130@4) sets the schedule and guidance scale of sets that
have no run.json; SCHEDULE may name its own step count, `15/15 of 30@4` (default: evaluate's --steps).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from flexcli.errors import FlexcliError
from flexcli.metrics.images import IMAGE_EXTS

LABEL_RE = re.compile(r"^(?P<schedule>\d+/\d+)(\s+of\s+(?P<steps>\d+))?@(?P<cfg>\d+(\.\d*)?)$")
OF_RE = re.compile(r"^(?P<schedule>.+?)\s+of\s+(?P<steps>\d+)(\s+steps)?$")

@dataclass
class SampleSet:
    label: str
    path: Path  # an .npz or a folder of images
    meta: dict = field(default_factory=dict)


def _num(v):
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _guidance(raw: dict) -> str | None:
    """How the run guided: "weak" if any step's guidance branch was the weak conditional prediction (§3.4),
    "cfg" if guided otherwise, "none" without guidance; None when run.json does not say."""
    g = raw.get("guidance")
    if isinstance(g, str):
        return g
    if not isinstance(g, dict):
        return None
    if not g.get("enabled", True):
        return "none"
    per_step = raw.get("steps") if isinstance(raw.get("steps"), list) else []
    if any(isinstance(s, dict) and s.get("guide_label") == "cond" for s in per_step):
        return "weak"
    return "cfg" if per_step or g.get("mode") == "cfg" else g.get("mode")


def read_run_json(path: Path) -> dict:
    """What evaluate uses from `flexcli sample`'s run.json (flexcli.sampling.run_record), under flexcli's names.

    schedule: schedule.spec (or config.schedule); steps: config.steps; solver: solver.name (or config.solver);
    cfg_scale: config.cfg_scale; cfg_scale_all_weak: config.cfg_scale_all_weak (s_cfg0, when given); guidance:
    "weak", "cfg" or "none" (`_guidance`); run_fraction: flops.compute_fraction, the run's FLOPs relative to
    the all-powerful schedule at ITS OWN step count (evaluate rescales it to the base step count);
    gflops_per_sample: flops.total / 1e9 (per sample); latency_s: wall_time_s / number of samples (sampling
    only, model loading excluded); prompts and labels: as sampled. Top-level keys of those names (hand-written
    run.json files) win; a top-level compute_fraction is taken as relative to the base step count already.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FlexcliError(f"{path} is not readable JSON ({e})", "fix or delete it") from e
    if not isinstance(raw, dict):
        raise FlexcliError(f"{path} is not a JSON object", "fix or delete it")
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    flops = raw.get("flops") if isinstance(raw.get("flops"), dict) else {}
    sched = raw.get("schedule")
    if isinstance(sched, dict):
        sched = sched.get("spec")
    n = len(raw["seeds"]) if isinstance(raw.get("seeds"), list) else cfg.get("num_samples")
    wall = _num(raw.get("wall_time_s"))
    steps = raw.get("steps") if isinstance(raw.get("steps"), int) else cfg.get("steps")
    solver = raw.get("solver")
    meta = {
        "schedule": sched or cfg.get("schedule"),
        "steps": int(steps) if isinstance(steps, (int, float)) and steps > 0 else None,
        "solver": (solver.get("name") if isinstance(solver, dict) else solver) or cfg.get("solver"),
        "cfg_scale": _num(raw.get("cfg_scale", cfg.get("cfg_scale"))),
        "cfg_scale_all_weak": _num(raw.get("cfg_scale_all_weak", cfg.get("cfg_scale_all_weak"))),
        "guidance": _guidance(raw),
        "compute_fraction": _num(raw.get("compute_fraction")),
        "run_fraction": _num(flops.get("compute_fraction")),
        "gflops_per_sample": _num(raw.get("gflops_per_sample")) or
        (_num(flops.get("total")) / 1e9 if _num(flops.get("total")) else None),
        "latency_s": _num(raw.get("latency_s")) or (wall / n if wall and n else None),
        "latency_ratio": _num(raw.get("latency_ratio")),
        "prompts": raw.get("prompts", cfg.get("prompts")),
        "labels": raw.get("labels"),
        "label": raw.get("label"),
    }
    return {k: v for k, v in meta.items() if v is not None}


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir())


def _run_folder(folder: Path) -> Path | None:
    """The samples inside a run folder: samples.npz, a samples/ image folder, or images in the folder itself."""
    if (folder / "samples.npz").is_file():
        return folder / "samples.npz"
    if (folder / "samples").is_dir() and _has_images(folder / "samples"):
        return folder / "samples"
    if _has_images(folder):
        return folder
    return None


def _one(label: str | None, data: Path, run_dir: Path) -> SampleSet:
    meta = read_run_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    default = data.stem if data.is_file() and data.stem != "samples" else run_dir.name
    name = label or meta.pop("label", None) or default
    meta.pop("label", None)
    m = LABEL_RE.match(label or "")
    if m:
        meta.setdefault("schedule", m["schedule"])
        meta.setdefault("cfg_scale", float(m["cfg"]))
        if m["steps"]:
            meta.setdefault("steps", int(m["steps"]))
    return SampleSet(name, data, meta)


def resolve_samples(specs: list[str]) -> list[SampleSet]:
    """Expand every `--samples [LABEL=]PATH` into sample sets (a folder of run folders gives one per run)."""
    sets: list[SampleSet] = []
    for spec in specs:
        label, path = None, Path(spec)
        if "=" in spec and not path.exists():
            label, rest = spec.split("=", 1)
            path = Path(rest)
        if not path.exists():
            raise FlexcliError(f"--samples {path} not found", "check the path")
        if path.is_file():
            if path.suffix != ".npz":
                raise FlexcliError(f"--samples {path} is not an .npz",
                                   "pass an ADM-style .npz, a folder of images or a folder of run folders")
            sets.append(_one(label, path, path.parent))
            continue
        data = _run_folder(path)
        if data is not None:
            sets.append(_one(label, data, path))
            continue
        runs = [(d, _run_folder(d)) for d in sorted(path.iterdir()) if d.is_dir()]
        runs = [(d, s) for d, s in runs if s is not None]
        if not runs:
            raise FlexcliError(f"--samples folder {path} holds no images, samples.npz or run folders",
                               "pass the output folder of `flexcli sample`, a folder of images or an .npz")
        sets += [_one(f"{label}/{d.name}" if label else None, s, d) for d, s in runs]
    labels = [s.label for s in sets]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise FlexcliError(f"two sample sets are both labelled {dupes[0]}", "label them: --samples NAME=PATH")
    return sets


def latency_ratios(rows: list[dict]) -> None:
    """Fill latency_ratio = latency_s / latency_s of THE all-powerful row at the base step count (compute 1)
    with the same guidance scale (the first such row when no row has that scale), where not given."""
    base = [r for r in rows if r.get("latency_s") and r.get("compute_fraction") is not None
            and abs(r["compute_fraction"] - 1) < 1e-9]
    for r in rows:
        if r.get("latency_ratio") is not None or not r.get("latency_s") or not base:
            continue
        same = [b for b in base if b.get("cfg_scale") == r.get("cfg_scale")]
        r["latency_ratio"] = r["latency_s"] / (same or base)[0]["latency_s"]


def split_setting(spec: str, steps: int) -> tuple[str, int]:
    """'15/15 of 30' -> ('15/15', 30); '23/23' -> ('23/23', steps): a sweep schedule and its step count."""
    m = OF_RE.match(str(spec).strip())
    if not m:
        return str(spec).strip(), steps
    n = int(m["steps"])
    if n < 1:
        raise FlexcliError(f"schedule '{spec}' has {n} steps", "write e.g. '15/15 of 30' (30 sampling steps)")
    return m["schedule"].strip(), n


def schedule_dirname(schedule: str, cfg_scale: float, steps: int | None = None, options: dict | None = None) -> str:
    """The run folder of one sweep setting: s23-23_cfg2.5, n30_s30-30_cfg2.5 at another step count, and with
    other sample options n30_s30-30_cfg2.5_solver-dpm++2m."""
    name = f"s{schedule.replace('/', '-').replace(' ', '')}_cfg{cfg_scale:g}"
    name += "".join(f"_{k}-{v:g}" if isinstance(v, float) else f"_{k}-{v}" for k, v in (options or {}).items())
    return name if steps is None else f"n{steps}_{name}"


def setting_label(schedule: str, n: int, cfg_scale: float, options: dict, steps: int) -> str:
    """A sweep row's label: '23/23@2.5', '30/30 of 30@2.5', '30/15@5 [guidance weak, cfg_scale_all_weak 8]'."""
    more = f" [{', '.join(f'{k} {v:g}' if isinstance(v, float) else f'{k} {v}' for k, v in options.items())}]"
    return f"{schedule}{'' if n == steps else f' of {n}'}@{cfg_scale:g}{more if options else ''}"


def label_setting(label: str) -> str:
    """`setting_label`'s label without its scale: '30/30 of 30', '28/14 [guidance weak]'."""
    head, _, tail = label.partition("@")
    return head + (tail[tail.index(" "):] if " " in tail else "")


def parse_list(text: str, kind, flag: str) -> list:
    """'250/250,130/130' or '1.5,2,4' -> a list; a one-line error naming the flag otherwise."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        out = [kind(t) for t in items]
    except ValueError as e:
        raise FlexcliError(f"{flag} {text!r} is not a comma-separated list ({e})", f"e.g. {flag} 1.5,2,4") from e
    if not out:
        raise FlexcliError(f"{flag} is empty", f"e.g. {flag} 1.5,2,4")
    return out
