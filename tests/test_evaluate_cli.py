"""`flexcli evaluate`: existing samples and a sweep through the sample library into pareto.csv + plots; a budget
pick ready for `flexcli sample`; bad input gives one line and exit 2, with no output left behind."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from evaluate_utils import images, inception, one_blas_thread, register_tiny, tiny_clip, write_run  # noqa: F401
from flexcli.cli import app

runner = CliRunner()
TINY = ["--features", "tiny-test", "--kid-subset-size", "2", "--kid-subsets", "5"]


@pytest.fixture(autouse=True)
def _tiny_extractor(tmp_path, monkeypatch):
    register_tiny()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache stays inside the test


def _ok(args):
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 0, res.output
    return res


def _bad(args, *words):
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def ref(tmp_path):
    np.savez(tmp_path / "ref.npz", arr_0=images(8, seed=1))
    return tmp_path / "ref.npz"


@pytest.fixture
def runs(tmp_path):
    d = tmp_path / "runs"
    write_run(d / "full", images(8, seed=2), "250/250", 4.0, 1.0, wall=8.0)
    write_run(d / "mid", images(8, seed=2, shift=10), "130/130", 4.0, 0.6, wall=5.0)
    write_run(d / "low", images(8, seed=2, shift=40), "70/70", 4.0, 0.45, wall=4.0)
    return d


def test_inception_end_to_end(tmp_path, ref, inception, one_blas_thread):
    w = inception
    np.savez(tmp_path / "s.npz", arr_0=images(8, seed=2))
    res = _ok(["--samples", str(tmp_path / "s.npz"), "--ref", str(ref), "--out", str(tmp_path / "o"),
               "--inception-weights", str(w), "--kid-subset-size", "4", "--kid-subsets", "5"])
    df = pd.read_csv(tmp_path / "o" / "pareto.csv")
    assert len(df) == 1 and df["label"][0] == "s" and df["fid"][0] > 0 and df["isc"][0] >= 1
    assert {"precision", "recall", "kid", "kid_std", "clip", "pareto_optimal"} <= set(df.columns)
    assert str(tmp_path / "o" / "pareto.csv") in res.stdout.split()
    cfg = json.loads((tmp_path / "o" / "evaluate.json").read_text())
    assert cfg["features"] == "inception" and cfg["kid_subset_size"] == 4 and len(cfg["ref_sha256"]) == 64
    assert len(cfg["inception_sha256"]) == 64
    assert any(p.name.startswith("flexcli-ref-") for p in (tmp_path / "xdg" / "flexcli" / "fidelity").iterdir())


def test_folder_of_runs_pareto_plots_and_budget_pick(tmp_path, ref, runs):
    out = tmp_path / "eval"
    res = _ok(["CKPT.safetensors", "--samples", str(runs), "--ref", str(ref), "--out", str(out), *TINY,
               "--target-compute", "0.7"])
    df = pd.read_csv(out / "pareto.csv", dtype={"schedule": str})
    assert list(df["label"]) == ["low", "mid", "full"]  # sorted by compute
    assert list(df["compute_fraction"]) == [0.45, 0.6, 1.0] and list(df["cfg_scale"]) == [4.0] * 3
    assert list(df["schedule"]) == ["70/70", "130/130", "250/250"]
    assert df["latency_s"].tolist() == [0.5, 0.625, 1.0] and df["latency_ratio"].tolist() == [0.5, 0.625, 1.0]
    assert df["fid"].notna().all() and df["num_samples"].tolist() == [8, 8, 8]
    best = df[df["compute_fraction"] <= 0.7].sort_values("fid").iloc[0]
    assert res.stdout.strip().splitlines()[-1] == \
        f"flexcli sample CKPT.safetensors --schedule {best['schedule']} --cfg-scale 4"
    assert bool(best["pareto_optimal"])
    for name in ("fid_vs_compute.png", "fid_vs_cfg.png", "evaluate.json"):
        assert (out / name).is_file()
    assert not (out / "fid_vs_clip.png").exists() and "fid_vs_clip.png skipped" in res.stderr


def test_clip_scores_and_fid_vs_clip_plot(tmp_path, ref, tiny_clip):
    name, w = tiny_clip
    d = tmp_path / "runs"
    write_run(d / "a", images(8, seed=2), "250/250", 1.5, 1.0, prompts=[f"a photo of {i}" for i in range(8)])
    write_run(d / "b", images(8, seed=2, shift=20), "250/250", 4.0, 1.0)
    (tmp_path / "prompts.txt").write_text("\n".join(f"a drawing of {i}" for i in range(8)) + "\n")
    out = tmp_path / "o"
    _ok(["--samples", str(d), "--ref", str(ref), "--out", str(out), *TINY, "--clip-weights", str(w),
         "--clip-model", name, "--prompts", str(tmp_path / "prompts.txt")])
    df = pd.read_csv(out / "pareto.csv")
    assert df["clip"].notna().all() and ((df["clip"] >= 0) & (df["clip"] <= 100)).all()
    assert (out / "fid_vs_clip.png").is_file()
    assert json.loads((out / "evaluate.json").read_text())["clip_model"] == name
    _bad(["--samples", str(d), "--ref", str(ref), "--out", str(tmp_path / "o2"), *TINY, "--clip-weights", str(w),
          "--clip-model", name], "no prompts for samples b", "--prompts")
    _bad(["--samples", str(d), "--ref", str(ref), "--out", str(tmp_path / "o2"), *TINY,
          "--clip-weights", str(tmp_path / "nope.pt")], "--clip-weights", "not found")


def test_labels_cost_from_checkpoint_and_match_the_sampler(tmp_path, ref):
    """SCHEDULE@CFG labels + CKPT: compute fractions from exact FLOPs equal what flexcli sample records."""
    ckpt = _pixel_checkpoint(tmp_path)
    from flexcli.evaluate.sampling import library_sample_fn

    fn = library_sample_fn(ckpt, 2, 0, 10, solver="ddim")
    (tmp_path / "r").mkdir()
    run = json.loads((fn("4/4", 3.0, tmp_path / "r" / "a") / "run.json").read_text())
    np.savez(tmp_path / "a.npz", arr_0=images(8, seed=3))
    _ok([str(ckpt), "--samples", f"4/4@3={tmp_path / 'a.npz'}", "--samples", f"10/10@3={tmp_path / 'a.npz'}",
         "--steps", "10", "--ref", str(ref), "--out", str(tmp_path / "o"), *TINY])
    df = pd.read_csv(tmp_path / "o" / "pareto.csv", dtype={"schedule": str}).set_index("schedule")
    assert df.loc["4/4", "compute_fraction"] == pytest.approx(run["flops"]["compute_fraction"], rel=1e-5)
    assert df.loc["10/10", "compute_fraction"] == 1.0
    assert df.loc["4/4", "gflops_per_sample"] == pytest.approx(run["flops"]["total"] / 1e9, rel=1e-5)


def _pixel_checkpoint(tmp_path):
    """A random pixel-space (3-channel) tiny DiT, flexified with weak patch 4: samples are images."""
    from flexcli.api import flexify_checkpoint
    from flexcli.models.configs import named_config
    from flexcli.models.dit import DiT

    torch.manual_seed(0)
    m = DiT(named_config("DiT-Tiny/2", in_channels=3))
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "pix.safetensors"))
    out = tmp_path / "pix-flex.safetensors"
    flexify_checkpoint(tmp_path / "pix.safetensors", [4], out, mode="lora", lora_rank=4)
    return out


def test_sweep_through_the_sample_library(tmp_path, ref):
    ckpt = _pixel_checkpoint(tmp_path)
    out = tmp_path / "sweep"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("solver: ddim\nbatch_size: 4\n")
    res = _ok([str(ckpt), "--schedules", "6/6,2/2", "--cfg-scales", "1.5,3", "--num-samples", "4", "--steps", "6",
               "--sample-recipe", str(recipe), "--ref", str(ref), "--out", str(out), *TINY, "--target-compute", "0.9"])
    df = pd.read_csv(out / "pareto.csv", dtype={"schedule": str})
    assert len(df) == 4 and sorted(df["schedule"].unique()) == ["2/2", "6/6"]
    assert df.groupby("schedule")["compute_fraction"].first().to_dict()["6/6"] == 1.0
    assert (df[df["schedule"] == "2/2"]["compute_fraction"] < 0.7).all()
    assert df["latency_s"].notna().all() and df["latency_ratio"].notna().all()
    runs = sorted((out / "runs").iterdir())
    assert [r.name for r in runs] == ["s2-2_cfg1.5", "s2-2_cfg3", "s6-6_cfg1.5", "s6-6_cfg3"]
    recs = [json.loads((r / "run.json").read_text()) for r in runs]
    assert all(r["seeds"] == [0, 1, 2, 3] and r["labels"] == recs[0]["labels"] for r in recs)  # same seeds
    assert all(r["config"]["solver"] == "ddim" for r in recs)
    assert all(str(out) in s and ".tmp" not in s for s in df["source"])
    assert "--schedule 2/2" in res.stdout.strip().splitlines()[-1] and not (out / "warmup").exists()


def test_sweep_with_the_fewer_steps_baseline(tmp_path, ref):
    """--baseline-steps adds all-powerful runs at fewer steps; 'X of N' runs a schedule at N steps; compute is
    relative to the all-powerful run at --steps; the same runs evaluated again as --samples give the same compute."""
    ckpt = _pixel_checkpoint(tmp_path)
    out = tmp_path / "sweep"
    res = _ok([str(ckpt), "--schedules", "6/6,2/2,2/2 of 4", "--baseline-steps", "4,3", "--cfg-scales", "3",
               "--num-samples", "4", "--steps", "6", "--sample-recipe", str(_ddim(tmp_path)), "--ref", str(ref),
               "--out", str(out), *TINY, "--target-compute", "0.7"])
    df = pd.read_csv(out / "pareto.csv", dtype={"schedule": str}).set_index("label")
    assert set(df.index) == {"6/6@3", "2/2@3", "2/2 of 4@3", "4/4 of 4@3", "3/3 of 3@3"}
    assert df.loc["4/4 of 4@3", "compute_fraction"] == pytest.approx(4 / 6, abs=1e-6)
    assert df.loc["3/3 of 3@3", "compute_fraction"] == pytest.approx(0.5, abs=1e-6)
    assert df.loc["6/6@3", "compute_fraction"] == 1.0 and df.loc["6/6@3", "latency_ratio"] == 1.0
    weak_steps = df.loc["2/2@3", "compute_fraction"] * 6 - 2  # 4 weak steps of 6, in all-powerful step units
    assert df.loc["2/2 of 4@3", "compute_fraction"] == pytest.approx((2 + weak_steps / 2) / 6, abs=1e-5)
    assert df["baseline"].to_dict() == {"6/6@3": True, "2/2@3": False, "2/2 of 4@3": False, "4/4 of 4@3": True,
                                        "3/3 of 3@3": True}
    assert df["steps"].to_dict() == {"6/6@3": 6, "2/2@3": 6, "2/2 of 4@3": 4, "4/4 of 4@3": 4, "3/3 of 3@3": 3}
    assert (out / "runs" / "n4_s4-4_cfg3").is_dir() and (out / "runs" / "n4_s2-2_cfg3").is_dir()
    assert "flex vs fewer steps at or under 70 % compute" in res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(f"flexcli sample {ckpt} --steps ")
    again = tmp_path / "again"
    _ok(["--samples", str(out / "runs"), "--ref", str(ref), "--out", str(again), *TINY])
    df2 = pd.read_csv(again / "pareto.csv").set_index("source")["compute_fraction"]
    df1 = pd.read_csv(out / "pareto.csv").set_index("source")["compute_fraction"]
    assert df2.sort_index().round(6).tolist() == df1.sort_index().round(6).tolist()


def _ddim(tmp_path):
    recipe = tmp_path / "ddim.yaml"
    recipe.write_text("solver: ddim\nbatch_size: 4\n")
    return recipe


# ---------------------------------------------------------------------------------------------------
def test_bad_missing_inception_weights(tmp_path, ref):
    np.savez(tmp_path / "s.npz", arr_0=images(8))
    _bad(["--samples", str(tmp_path / "s.npz"), "--ref", str(ref), "--out", str(tmp_path / "o")],
         "--inception-weights", "weights-inception-2015-12-05-6726825d.pth")
    _bad(["--samples", str(tmp_path / "s.npz"), "--ref", str(ref), "--out", str(tmp_path / "o"),
          "--inception-weights", str(tmp_path / "nope.pth")], "--inception-weights", "not found",
         "weights-inception-2015-12-05-6726825d.pth")
    assert sorted(os.listdir(tmp_path)) == ["ref.npz", "s.npz"]


def test_bad_empty_ref(tmp_path, runs):
    (tmp_path / "empty").mkdir()
    _bad(["--samples", str(runs), "--ref", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *TINY],
         "--ref folder", "holds no .png/.jpg images")
    np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 16, 16, 3), np.uint8))
    _bad(["--samples", str(runs), "--ref", str(tmp_path / "empty.npz"), "--out", str(tmp_path / "o"), *TINY],
         "holds no images")
    assert not (tmp_path / "o").exists()


def test_bad_sample_count_below_kid_subset(tmp_path, ref, runs):
    _bad(["--samples", str(runs), "--ref", str(ref), "--out", str(tmp_path / "o"), "--features", "tiny-test"],
         "below the KID subset size 1000", "--kid-subset-size 8")
    assert not (tmp_path / "o").exists()


def test_bad_mismatched_image_sizes(tmp_path, ref):
    np.savez(tmp_path / "small.npz", arr_0=images(8, size=8))
    _bad(["--samples", str(tmp_path / "small.npz"), "--ref", str(ref), "--out", str(tmp_path / "o"), *TINY],
         "8x8", "16x16", "resize")
    assert not (tmp_path / "o").exists()


def test_bad_existing_out_without_force(tmp_path, ref, runs):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    _bad(["--samples", str(runs), "--ref", str(ref), "--out", str(out), *TINY], "already exists", "--force")
    assert os.listdir(out) == ["keep.txt"]
    _ok(["--samples", str(runs), "--ref", str(ref), "--out", str(out), *TINY, "--force"])
    assert (out / "pareto.csv").is_file() and not (out / "keep.txt").exists()
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_bad_other_input(tmp_path, ref, runs):
    o = ["--ref", str(ref), "--out", str(tmp_path / "o")]
    _bad(o, "nothing to evaluate")
    _bad(["--samples", str(tmp_path / "missing.npz"), *o, *TINY], "not found")
    _bad(["--samples", str(runs), *o, "--features", "nope"], "unknown feature extractor 'nope'")
    _bad(["--samples", str(runs), *o, *TINY, "--target-compute", "-1"], "not a positive fraction")
    _bad(["--samples", str(runs), "--schedules", "250/250", *o, *TINY], "use one mode or the other")
    _bad(["--schedules", "250/250", "--cfg-scales", "4", *o, *TINY], "a sweep needs CKPT")
    _bad(["x.safetensors", "--schedules", "250/250", "--cfg-scales", "4,a", "--num-samples", "2", *o, *TINY],
         "--cfg-scales")
    # a sweep fails before sampling when --num-samples is below the KID subset size
    _bad([str(tmp_path / "x.safetensors"), "--schedules", "250/250", "--cfg-scales", "4", "--num-samples", "2",
          *o, "--features", "tiny-test", "--kid-subset-size", "4"], "below the KID subset size 4")
    assert not (tmp_path / "o").exists()


def test_budget_below_every_point_keeps_the_results(tmp_path, ref, runs):
    """A too-small --target-compute is an error (exit 2) but the measured results are kept."""
    res = runner.invoke(app, ["evaluate", "--samples", str(runs), "--ref", str(ref), "--out", str(tmp_path / "o"),
                              *TINY, "--target-compute", "0.3"])
    assert res.exit_code == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no measured point at or under compute 0.3") and "results written to" in last
    assert "--target-compute" in last and (tmp_path / "o" / "pareto.csv").is_file()


def test_sweep_cells_are_checked_before_any_sampling(tmp_path, ref):
    """A sweep cell that repeats a grid setting, lacks its scale, or names a bad sample option fails before the
    first sample, with nothing written."""
    from flexcli.errors import FlexcliError
    from flexcli.evaluate.core import sweep
    from flexcli.evaluate.sampling import library_sample_fn
    from flexcli.metrics.fid import MetricOptions

    ckpt = _pixel_checkpoint(tmp_path)
    calls = []
    fn = library_sample_fn(ckpt, 4, steps=6, batch_size=4)
    sample_fn = lambda *a, **k: calls.append(a)  # noqa: E731
    sample_fn.check = fn.check
    opts = MetricOptions(features="tiny-test", kid_subset_size=2, kid_subsets=5, cache_dir=tmp_path / "cache")
    for cells, problem in (([{"schedule": "6/6", "cfg_scale": 3.0}], "runs 6/6@3 twice"),
                           ([{"schedule": "2/2"}], "needs a schedule and a cfg_scale"),
                           ([{"schedule": "2/2", "cfg_scale": 3.0, "solver": "euler"}], "unknown solver 'euler'"),
                           ([{"schedule": "8/8 of 4", "cfg_scale": 3.0}], "more than the 4 steps")):
        with pytest.raises(FlexcliError, match=problem):
            sweep(sample_fn, ["6/6"], [3.0], ref, tmp_path / "out", opts, steps=6, cells=cells)
    assert calls == [] and not (tmp_path / "out").exists()
