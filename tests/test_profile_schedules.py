"""`flexcli profile --schedules` (issue #5, item 3): whole sampling runs, FLOPs from the sampler, both packings."""
import csv
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from flexcli.api import flexify_checkpoint, load_model
from flexcli.cli import app
from flexcli.profiling.plots import plot_latency_vs_flops, plot_roofline, with_ratios
from flexcli.profiling.spec import FLOPS_COLUMNS, META_COLUMNS, TIMING_COLUMNS
from flexcli.errors import FlexcliError
from flexcli.quickstart import tiny_checkpoint
from flexcli.compute import step_cost_fn
from flexcli.sampling import SampleConfig, make_plan, run_record

runner = CliRunner()
FAST = ["--repeats", "1", "--warmup", "1"]
SCHEDULES = ["10/10", "5/5", "3/3", "5/3"]  # 5/3: mixed-size steps, where the two packings differ


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    base = tiny_checkpoint(folder / "dit.safetensors")
    flex, _, _ = flexify_checkpoint(base, [4], folder / "flex.safetensors", lora_rank=8)
    return base, flex


@pytest.fixture(scope="module")
def sched_csv(ckpts, tmp_path_factory):
    """One schedule profile of the flex checkpoint, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("prof") / "run"
    res = runner.invoke(app, ["profile", "-c", str(ckpts[1]), "--schedules", ",".join(SCHEDULES), "--steps", "10",
                              *FAST, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out, res


def _ok(args):
    res = runner.invoke(app, ["profile", *args])
    assert res.exit_code == 0, res.output
    return res


# ------------------------------------------------------------------------------------------------------
def test_schedule_rows_have_the_samplers_flops_and_both_packings(ckpts, sched_csv):
    out, res = sched_csv
    # no roofline for sampling runs (no single arithmetic intensity); the latency plot is drawn
    assert [os.path.basename(p) for p in res.stdout.split()] == ["profile.csv", "latency_vs_flops.png"]
    with open(out / "profile.csv") as f:
        assert next(csv.reader(f)) == FLOPS_COLUMNS + TIMING_COLUMNS + META_COLUMNS
    df = pd.read_csv(out / "profile.csv")
    assert set(df.kind) == {"schedule"} and len(df) == 2 * len(SCHEDULES)
    assert sorted(zip(df.schedule, df.packing)) == sorted((s, p) for s in SCHEDULES for p in ("separate", "packed"))
    assert df.patch_size.isna().all() and df.tokens.isna().all() and df.arithmetic_intensity.isna().all()
    assert set(df.steps) == {10} and set(df.batch) == {2} and set(df.lora) == {"unmerged"}
    assert (df.latency_ms > 0).all() and set(df.repeats) == {1} and set(df.compile) == {False}
    model = load_model(ckpts[1])
    for _, r in df.iterrows():  # FLOPs: the sampler's own per-step costs summed over the steps, as run.json
        cfg = SampleConfig(num_samples=2, batch_size=2, steps=10, schedule=r.schedule, packing=r.packing)
        plan = make_plan(cfg, model)
        record = run_record(cfg, model, plan, 0.0, torch.device("cpu"), 1)
        assert r.flops == record["flops"]["total"] == 2 * r.macs, (r.schedule, r.packing)
        assert r.batch_flops == 2 * r.flops and r.batch_macs == 2 * r.macs and r.gflops == r.flops / 1e9
        assert r.achieved_tflops == pytest.approx(r.batch_flops / (r.latency_ms / 1e3) / 1e12)
        assert f"compute fraction {record['flops']['compute_fraction']:.4f}" in r.notes
    by = {(r.schedule, r.packing): r for _, r in df.iterrows()}
    # x/x schedules run the same code with either packing: one measurement, said so in the notes
    for s in ("10/10", "5/5", "3/3"):
        assert by[(s, "packed")].flops == by[(s, "separate")].flops
        assert by[(s, "packed")].latency_ms == by[(s, "separate")].latency_ms
        assert "one measurement for both rows" in by[(s, "packed")].notes
    # 5/3 has mixed steps: the packed pass attends densely over both sequences, so it costs more
    assert by[("5/3", "packed")].flops > by[("5/3", "separate")].flops
    assert "one measurement" not in by[("5/3", "packed")].notes
    # FLOPs ratios within each packing group, relative to the all-powerful schedule: 3/3 < 5/5 < 10/10
    r = with_ratios(df)
    for packing in ("separate", "packed"):
        g = r[r.packing == packing].set_index("schedule")
        assert g.flops_ratio["3/3"] < g.flops_ratio["5/5"] < g.flops_ratio["10/10"] == 1.0
        assert g.latency_ratio["10/10"] == 1.0
    assert "schedule 5/3 (10 steps, packed)" in res.stderr


def test_flops_equal_flexcli_sample_run_json(ckpts, sched_csv, tmp_path):
    """The same schedule through `flexcli sample`: its run.json totals are the profile's FLOPs columns."""
    res = runner.invoke(app, ["sample", str(ckpts[1]), "--out", str(tmp_path / "s"), "--steps", "10",
                              "--schedule", "5/3", "-n", "1"])
    assert res.exit_code == 0, res.output
    flops = json.loads((tmp_path / "s" / "run.json").read_text())["flops"]
    df = pd.read_csv(sched_csv[0] / "profile.csv").set_index(["schedule", "packing"])
    assert df.loc[("5/3", "separate"), "flops"] == flops["total"] == flops["packing_options_total"]["separate"]
    assert df.loc[("5/3", "packed"), "flops"] == flops["packing_options_total"]["packed_dense"]


def test_plots_are_drawn_from_the_csv_alone(sched_csv, tmp_path):
    csv_path = sched_csv[0] / "profile.csv"
    script = ("import sys; from flexcli.profiling.plots import plot_latency_vs_flops; "
              f"plot_latency_vs_flops({str(csv_path)!r}, {str(tmp_path / 'l.png')!r}); "
              "assert 'torch' not in sys.modules, 'plots imported torch'")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "l.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FlexcliError, match="no timed forward rows"):  # sampling runs have no roofline
        plot_roofline(csv_path, tmp_path / "r.png")
    # a CSV holding forward and schedule rows (as benchmarks/profile_summary.py merges them) draws both plots
    _ok(["--model", "DiT-Tiny/2", "--patch-sizes", "2,4", "--repeats", "1", "--warmup", "0",
         "-o", str(tmp_path / "fwd.csv")])
    merged = tmp_path / "merged.csv"
    pd.concat([pd.read_csv(tmp_path / "fwd.csv"), pd.read_csv(csv_path)]).to_csv(merged, index=False)
    plot_roofline(merged, tmp_path / "r.png")
    plot_latency_vs_flops(merged, tmp_path / "l2.png")
    groups = with_ratios(pd.read_csv(merged)).groupby("group").flops_ratio.max()
    assert len(groups) == 3 and (groups == 1.0).all()  # forward, sampling separate, sampling packed


def test_random_weights_flexified_in_memory_merged_and_unmerged(tmp_path):
    _ok(["--model", "DiT-Tiny/2", "--schedules", "4/4,2/2", "--steps", "4", "--weak-patch", "8", "--merge-lora",
         "--cfg-scale", "1.5", "--solver", "ddim", *FAST, "-o", str(tmp_path / "r.csv")])
    df = pd.read_csv(tmp_path / "r.csv")
    assert sorted(set(zip(df.lora, df.schedule))) == [("merged", "2/2"), ("merged", "4/4"),
                                                     ("unmerged", "2/2"), ("unmerged", "4/4")]
    assert set(df.source) == {"random weights, flexified in memory (LoRA r32, weak p8)"}
    assert set(df.model) == {"DiT-Tiny/2"} and len(df) == 8 and "ddim, 4 steps, cfg scale 1.5" in df.notes[0]
    from flexcli.models.configs import named_config

    cfg = named_config("DiT-Tiny/2")
    for _, r in df.iterrows():  # the sampler's step costs: LoRA FLOPs on the weak steps only while unmerged
        cost = step_cost_fn(cfg, lora_rank=32 if r.lora == "unmerged" else 0, packing=r.packing)
        weak = 4 - int(r.schedule.split("/")[0])
        assert r.macs == weak * cost(8, 8) + (4 - weak) * cost(2, 2)
    m = df.set_index(["lora", "schedule", "packing"]).flops
    assert m[("unmerged", "2/2", "separate")] > m[("merged", "2/2", "separate")]
    assert m[("unmerged", "4/4", "separate")] == m[("merged", "4/4", "separate")]


def test_analytic_schedules(ckpts, sched_csv, tmp_path):
    """No timing, no device: the FLOPs columns only, equal to the timed run's."""
    _ok(["-c", str(ckpts[1]), "--schedules", ",".join(SCHEDULES), "--steps", "10", "--analytic", "--dtype", "fp32",
         "-o", str(tmp_path / "a.csv")])
    df = pd.read_csv(tmp_path / "a.csv")
    assert list(df.columns) == FLOPS_COLUMNS + META_COLUMNS and len(df) == 2 * len(SCHEDULES)
    timed = pd.read_csv(sched_csv[0] / "profile.csv")
    key = ["schedule", "packing", "macs", "flops", "batch_flops", "param_bytes"]
    assert df[key].sort_values(key).values.tolist() == timed[key].sort_values(key).values.tolist()


# ------------------------------------------------------------------------------------------------------
def _bad(args, *words, folder=None):
    res = runner.invoke(app, ["profile", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("which,args,words", [
    ("flex", ["--schedules", "abc"], ("cannot parse schedule 'abc'",)),
    ("flex", ["--schedules", "10/10,x/y"], ("cannot parse schedule 'x/y'",)),
    ("flex", ["--schedules", "20/20"], ("20 powerful steps is more than the 10 steps",)),
    ("flex", ["--schedules", ","], ("--schedules is empty",)),
    ("flex", ["--schedules", "5/5", "--weak-patch", "8"], ("--weak-patch 8 is not a patch size", "[2, 4]")),
    ("flex", ["--schedules", "2:5,8:5;10/10"], ("uses patch size 8 but the checkpoint has only [2, 4]",)),
    ("flex", ["--schedules", "2:5,4:5,10/10"], ("separate the schedules with ';'",)),
    ("base", ["--schedules", "10/10,5/5"], ("needs a weak patch size", "only patch size 2")),
    ("base", ["--schedules", "10/10", "--merge-lora"], ("--merge-lora needs a LoRA-flexified checkpoint",)),
    ("flex", ["--schedules", "5/5", "--solver", "euler"], ("unknown solver 'euler'",)),
    ("flex", ["--schedules", "5/5", "--patch-sizes", "2"], ("cannot be combined with --schedules",)),
    ("flex", ["--merge-lora"], ("only apply to --schedules",)),
    (None, ["--model", "DiT-Tiny/2", "--schedules", "5/5", "--weak-patch", "3"], ("patch size 3 does not divide",)),
    (None, ["--model", "DiT-Tiny/2", "--schedules", "5/5", "--weak-patch", "2"], ("--weak-patch 2 is not a weak",)),
])
def test_bad_schedule_input(ckpts, tmp_path, which, args, words):
    source = {"base": ["-c", str(ckpts[0])], "flex": ["-c", str(ckpts[1])], None: []}[which]
    _bad([*source, "--steps", "10", *args, "-o", str(tmp_path / "o")] if "--schedules" in args
         else [*source, *args, "-o", str(tmp_path / "o")], *words)
    assert os.listdir(tmp_path) == []


def test_parse_schedules():
    from flexcli.diffusion.schedule import parse_schedules

    assert parse_schedules("250/250, 130/130,70/70,250/250") == ["250/250", "130/130", "70/70"]
    assert parse_schedules("8:50,2:200;250/250") == ["8:50,2:200", "250/250"]  # ';' when schedules have commas
    assert parse_schedules("8:50,2:200") == ["8:50,2:200"] and parse_schedules(None) is None  # one schedule
    assert parse_schedules("4:150,2:100/4:200,2:50") == ["4:150,2:100/4:200,2:50"]
