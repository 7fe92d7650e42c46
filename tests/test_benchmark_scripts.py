"""Every benchmark script still imports and parses its command line against the current package layout, and the
#16 fewer-steps script still computes what its committed CSVs hold (issue #16: a refactor once broke them
silently, because their flexcli imports sit inside functions)."""
import ast
import csv
import importlib
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))
BASE = ROOT / "flexcli" / "assets" / "fashion_mnist_dit" / "model.safetensors"
FEWER = BENCH / "results" / "fewer_steps"


def _load(name: str, monkeypatch):
    """Import benchmarks/NAME.py as its own command line would (benchmarks/ and the repository on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flexcli_imports(path: Path):
    """(line, module, name or None) of every flexcli import, at any level (most scripts import lazily)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name, None) for a in node.names if a.name.startswith("flexcli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flexcli"):
            yield from ((node.lineno, node.module, a.name) for a in node.names)


@pytest.mark.parametrize("name", SCRIPTS + ["_common"])
def test_every_flexcli_import_resolves(name):
    missing = []
    for line, module, attr in _flexcli_imports(BENCH / f"{name}.py"):
        try:
            mod = importlib.import_module(module)
            if attr is not None and not hasattr(mod, attr):
                importlib.import_module(f"{module}.{attr}")
        except ImportError:
            missing.append(f"{name}.py:{line}: {module}" + (f".{attr}" if attr else ""))
    assert not missing, "benchmark imports that no longer exist: " + ", ".join(missing)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports_and_prints_help(name, monkeypatch, capsys):
    mod = _load(name, monkeypatch)
    if name == "profile_summary":  # no argparse: too few arguments print the usage
        assert mod.main([]) == 2 and "profile_summary.py OUTDIR" in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- fewer_steps.py
@pytest.fixture(scope="module")
def flex_base(tmp_path_factory):
    """The shipped base flexified with -p 8, as the committed screening runs used it (undistilled: the FLOPs and
    the schedule do not depend on the LoRA weights)."""
    if not BASE.exists():
        pytest.skip("shipped base checkpoint missing")
    from flexcli.api import flexify_checkpoint

    out = tmp_path_factory.mktemp("flex") / "flex.safetensors"
    flexify_checkpoint(BASE, [8], out, force=True)
    return out


def _cell(fs, model, grid: str, num_samples: int = 400):
    from flexcli.sampling import make_plan

    c = fs.canonical(fs.parse_grid(grid)[0], num_samples)
    return fs.finish_key(c, make_plan(fs.sample_config(c, 1, 1), model).schedule, fs.weak_of(model))


def test_fewer_steps_reproduces_the_committed_keys_and_compute(flex_base, monkeypatch):
    """Each committed screening row's key and compute come out of the ported script unchanged."""
    from flexcli.api import load_model
    from flexcli.sampling import make_plan

    fs = _load("fewer_steps", monkeypatch)
    model = load_model(flex_base, merge_lora=True).eval()
    rows = [r for f in ("screen.csv", "screen_flex.csv") for r in csv.DictReader(open(FEWER / f, newline=""))]
    assert rows
    for r in rows:
        grid = ";".join(f"{k}={r[k]}".replace(",", "+")
                        for k in ("ckpt", "solver", "steps", "sched", "guid", "s1", "s2", "s0", "seed") if r[k] != "")
        c = _cell(fs, model, grid, int(r["num_samples"]))
        assert fs.key_of(c) == fs.key_of(r), grid
        plan = make_plan(fs.sample_config(c, 1, 1), model)
        costs, base = fs.step_costs(model, plan.schedule, c["guid"], plan.guided, c["_s0"])
        assert round(sum(costs) / (base * fs.BASE_STEPS), 6) == pytest.approx(float(r["compute"]), abs=1e-6), grid
        assert round(sum(costs) / (base * plan.schedule.steps), 6) == pytest.approx(float(r["compute_same_steps"]),
                                                                                    abs=1e-6), grid


def test_fewer_steps_own_loop_equals_the_library(flex_base, monkeypatch, capsys):
    """The script's loop and denoiser (used for s0 and `both`) give flexcli.sampling's latents exactly where the
    library can express the cell, and its own steps change only what they should."""
    from flexcli.api import load_model
    from flexcli.sampling import make_plan, sample_latents

    fs = _load("fewer_steps", monkeypatch)
    model = load_model(flex_base, merge_lora=True).eval()
    weak = fs.weak_of(model)
    outs = {}
    for grid in ("ckpt=a;solver=ddpm;steps=4;sched=2/1;guid=weak;s1=4",
                 "ckpt=a;solver=ddpm;steps=4;sched=2/1;guid=weak;s1=4;s0=1",
                 "ckpt=a;solver=ddpm;steps=4;sched=2/1;guid=both;s1=4"):
        c = _cell(fs, model, grid, 2)
        cfg = fs.sample_config(c, 2, 2)
        plan = make_plan(cfg, model)
        outs[grid] = fs.own_latents(model, cfg, plan, c["guid"], c["_s0"], weak)
        if fs.library_cell(c):
            assert torch.equal(outs[grid], sample_latents(model, cfg, plan, [0, 1], "cpu"))
    assert len({tuple(v.flatten()[:8].tolist()) for v in outs.values()}) == 3  # s0 and both do change the samples
    assert fs.main(["--ckpt", f"a={flex_base}", "--csv", str(flex_base.with_suffix(".csv")), "--list",
                    "--grid", "ckpt=a;solver=ddpm;steps=50,30;sched=P,30/15;guid=weak;s1=4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["1.0000", "0.5850", "0.6000", "0.4868"]
    assert not flex_base.with_suffix(".csv").exists()
    for grid in ("ckpt=a;solver=ddpm;steps=4;sched=3:2;s1=4",  # segments that do not cover the steps
                 "ckpt=a;solver=ddpm;steps=four;s1=4", "ckpt=a;solver=ddpm;steps;s1=4",
                 "ckpt=b;solver=ddpm;steps=4;s1=4"):  # b: no --ckpt b
        assert fs.main(["--ckpt", f"a={flex_base}", "--csv", str(flex_base.with_suffix(".csv")), "--list",
                        "--grid", grid]) == 2, grid  # one line, no traceback
        err = capsys.readouterr().err
        assert err.startswith("fewer_steps.py: error: ") and err.count("\n") == 1, err
    assert not flex_base.with_suffix(".csv").exists()


def test_library_all_weak_scale_samples_the_scripts_s0_cells(flex_base, monkeypatch):
    """The script samples its s0 cells through flexcli sample's `cfg_scale_all_weak`: its loop gives the library's
    latents bit for bit, and s0 does change the samples."""
    import dataclasses

    from flexcli.api import load_model
    from flexcli.sampling import make_plan, sample_latents

    fs = _load("fewer_steps", monkeypatch)
    model = load_model(flex_base, merge_lora=True).eval()
    c = _cell(fs, model, "ckpt=a;solver=ddpm;steps=4;sched=2/1;guid=weak;s1=4;s0=6", 2)
    cfg = fs.sample_config(c, 2, 2)
    own = fs.own_latents(model, cfg, make_plan(cfg, model), c["guid"], c["_s0"], fs.weak_of(model))
    assert cfg.cfg_scale_all_weak == 6.0 and fs.library_cell(c)
    assert torch.equal(own, sample_latents(model, cfg, make_plan(cfg, model), [0, 1], "cpu"))
    plain = dataclasses.replace(cfg, cfg_scale_all_weak=None)
    assert not torch.equal(own, sample_latents(model, plain, make_plan(plain, model), [0, 1], "cpu"))


def test_fewer_steps_report_verdicts(monkeypatch):
    """The per-budget verdict: FID-best fewer-steps cell, the best flex cell within 2 accuracy points of it, the
    5 % FID target, and the most accurate fewer-steps cell beside them."""
    import pandas as pd

    rep = _load("fewer_steps_report", monkeypatch)
    rows = []
    for seed in (0, 1):
        for solver, steps, sched, guid, s1, s0, compute, fid, acc in (
                ("dpm++2m", 22, "22/22", "cfg", "2.5", "", 0.44, 141.0, 0.70),   # FID-best fewer steps
                ("dpm++2m", 22, "22/22", "cfg", "3.5", "", 0.44, 142.0, 0.77),   # most accurate fewer steps
                ("ddpm", 38, "22/11", "weak", "5", "6", 0.4355, 105.0, 0.69),   # flex, within 2 points of 0.70
                ("ddpm", 40, "24/12", "weak", "5", "6", 0.468, 90.0, 0.75)):    # over the budget
            rows.append(dict(ckpt="d", solver=solver, steps=steps, sched=sched, guid=guid, s1=s1, s2="", s0=s0,
                             seed=seed, num_samples=2000, compute=compute, fid=fid + seed, class_accuracy=acc,
                             precision=0.6, recall=0.5, ref_images=10000))
    lines, table = rep.verdicts(pd.DataFrame(rows), [0.45])
    text = "\n".join(lines)
    assert "45 % compute: target REACHED" in text and "FID 25.4 % lower" in text and "accuracy -1.0 points" in text
    assert "most accurate fewer-steps cell: 22 dpm++2m steps (cfg s1 3.5" in text
    assert "FID is 26.0 % lower and its accuracy -8.0 points" in text
    assert [t["kind"] for t in table] == ["fewer steps", "flex"] and table[1]["r"].steps == 38
    assert rep.lower(-9.06) == "9.1 % higher" and rep.lower(0.0) == "0.0 % lower"


# ---------------------------------------------------------------------------------------------- #13: text-to-image
def test_fewer_steps_samples_the_t2i_default_with_heldout_prompts(tmp_path, monkeypatch):
    """`--heldout-prompts`: a PixArt cell is sampled with one held-out caption per sample (sample i names class
    i % 10) and its row's class_accuracy is the shipped classifier's alignment with those captions."""
    from flexcli.api import flexify_checkpoint, load_model
    from flexcli.builtin import classifier
    from flexcli.builtin.demo_t2i import write_prompts
    from flexcli.io.checkpoint import save_checkpoint
    from flexcli.models.pixart import random_pixart
    from flexcli.models.pixart_config import named_pixart_config

    if not classifier.DEFAULT_WEIGHTS.exists():
        pytest.skip("shipped classifier missing")
    base = save_checkpoint(random_pixart(named_pixart_config("PixArt-FMNIST/4", num_layers=1), seed=0, std=0.02),
                           tmp_path / "base.safetensors")
    flex, _, _ = flexify_checkpoint(base, [8], tmp_path / "flex.safetensors", force=True)
    fs = _load("fewer_steps", monkeypatch)
    out, work = tmp_path / "t2i.csv", tmp_path / "work"
    grid = "ckpt=t;solver=ddpm;steps=2;sched=1/1;guid=cfg;s1=3"
    assert fs.main(["--ckpt", f"t={flex}", "--csv", str(out), "--grid", grid]) == 2  # class labels: an error
    assert not out.exists()
    assert fs.main(["--ckpt", f"t={flex}", "--csv", str(out), "--num-samples", "10", "--ref-images", "40",
                    "--batch-size", "10", "--heldout-prompts", "--work", str(work), "--grid", grid]) == 0
    row, = fs.read_rows(out)
    model = load_model(flex, merge_lora=True).eval()
    embeds, labels = write_prompts(tmp_path / "p.safetensors", 10, model.text_length, work / "cache")
    assert labels == [i % 10 for i in range(10)]
    from flexcli.sampling import make_plan

    c = fs.canonical(fs.parse_grid(grid)[0], 10)
    c = fs.finish_key(c, make_plan(fs.sample_config(c, 1, 1, embeds), model).schedule, fs.weak_of(model))
    images, no_labels, _, compute = fs.run_cell(model, c, 10, 10, prompt_embeds=embeds)
    assert no_labels is None and float(row["compute"]) == pytest.approx(compute, abs=1e-6)
    acc = classifier.class_accuracy(torch.from_numpy(images), labels)["accuracy"]
    assert float(row["class_accuracy"]) == pytest.approx(acc)


def _t2i_claims(rep, tmp_path, fewer_fid: float = 80.0) -> str:
    """claims.md of `t2i_claims_report` on a made-up two-seed final.csv (fewer steps: 30 DDPM steps at 60 %, FID
    `fewer_fid` + seed, alignment 87 %)."""
    import pandas as pd

    rows = []
    for seed in (1, 0):  # two shards may append the later seed first
        for ckpt, steps, sched, s1, compute, fid, acc in (
                ("d", 50, "50/50", "2", 1.0, 70.0, 0.88), ("d", 50, "50/50", "4.5", 1.0, 120.0, 0.90),
                ("d", 50, "22/22", "3", 0.593, 85.0, 0.85), ("d", 50, "22/22", "6", 0.593, 122.0, 0.895),
                ("p", 50, "22/22", "3", 0.593, 150.0, 0.70),
                ("d", 50, "4:22,8:28/4:22,8:28", "3", 0.593, 95.0, 0.86),
                ("d", 30, "30/30", "2", 0.6, fewer_fid, 0.87)):
            rows.append(dict(ckpt=ckpt, solver="ddpm", steps=steps, sched=sched, guid="cfg", s1=s1, s2="", s0="",
                             seed=seed, num_samples=2000, compute=compute, fid=fid + seed, class_accuracy=acc,
                             precision=0.6, recall=0.5, ref_images=10000))
    csv_path = tmp_path / "final.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    assert rep.main([str(csv_path), "--out", str(tmp_path), "--budgets", "0.60"]) == 0
    return (tmp_path / "claims.md").read_text()


def test_t2i_claims_report_verdicts(monkeypatch, tmp_path):
    """#13's verdicts: the fixed-CFG match at <= 60 %, the best scales, and flex against PI-only, weak-last and
    fewer steps, each at its lowest-FID scale; a lower FID with 2 points less alignment is mixed, not a win."""
    rep = _load("t2i_claims_report", monkeypatch)
    text = _t2i_claims(rep, tmp_path)
    assert "Fixed CFG 4.5, a weak-first schedule (<= 60 % compute, FID <= 126.5, alignment >= 89.0 %): REACHED.**" \
        in text
    assert "The cheapest match: 50 ddpm steps, schedule 22/22 (cfg s1 6; d)" in text
    assert "HOLDS.** Flex's lowest FID is at s1 3" in text and "the baseline's at s1 2" in text
    assert "Flex beats PI-only: FID 43.2 % lower" in text and "Flex beats weak-last: FID 10.5 % lower" in text
    assert "Paired (PI-only -> flex): seed 0: FID -43.3 %, acc +15.0 pt, seed 1: FID -43.0 %" in text  # seed order
    assert "Flex does NOT beat fewer steps: FID 6.2 % higher, alignment -2.0 points" in text
    mixed = _t2i_claims(rep, tmp_path, fewer_fid=90.0)  # flex 85 / 85 % against 90 / 87 %
    assert "Flex vs fewer steps is MIXED: FID 5.5 % lower, alignment -2.0 points" in mixed
    assert "Flex beats fewer steps" not in mixed and "Flex beats weak-last: FID 10.5 % lower" in mixed


def test_video_claims_runs_resumes_and_reports(tmp_path, monkeypatch):
    """#15's benchmark on a tiny random Wan-FMNIST: every cell (grid, weak guidance, PI-only, weak-last) once per
    seed, a second run adds nothing, and the report names each verdict from the rows it read."""
    from wan_helpers import tiny_fmnist_wan_base

    base = tiny_fmnist_wan_base(tmp_path / "base.safetensors")
    mod = _load("video_claims", monkeypatch)
    argv = ["--base", str(base), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
            "--lora-rank", "4", "--distill-steps", "2", "--num-samples", "10", "--ref-clips", "20", "--seeds", "0,1",
            "--steps", "2",
            "--weak-steps", "1,2", "--baseline-steps", "1", "--cfg-scales", "4", "--weak-guidance", "2/1",
            "--ablation", "1/1", "--short-flex", "temporal 0/0 of 1", "--batch-size", "10", "--threads", "1"]
    report = mod.main(argv)
    rows = list(csv.DictReader(open(tmp_path / "out" / "cells.csv")))
    # baseline + 1 fewer step, 2 modes x (2 schedules + weak guidance + weak-last + PI-only), 1 over fewer total
    # steps: 13 cells x 2 seeds
    assert len(rows) == 26 and {r["seed"] for r in rows} == {"0", "1"}
    assert sum(r["checkpoint"] == "pi-only" for r in rows) == 4 and sum("weak-last" in r["label"] for r in rows) == 4
    a = next(r for r in rows if r["label"] == "powerful 2 steps @4" and r["seed"] == "0")
    b = next(r for r in rows if r["label"] == "powerful 2 steps @4" and r["seed"] == "1")
    assert a["fid"] != b["fid"]  # seeds differ
    assert [r["seed"] for r in rows] == ["0"] * 13 + ["1"] * 13  # seed-major: a run cut short has whole seeds
    short = next(r for r in rows if r["label"] == "temporal 0/0 of 1 @4" and r["seed"] == "0")
    assert (short["steps"], short["weak_steps"]) == ("1", "1")  # one weak step, half the baseline's steps
    assert float(short["compute_fraction"]) == pytest.approx(float(next(
        r for r in rows if r["label"] == "temporal 0/0 of 2 @4")["compute_fraction"]) / 2)
    mod.main(argv)
    assert len(list(csv.DictReader(open(tmp_path / "out" / "cells.csv")))) == 26  # resumed: nothing re-run
    only = argv + ["--seeds", "2", "--only", "powerful 2 steps @4; PI-only temporal 1/1 of 2 @4"]
    mod.main(only)
    extra = list(csv.DictReader(open(tmp_path / "out" / "cells.csv")))[26:]
    assert sorted((r["label"], r["seed"]) for r in extra) == [("PI-only temporal 1/1 of 2 @4", "2"),
                                                              ("powerful 2 steps @4", "2")]
    for bad in (["--only", "powerful 2 steps @4; powerful 3 steps @4"], ["--short-flex", "sideways 0/0 of 1"],
                ["--short-flex", "spatial 3/3 of 2"], ["--short-flex", "temporal 1/1 of 2"]):  # the last repeats
        with pytest.raises(SystemExit) as exit_:  # a mistyped cell stops at once, before any work
            mod.main(argv + ["--seeds", "3"] + bad)
        assert exit_.value.code == 2
    assert len(list(csv.DictReader(open(tmp_path / "out" / "cells.csv")))) == 28
    text = report.read_text()
    for heading in ("Most compute saved", "Distilled vs PI-only", "Flex vs fewer steps", "Every cell"):
        assert heading in text
    assert "vs PI-only" in text and "vs weak-last" in text
    line = next(x for x in text.splitlines() if x.startswith("- ") and "** powerful 1 steps @4" in x)
    flex = line[2:line.index(" (")]  # flex minus fewer steps, seed by seed, from the rows
    fid = {(r["label"], r["seed"]): float(r["fid"]) for r in csv.DictReader(open(tmp_path / "out" / "cells.csv"))}
    diffs = ", ".join(f"{fid[(flex, s)] - fid[('powerful 1 steps @4', s)]:+.2f}" for s in "01")
    assert f"seed by seed (0, 1): FID {diffs}, accuracy " in line


def test_video_claims_runs_from_a_carried_work_folder_without_minilm(tmp_path, monkeypatch):
    """On a lent GPU (no MiniLM, no training data) the claims run from what benchmarks/video_bundle.sh packs: the
    distilled checkpoints and the encoded prompts. The PI-only checkpoints are flexified again there, and every row
    equals the one from the folder that made them (LoRA B starts at zero, so A's random init cannot show)."""
    import shutil

    from wan_helpers import tiny_fmnist_wan_base

    from flexcli.builtin import captions

    base = tiny_fmnist_wan_base(tmp_path / "base.safetensors")
    mod = _load("video_claims", monkeypatch)
    common = ["--base", str(base), "--lora-rank", "4", "--distill-steps", "2", "--num-samples", "10",
              "--ref-clips", "20", "--seeds", "0", "--steps", "2", "--weak-steps", "1", "--baseline-steps", "1",
              "--cfg-scales", "4", "--weak-guidance", "", "--ablation", "1/1", "--short-flex", "", "--batch-size", "10",
              "--threads", "1"]
    made, carried = tmp_path / "made", tmp_path / "carried"
    assert mod.main(common + ["--work", str(made), "--prepare"]) == made
    assert not (made / "runs").exists()  # --prepare samples nothing
    for mode in ("temporal", "spatial"):
        (carried / f"distill-{mode}").mkdir(parents=True)
        shutil.copy(made / f"distill-{mode}" / "distilled.safetensors", carried / f"distill-{mode}")
    shutil.copy(made / "prompts-10.safetensors", carried)

    def no_minilm(*a, **k):
        raise AssertionError("MiniLM loaded")
    monkeypatch.setattr(captions, "_minilm", no_minilm)
    mod.main(common + ["--work", str(made), "--out", str(tmp_path / "out-made")])
    mod.main(common + ["--work", str(carried), "--out", str(tmp_path / "out-carried")])
    assert (carried / "flex-temporal.safetensors").exists() and (carried / "flex-spatial.safetensors").exists()
    keys = ("label", "checkpoint", "fid", "class_accuracy", "temporal_gap", "source")  # source: under --work
    rows = [[{k: r[k] for k in keys} for r in csv.DictReader(open(tmp_path / out / "cells.csv"))]
            for out in ("out-made", "out-carried")]
    # baseline + 1 fewer step, 2 modes x (a schedule, weak-last, PI-only)
    assert len(rows[0]) == 8 and sum(r["checkpoint"] == "pi-only" for r in rows[0]) == 2
    assert rows[0] == rows[1]


def test_gpu_session_dry_run_profiles_every_shape(tmp_path):
    """benchmarks/gpu_session.sh has never had a GPU in CI: its DRY_RUN profiles every forward stage with --analytic,
    so a renamed config, a flag typo or a latent a patch size does not tile fails here, not on a lent GPU. The
    exact FLOPs of the shapes it times are the ones the README quotes."""
    import pandas as pd

    env = {**os.environ, "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(BENCH / "gpu_session.sh"), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = pd.concat([pd.read_csv(p) for p in sorted(tmp_path.glob("*.csv"))], ignore_index=True)
    got = {(r.model, str(r.patch_size)): (r.tokens, round(r.gflops, 2)) for r in rows.itertuples()}
    assert got[("DiT-XL/2", "2")] == (1024, 1049.08) and got[("DiT-XL/2", "4")] == (256, 237.33)
    assert got[("PixArt-XL/2-512", "2")][0] == 1024 and got[("PixArt-XL/2-512", "4")][0] == 256
    assert got[("Wan2.1-T2V-1.3B", "1x2x2")] == (33792, 298339.87)  # README's T2V table
    assert got[("Wan2.1-T2V-1.3B", "2x2x2")] == (16896, 96634.78)
    assert got[("Wan2.1-T2V-1.3B", "1x4x4")] == (8448, 35246.28)
    assert "no CSV" not in (tmp_path / "session.log").read_text()


def test_profile_summary_checks_dit_rows_beside_3d_patches(tmp_path, capsys, monkeypatch):
    """The H200 run of 2026-12-04 (benchmarks/results/gpu_h200/profile.csv): once Wan's 3-D patches ("1x2x2") share
    the patch column it is text, and issue #5's check still finds the DiT-XL/2 rows and prints their ratios."""
    mod = _load("profile_summary", monkeypatch)
    assert mod.main([str(tmp_path), str(BENCH / "results" / "gpu_h200" / "profile.csv")]) == 0
    err = capsys.readouterr().err
    assert "check (issue #5): DiT-XL/2 512x512 bf16 compiled on NVIDIA H200, batch 2: p2 5.704 ms, p4 2.494 ms" in err
    assert "latency ratio 0.4373 vs FLOPs ratio 0.2262 (+0.05 allowed): FAIL" in err
    assert (tmp_path / "roofline.png").exists() and (tmp_path / "latency_vs_flops.png").exists()


def test_op_count_merged_weak_pass_dispatches_what_the_powerful_pass_does(tmp_path, monkeypatch):
    """benchmarks/op_count.py on a DiT-S/2: merged LoRAs leave the weak pass as long as the powerful one (one add
    more), while peft's unmerged LoRAs roughly double it: the launches an eager GPU step pays for."""
    import pandas as pd

    mod = _load("op_count", monkeypatch)
    rows = pd.read_csv(mod.main(["--model", "DiT-S/2", "--image-size", "64", "--out", str(tmp_path / "ops.csv")]))
    ops = {(r.lora, r.patch_size): r.ops for r in rows.itertuples()}
    assert ops[("unmerged", 2)] == ops[("merged", 2)]  # the powerful pass never touches a LoRA
    assert ops[("merged", 4)] == ops[("merged", 2)] + 1
    assert ops[("unmerged", 4)] > 1.8 * ops[("merged", 4)]


# ---------------------------------------------------------------------------------------------- video_motion.py
def test_video_motion_reads_real_clips_the_same_way_by_box_and_by_centroid(monkeypatch):
    """The ink centroid moves with the path exactly, as the box centre does, so real clips' motion columns agree;
    a clip whose frames are shuffled in time loses its velocity correlation."""
    from flexcli.builtin import moving_fmnist as M

    vm = _load("video_motion", monkeypatch)
    clips, _ = M.moving_fashion_mnist("test")
    idx = torch.arange(200)
    x = clips[idx]
    moved = (clips.positions[idx] - clips.positions[idx][:, :1]).float()
    centroids = vm.ink_centroids(x, -0.9)
    assert torch.allclose(centroids - centroids[:, :1], moved, atol=1e-4)
    rows = vm.motion_rows(x, "real", [-0.9, 0.0])
    assert [(r["reading"], r["ink"]) for r in rows] == [("box", -0.9), ("centroid", -0.9), ("box", 0.0),
                                                         ("centroid", 0.0)]
    for r in rows[1:]:
        for k in ("speed", "steady", "jerk", "velocity_correlation"):
            assert r[k] == pytest.approx(rows[0][k], abs=1e-4), (r, k)
    assert rows[0]["velocity_correlation"] > 0.5
    shuffled = x[:, :, torch.tensor([0, 2, 1, 3])]
    assert vm.motion_rows(shuffled, "shuffled", [-0.9])[0]["velocity_correlation"] < 0.2


def test_video_motion_extrapolation_tells_a_continued_path_from_a_stopped_item(monkeypatch):
    """The extrapolation probe holds the given frames on their noising path (they come out as the real frames), and
    its scores tell a denoiser that continues the path from one that leaves the item where the frame before had it."""
    from flexcli.builtin import moving_fmnist as M

    vm = _load("video_motion", monkeypatch)
    clips, _ = M.moving_fashion_mnist("test")
    x0 = vm.straight_clips(clips[torch.arange(120)])
    assert 20 <= len(x0) < 120

    def towards(target):  # the flow velocity whose x0 prediction is `target`
        return lambda x, t: (x - target) / (t / 1000.0)

    blank_given = x0.clone()
    blank_given[:, :, :-1] = -1.0  # the denoiser's view of the given frames is ignored: they follow x0's path
    out = vm.extrapolate(towards(blank_given), x0, steps=8, seed=0)
    assert torch.allclose(out[:, :, :-1], x0[:, :, :-1], atol=1e-4)
    moving = vm.extrapolation_row(out, x0)
    assert moving["on_path"] == 1.0 and moving["path_error"] <= 0.5 and moving["stay_error"] >= 1
    stopped = x0.clone()
    stopped[:, :, -1] = x0[:, :, -2]
    still = vm.extrapolation_row(vm.extrapolate(towards(stopped), x0, steps=8, seed=0), x0)
    assert still["on_path"] == 0.0 and still["stay_error"] <= 0.5 and still["path_error"] >= 1
    walk = vm.momentum_free_reference(clips[torch.arange(120)], x0)  # a random real step: sometimes on the path
    assert 0.05 < walk["on_path"] < 0.5 and walk["path_error"] > walk["stay_error"] > 1
