"""Issue #16: flex schedules vs simply running fewer steps, at equal compute, on the built-in Fashion-MNIST default.

Each cell is (checkpoint, solver, steps, patch schedule, guidance mode, s1, s2, s0, seed). It samples
`--num-samples` images with the 10 classes cycled (sample i has label i % 10 and seed `seed * 1_000_000 + i`, as in
`fmnist_claims.py`, so every cell with the same seed is a paired comparison), scores FID/KID/precision/recall in the
shipped classifier's feature space (`--features fmnist`) against the first `--ref-images` Fashion-MNIST test images
and the class accuracy of the shipped classifier, and appends one CSV row. Cells already in the CSV are skipped
(resumable); several processes may share one CSV (`--shard i/n`, appends under a file lock).

Text-to-image checkpoints (issue #13, `--heldout-prompts`): sample i is prompted with a held-out caption of class
i % 10 (`flexcli.builtin.demo_t2i.write_prompts`, encoded once by MiniLM), so `class_accuracy` is the demo's text
alignment (the class the prompt names) and the cells stay paired as above.

Sampling: cells that `flexcli sample` can express (guid cfg or weak; s0 as its `--cfg-scale-all-weak`) run
through `flexcli.sampling` itself (`sample_latents`); the others (s0 = 1, the `both` mode) run the library's loop
and denoiser with only those steps replaced (`make_denoiser` here).

Compute: the exact FLOPs model of `flexcli sample` (`flexcli.compute`) with merged LoRAs. `compute` is relative to
the all-powerful 50-step baseline with guidance (= steps/50 x `compute_same_steps`, run.json's
flops.compute_fraction).

Cell grid (`--grid`, repeatable): `key=v1,v2,...` items separated by `;`, the cartesian product of the values:
    ckpt    names given with --ckpt NAME=PATH
    solver  ddpm | ddim | dpm++2m
    steps   number of sampling steps
    sched   P (all powerful), x/y (the paper's form: powerful for the last x cond / y guidance steps) or segments
            with '+' for ',' (e.g. 8:20+4:30/8:35+4:15: weak guidance in the LAST 15 steps)
    guid    cfg | weak (§3.4: where cond is powerful and guidance weak, guide with the weak CONDITIONAL
            prediction and s2) | both (those steps also add weak CFG: e_c,P + (s2-1)(e_c,P - e_c,w)
            + (s1-1)(e_c,w - e_null,w), one more weak forward pass)
    s1      the CFG scale (steps where both branches have one size and guidance is the null label)
    s2      the weak-guidance scale, or `rule` ((1 - s1)/(1 - s2) = 2.5, flexcli's default)
    s0      the CFG scale of the all-weak steps (default: s1); 1 runs them unguided (one forward pass, counted so)
    seed    the seed index (seed * 1_000_000 is the first sample's seed)

    python benchmarks/fewer_steps.py --ckpt u1k=DISTILLED.safetensors --csv OUT.csv --num-samples 500 \\
        --grid "ckpt=u1k;solver=ddpm,ddim;steps=30;sched=P;guid=cfg;s1=2,3;seed=0" --list     # cells + compute only
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BASE_STEPS = 50
KEY = ["ckpt", "solver", "steps", "sched", "guid", "s1", "s2", "s0", "seed", "num_samples"]
GRID_KEYS = {"ckpt", "solver", "steps", "sched", "guid", "s1", "s2", "s0", "seed"}


# ---------------------------------------------------------------------------------------------- cells
def parse_grid(text: str) -> list[dict]:
    items = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"grid item {part.strip()!r} in {text!r} is not key=v1,v2,...; see --help")
        k, v = part.split("=", 1)
        k = k.strip()
        if k not in GRID_KEYS:
            raise ValueError(f"unknown grid key {k!r} in {text!r}; use {sorted(GRID_KEYS)}")
        items[k] = [s.strip() for s in v.split(",") if s.strip()]
    need = {"ckpt", "solver", "steps", "s1"}
    if need - set(items):
        raise ValueError(f"grid {text!r} lacks {sorted(need - set(items))}")
    items.setdefault("sched", ["P"])
    items.setdefault("guid", ["cfg"])
    items.setdefault("s2", ["rule"])
    items.setdefault("s0", [""])
    items.setdefault("seed", ["0"])
    keys = list(items)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(items[k] for k in keys))]


def _num(x: float) -> str:
    return f"{float(x):g}"


def canonical(c: dict, num_samples: int) -> dict:
    """The cell's CSV key: s2 resolved (empty where no step uses it), s0 resolved (empty without weak steps)."""
    from flexcli.diffusion.schedule import linked_weak_scale

    steps = int(c["steps"])
    sched = c["sched"].replace("+", ",")
    if sched == "P":
        sched = f"{steps}/{steps}"
    s1 = float(c["s1"])
    out = {"ckpt": c["ckpt"], "solver": c["solver"], "steps": steps, "sched": sched, "guid": c["guid"],
           "s1": _num(s1), "s2": "", "s0": "", "seed": int(c["seed"]), "num_samples": num_samples}
    out["_s2"] = linked_weak_scale(s1) if c["s2"] in ("", "rule") else float(c["s2"])
    out["_s0"] = s1 if c["s0"] in ("", None) else float(c["s0"])
    return out


def weak_of(model):
    """The weak patch size x/y schedules use: the smallest-volume one besides the powerful size (None if none)."""
    from flexcli.flex.patches import volume

    p0 = model.patch_sizes[0]
    return min((p for p in model.patch_sizes if p != p0), key=lambda q: (volume(q), str(q)), default=None)


def _weak_guided(pc, pu) -> bool:
    """Whether a step of a weak (or both) cell has a weak guidance branch (flexcli's own predicate)."""
    from flexcli.diffusion.schedule import uses_weak_guidance

    return uses_weak_guidance(pc, pu, "weak")


def finish_key(cell: dict, schedule, weak) -> dict:
    """Fill s2/s0 in the key only where the schedule has steps that use them."""
    pairs = schedule.pairs()
    if cell["guid"] in ("weak", "both") and any(_weak_guided(pc, pu) for pc, pu in pairs):
        cell["s2"] = _num(cell["_s2"])
    if any(pc == pu == weak for pc, pu in pairs):
        cell["s0"] = _num(cell["_s0"])
    else:
        cell["_s0"] = float(cell["s1"])
    if cell["guid"] in ("weak", "both") and not any(_weak_guided(pc, pu) for pc, pu in pairs):
        cell["guid"] = "cfg"  # the same sampler: no step has a weak guidance branch
    return cell


def key_of(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY)


def sample_config(cell: dict, num_samples: int, batch_size: int, prompt_embeds: Path | None = None):
    """flexcli sample's settings for a cell (`both` samples with the library's weak guidance plus its own steps):
    the 10 classes cycled, or with `prompt_embeds` (text-to-image) one prompt per sample."""
    from flexcli.sampling import SampleConfig

    cond = {"class_labels": list(range(10))} if prompt_embeds is None else {"prompt_embeds": str(prompt_embeds)}
    return SampleConfig(num_samples=num_samples, steps=int(cell["steps"]), solver=cell["solver"],
                        cfg_scale=float(cell["s1"]), cfg_scale_weak=cell["_s2"], cfg_scale_all_weak=_all_weak(cell),
                        guidance="weak" if cell["guid"] in ("weak", "both") else "cfg",
                        seed=int(cell["seed"]) * 1_000_000, schedule=cell["sched"],
                        batch_size=batch_size, merge_lora=True, dtype="float32", **cond)


def _all_weak(cell: dict) -> float | None:
    """flexcli sample's s_cfg0 for a cell: its s0 where that differs from s1, except s0 = 1 (this script's one-pass
    unguided all-weak steps, which also cost less)."""
    s0 = cell["_s0"]
    return None if s0 in (1, float(cell["s1"])) else s0


def library_cell(cell: dict) -> bool:
    """Whether `flexcli.sampling` samples this cell as it is: CFG or weak guidance, s0 through its s_cfg0. The
    unguided all-weak steps (s0 = 1) and the `both` mode are this script's own."""
    return cell["guid"] in ("cfg", "weak") and cell["_s0"] != 1


# ---------------------------------------------------------------------------------------------- compute
def step_costs(model, schedule, guid: str, guided: bool = True, s0: float | None = None) -> tuple[list[int], int]:
    """Per-step MACs per sample and the MACs of one all-powerful guided step, from flexcli's one compute model
    (`flexcli.compute.model_step_cost`; merged LoRAs cost nothing). With s0 == 1 the all-weak steps run unguided:
    one forward pass (the conditional one); `both` steps run the weak size for both guidance branches."""
    from flexcli.compute import model_step_cost

    cost = model_step_cost(model)
    p0, weak = model.patch_sizes[0], weak_of(model)
    costs = []
    for pc, pu in schedule.pairs():
        if not guided or (s0 == 1 and pc == pu == weak):
            costs.append(cost(pc, None))
        elif guid == "both" and _weak_guided(pc, pu):
            costs.append(cost(pc, None) + cost(pu, pu))
        else:
            costs.append(cost(pc, pu))
    return costs, cost(p0, p0)


# ---------------------------------------------------------------------------------------------- sampling
def make_denoiser(model, cfg, plan, y, null, guid: str, s0: float, weak):
    """`flexcli.sampling.make_denoiser` with what it lacks: unguided all-weak steps (s0 = 1, one forward pass) and
    the `both` mode's steps. Every other step is the library's (s0 through its s_cfg0)."""
    import torch

    from flexcli.sampling import make_denoiser as library_denoiser

    lib = library_denoiser(model, cfg, plan, y, null)
    c = plan.latent_shape[0]

    def denoise(x, step, t):
        pc, pu = plan.schedule.cond[step], plan.schedule.uncond[step]
        own_s0 = plan.guided and pc == pu == weak and s0 == 1
        own_both = plan.guided and guid == "both" and _weak_guided(pc, pu)
        if not (own_s0 or own_both):
            return lib(x, step, t)
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if own_s0:
            return model(x, tt, y, patch_size=pc)  # s0 = 1: unguided all-weak steps, one forward pass
        # both: e_c,P + (s2 - 1)(e_c,P - e_c,w) + (s1 - 1)(e_c,w - e_null,w)
        cond = model(x, tt, y, patch_size=pc)
        wc, wn = model(torch.cat([x, x]), torch.cat([tt, tt]), model.cat_conditions([y, null]),
                       patch_size=pu).chunk(2)
        g = cond[:, :c] + (plan.s2 - 1) * (cond[:, :c] - wc[:, :c]) + (plan.s1 - 1) * (wc[:, :c] - wn[:, :c])
        return torch.cat([g, cond[:, c:]], dim=1)
    return denoise


def own_latents(model, cfg, plan, guid: str, s0: float, weak, device="cpu"):
    """`flexcli.sampling.sample_latents`'s loop (the same per-sample seeds, noise and labels) with this script's
    denoiser."""
    import torch

    from flexcli.diffusion.samplers import make_generators, per_sample_noise, run_solver

    out = []
    with torch.no_grad():
        for start in range(0, cfg.num_samples, cfg.batch_size):
            idx = list(range(start, min(cfg.num_samples, start + cfg.batch_size)))
            gens = make_generators([cfg.seed + i for i in idx])
            x = per_sample_noise((len(idx), *plan.latent_shape), gens, device)
            y, null = plan.conditioning.batch(idx, device)
            den = make_denoiser(model, cfg, plan, y, null, guid, s0, weak)
            out.append(run_solver(plan.solver, den, x, plan.diffusion, gens, eta=cfg.eta).cpu())
    return torch.cat(out)


def run_cell(model, cell: dict, num_samples: int, batch_size: int, sampler=None, prompt_embeds: Path | None = None):
    """(uint8 NHWC images, labels (None with prompts), compute_same_steps, compute) for one cell. `sampler` runs the
    forward passes (e.g. a torch.compile'd `model`); the plan and costs come from `model`."""
    from flexcli.io.samples import to_uint8
    from flexcli.sampling import make_plan, sample_latents

    sampler = sampler if sampler is not None else model
    cfg = sample_config(cell, num_samples, batch_size, prompt_embeds)
    plan = make_plan(cfg, model)
    costs, base = step_costs(model, plan.schedule, cell["guid"], plan.guided, cell["_s0"])
    if cell["guid"] != "both" and cell["_s0"] != 1:
        assert costs == plan.step_macs and base == plan.baseline_step_macs, "FLOPs differ from flexcli sample's"
    same = sum(costs) / (base * plan.schedule.steps)
    compute = sum(costs) / (base * BASE_STEPS)
    if library_cell(cell):
        latents = sample_latents(sampler, cfg, plan, list(range(num_samples)), "cpu")
    else:
        latents = own_latents(sampler, cfg, plan, cell["guid"], cell["_s0"], weak_of(model))
    images = to_uint8(latents.float())
    return images.numpy(), plan.labels, same, compute


# ---------------------------------------------------------------------------------------------- CSV
def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(path)
        header = list(rows[0]) if rows else list(row)
        if set(row) - set(header):  # new columns: rewrite the file with the union of the columns
            header += [k for k in row if k not in header]
            tmp = path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows(rows)
            tmp.replace(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            if not rows and (not path.exists() or path.stat().st_size == 0):
                w.writeheader()
            w.writerow(row)


# ---------------------------------------------------------------------------------------------- main
def plan_cells(a, ckpts: dict, model_for) -> tuple[list[dict], Path | None, list | None]:
    """The --grid cells, canonical and deduplicated, planned against their checkpoints: (cells, prompt file,
    prompt labels); a bad grid value or schedule raises FlexcliError or ValueError."""
    from flexcli.families import family_of
    from flexcli.sampling import make_plan

    cells = []
    for g in a.grid:
        for c in parse_grid(g):
            if c["ckpt"] not in ckpts:
                raise ValueError(f"checkpoint {c['ckpt']!r} not given with --ckpt")
            if family_of(model_for(c["ckpt"])).conditioning == "text" and not a.heldout_prompts:
                raise ValueError(f"checkpoint {c['ckpt']!r} is text-to-image: pass --heldout-prompts")
            cells.append(canonical(c, a.num_samples))
    a.work.mkdir(parents=True, exist_ok=True)
    prompts, prompt_labels = None, None
    if a.heldout_prompts:
        from flexcli.builtin.demo_t2i import write_prompts

        text_length = model_for(cells[0]["ckpt"]).text_length
        prompts = a.work / f"prompts{a.num_samples}_len{text_length}.safetensors"
        prompts, prompt_labels = write_prompts(prompts, a.num_samples, text_length, a.work / "cache")
    seen, todo = set(), []
    for c in cells:
        m = model_for(c["ckpt"])
        plan = make_plan(sample_config(c, 1, 1, prompts), m)
        c = finish_key(c, plan.schedule, weak_of(m))
        if key_of(c) not in seen:
            seen.add(key_of(c))
            todo.append(c)
    return todo, prompts, prompt_labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", action="append", default=[], help="NAME=PATH of a distilled checkpoint")
    ap.add_argument("--grid", action="append", default=[], help="cells, see the module doc (repeatable)")
    ap.add_argument("--csv", type=Path, required=True)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--ref-images", type=int, default=10000, help="first N test images (10000 = the whole split)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "fewer_steps" / "metrics",
                    help="reference .npz and torch-fidelity's feature cache")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th cell starting at i")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--list", action="store_true", help="print the cells and their compute, run nothing")
    ap.add_argument("--heldout-prompts", action="store_true",
                    help="text-to-image checkpoints: sample i gets a held-out caption of class i %% 10 (issue #13)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the denoiser (about 1.3x on a CPU; outputs differ from eager by ~1e-6)")
    a = ap.parse_args(argv)

    import torch

    from _common import provenance
    from flexcli.api import load_model

    torch.set_num_threads(a.threads)
    ckpts = dict(s.split("=", 1) for s in a.ckpt)
    models: dict[str, object] = {}
    compiled: dict[str, object] = {}

    def model_for(name):
        if name not in models:
            models[name] = load_model(ckpts[name], merge_lora=True).eval()
        return models[name]

    def sampler_for(name):
        if not a.compile:
            return model_for(name)
        if name not in compiled:
            compiled[name] = torch.compile(model_for(name), dynamic=False)
        return compiled[name]

    from flexcli.errors import FlexcliError
    from flexcli.sampling import make_plan

    try:
        todo, prompts, prompt_labels = plan_cells(a, ckpts, model_for)
    except (FlexcliError, ValueError) as e:  # a bad --grid value or schedule: one line, no traceback
        print(f"fewer_steps.py: error: {e}", file=sys.stderr)
        return 2
    i, n = (int(v) for v in a.shard.split("/"))
    todo = todo[i::n]
    if a.list:
        for c in todo:
            m = model_for(c["ckpt"])
            plan = make_plan(sample_config(c, 1, 1, prompts), m)
            costs, base = step_costs(m, plan.schedule, c["guid"], plan.guided, c["_s0"])
            print(f"{sum(costs) / (base * BASE_STEPS):.4f}  " + " ".join(f"{k}={c[k]}" for k in KEY))
        return 0

    from fmnist_claims import _init_worker, score
    from flexcli.builtin.demo import write_reference

    ref = a.work / f"ref{a.ref_images}.npz"
    if not ref.exists():
        write_reference(ref.with_suffix(".tmp.npz"), a.ref_images).replace(ref)
    _init_worker(str(ref), str(a.work / "cache"), threads=a.threads)
    prov = provenance()
    t0 = time.perf_counter()
    for j, c in enumerate(todo):
        done = {key_of(r) for r in read_rows(a.csv)}
        if key_of(c) in done:
            continue
        start = time.perf_counter()
        images, labels, same, compute = run_cell(model_for(c["ckpt"]), c, a.num_samples, a.batch_size,
                                                 sampler=sampler_for(c["ckpt"]), prompt_embeds=prompts)
        m = score(images, labels if prompt_labels is None else prompt_labels)
        row = {k: c[k] for k in KEY}
        row.update(compute=round(compute, 6), compute_same_steps=round(same, 6),
                   **{k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in m.items()},
                   ref_images=a.ref_images, ckpt_path=ckpts[c["ckpt"]], compiled=int(a.compile), **prov)
        append_row(a.csv, row)
        print(f"[{time.perf_counter() - t0:8.1f} s] {j + 1}/{len(todo)} {' '.join(f'{k}={c[k]}' for k in KEY[:-1])}"
              f" compute {compute:.3f}: FID {m['fid']:.2f} acc {m['class_accuracy']:.3f} P {m['precision']:.3f} "
              f"R {m['recall']:.3f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
