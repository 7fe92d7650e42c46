"""Pareto front (ties, dominated points, missing values), the budget pick, and plots drawn from the CSV alone."""
import math

import pandas as pd
import pytest

from flexcli.errors import FlexcliError
from flexcli.evaluate.pareto import COLUMNS, pareto_mask, pick_budget, read_pareto_csv, sample_flags, write_pareto_csv
from flexcli.evaluate.plots import plot_pareto_csv


def test_dominated_points_leave_the_front():
    compute = [1.0, 0.8, 0.6, 0.7, 0.9]
    fid = [2.0, 2.1, 3.0, 3.5, 2.5]
    # (0.7, 3.5) is dominated by (0.6, 3.0); (0.9, 2.5) by (0.8, 2.1)
    assert pareto_mask(compute, fid) == [True, True, True, False, False]


def test_ties():
    # exact duplicates: neither strictly dominates the other, both stay on the front
    assert pareto_mask([0.5, 0.5], [3.0, 3.0]) == [True, True]
    # same compute, different FID: only the lower FID
    assert pareto_mask([0.5, 0.5], [3.0, 2.0]) == [False, True]
    # same FID, different compute: only the cheaper
    assert pareto_mask([0.5, 0.7], [3.0, 3.0]) == [True, False]
    # a duplicate pair that is dominated by a third point leaves together
    assert pareto_mask([0.5, 0.5, 0.4], [3.0, 3.0, 2.0]) == [False, False, True]


def test_missing_values_are_never_on_the_front_and_dominate_nothing():
    assert pareto_mask([None, 0.5, float("nan"), 0.9], [1.0, 3.0, 0.1, math.nan]) == [False, True, False, False]
    assert pareto_mask([], []) == []
    assert pareto_mask([0.3], [9.0]) == [True]


def _rows():
    return [
        {"label": "a", "schedule": "250/250", "cfg_scale": 1.5, "compute_fraction": 1.0, "fid": 2.3},
        {"label": "b", "schedule": "250/250", "cfg_scale": 4.0, "compute_fraction": 1.0, "fid": 2.2},
        {"label": "c", "schedule": "130/130", "cfg_scale": 4.0, "compute_fraction": 0.6, "fid": 2.4},
        {"label": "d", "schedule": "130/130", "cfg_scale": 1.5, "compute_fraction": 0.6, "fid": 2.9},
        {"label": "e", "schedule": "70/70", "cfg_scale": 4.0, "compute_fraction": 0.45, "fid": 3.1},
        {"label": "f", "schedule": "70/70", "cfg_scale": 3.0, "compute_fraction": 0.45, "fid": 3.1},
    ]


def test_budget_pick():
    rows = _rows()
    assert pick_budget(rows, 1.0)["label"] == "b"
    assert pick_budget(rows, 0.6)["label"] == "c"  # at the budget counts; d is dominated by c
    assert pick_budget(rows, 0.6 + 1e-12)["label"] == "c"
    assert pick_budget(rows, 0.59)["label"] == "e"  # tie with f (same compute and FID): first in order
    assert pick_budget(rows, 0.99)["label"] == "c"
    with pytest.raises(FlexcliError, match="no measured point at or under compute 0.4.*0.450"):
        pick_budget(rows, 0.4)
    with pytest.raises(FlexcliError, match="not a positive fraction"):
        pick_budget(rows, 0)
    with pytest.raises(FlexcliError, match="no row has both"):
        pick_budget([{"label": "x", "fid": 3.0}], 0.5)
    assert sample_flags(pick_budget(rows, 0.6)) == "--schedule 130/130 --cfg-scale 4"
    assert sample_flags({"schedule": "4:150,2:100", "cfg_scale": 1.5}) == "--schedule 4:150,2:100 --cfg-scale 1.5"


def test_csv_round_trip_and_flags(tmp_path):
    csv = tmp_path / "pareto.csv"
    write_pareto_csv(_rows(), csv)
    df = pd.read_csv(csv)
    assert list(df.columns) == COLUMNS
    assert list(df["compute_fraction"]) == sorted(df["compute_fraction"])
    front = set(df[df["pareto_optimal"]]["label"])
    assert front == {"b", "c", "e", "f"}
    rows = read_pareto_csv(csv)
    assert {r["label"]: r["schedule"] for r in rows}["c"] == "130/130" and rows[0]["clip"] is None


def test_plots_from_csv_only(tmp_path):
    csv = tmp_path / "pareto.csv"
    rows = _rows()
    write_pareto_csv(rows, csv)
    files, notes = plot_pareto_csv(csv, tmp_path)
    assert [f.name for f in files] == ["fid_vs_compute.png", "fid_vs_cfg.png"]
    assert len(notes) == 1 and "fid_vs_clip.png skipped" in notes[0]
    for i, r in enumerate(rows):
        r["clip"] = 24 + r["cfg_scale"] - i * 0.1
    write_pareto_csv(rows, csv)
    (tmp_path / "clip").mkdir()
    files, notes = plot_pareto_csv(csv, tmp_path / "clip")
    assert [f.name for f in files] == ["fid_vs_compute.png", "fid_vs_cfg.png", "fid_vs_clip.png"] and not notes
    assert all(f.stat().st_size > 10_000 for f in files)
    empty = tmp_path / "empty.csv"
    write_pareto_csv([{"label": "x", "fid": 1.0}], empty)
    assert plot_pareto_csv(empty, tmp_path) == ([], ["no plots: no row has both a compute fraction and an FID"])


# ---------------------------------------------------------------------------------------------------
def _with_baseline():
    """Base 50 steps: flex schedules at 50, the fewer-steps baseline at 50/40/30/20 (compute = steps / 50)."""
    flex = [("23/23", 0.593, 2.5, 130.1, 0.76), ("23/23", 0.593, 4.0, 133.0, 0.78), ("30/15", 0.585, 4.0, 96.6, 0.725),
            ("40/40", 0.849, 2.5, 118.0, 0.77)]
    rows = [{"label": f"{s}@{c:g}", "steps": 50, "schedule": s, "guidance": "weak" if s == "30/15" else "cfg",
             "cfg_scale": c, "compute_fraction": f, "fid": fid, "class_accuracy": a, "baseline": False}
            for s, f, c, fid, a in flex]
    for n, fid, acc in ((50, 113.9, 0.77), (40, 120.0, 0.775), (30, 129.6, 0.78), (20, 144.6, 0.76)):
        for c, dfid in ((2.5, 0.0), (4.0, 3.0)):
            rows.append({"label": f"{n}/{n} of {n}@{c:g}", "steps": n, "schedule": f"{n}/{n}", "guidance": "cfg",
                         "cfg_scale": c, "compute_fraction": n / 50, "fid": fid + dfid, "class_accuracy": acc,
                         "baseline": True})
    return rows


def test_baseline_front_and_the_flex_vs_fewer_steps_comparison(tmp_path):
    from flexcli.evaluate.pareto import compare_at, describe
    from flexcli.evaluate.report import comparison_lines, table_lines

    rows = _with_baseline()
    write_pareto_csv(rows, tmp_path / "pareto.csv")
    df = pd.read_csv(tmp_path / "pareto.csv", dtype={"schedule": str})
    front = df[df["baseline_front"]]
    # the baseline front: the best guidance scale of each step count, never a flex row
    assert sorted(front["steps"]) == [20, 30, 40, 50] and (front["cfg_scale"] == 2.5).all() and front["baseline"].all()
    # the overall front crosses both: 30/15 (weak guidance) beats every setting with more compute
    assert set(df[df["pareto_optimal"]]["label"]) == {"30/15@4", "20/20 of 20@2.5"}
    pick = compare_at(read_pareto_csv(tmp_path / "pareto.csv"), 0.6)
    assert pick["flex"]["label"] == "30/15@4" and pick["fewer_steps"]["label"] == "30/30 of 30@2.5"
    assert describe(pick["fewer_steps"]) == "30 steps all powerful, cfg 2.5"
    assert describe(pick["flex"]) == "schedule 30/15 of 50 steps, weak guidance, cfg 4"
    text = "\n".join(comparison_lines(rows, 0.6))
    assert "FID -25.5 % (better)" in text and "class accuracy -5.5 points (worse)" in text
    table = table_lines(rows)
    assert len(table) == 2 + len(rows) and "fewer steps: 30 steps all powerful, cfg 2.5" in "\n".join(table)
    assert pick_budget(rows, 0.6)["label"] == "30/15@4"  # across steps x schedules x guidance
    assert compare_at(rows, 0.3) == {"flex": None, "fewer_steps": None}


def test_sample_flags_name_the_steps_and_guidance():
    assert sample_flags({"steps": 30, "schedule": "30/30", "cfg_scale": 2.5}) == \
        "--steps 30 --schedule 30/30 --cfg-scale 2.5"
    assert sample_flags({"steps": 50, "schedule": "30/15", "cfg_scale": 4.0, "guidance": "cfg"}) == \
        "--steps 50 --schedule 30/15 --cfg-scale 4 --guidance cfg"  # flexcli sample guides weakly by default
    assert sample_flags({"steps": 50, "schedule": "30/15", "cfg_scale": 4.0, "guidance": "weak"}) == \
        "--steps 50 --schedule 30/15 --cfg-scale 4"


def test_rows_name_their_solver_and_all_weak_scale(tmp_path):
    """A row that records its solver and s_cfg0 says so in its description and its `flexcli sample` flags, and
    keeps them through pareto.csv."""
    from flexcli.evaluate.pareto import describe

    weak = {"label": "a", "steps": 50, "solver": "ddpm", "schedule": "30/15", "guidance": "weak", "cfg_scale": 5.0,
            "cfg_scale_all_weak": 8.0, "compute_fraction": 0.585, "fid": 1.0}
    few = {"label": "b", "steps": 30, "solver": "dpm++2m", "schedule": "30/30", "guidance": "cfg", "cfg_scale": 2.5,
           "compute_fraction": 0.6, "fid": 2.0, "baseline": True}
    write_pareto_csv([weak, few], tmp_path / "pareto.csv")
    back = {r["label"]: r for r in read_pareto_csv(tmp_path / "pareto.csv")}
    assert describe(back["a"]) == "schedule 30/15 of 50 steps, ddpm, weak guidance, cfg 5, all-weak cfg 8"
    assert describe(back["b"]) == "30 steps all powerful, dpm++2m, cfg 2.5"
    assert sample_flags(back["a"]) == "--steps 50 --solver ddpm --schedule 30/15 --cfg-scale 5 --cfg-scale-all-weak 8"
    assert sample_flags(back["b"]) == "--steps 30 --solver dpm++2m --schedule 30/30 --cfg-scale 2.5"


def test_baseline_plots_from_csv(tmp_path):
    rows = _with_baseline()
    write_pareto_csv(rows, tmp_path / "pareto.csv")
    files, notes = plot_pareto_csv(tmp_path / "pareto.csv", tmp_path)
    assert [f.name for f in files] == ["fid_vs_compute.png", "accuracy_vs_compute.png", "fid_vs_cfg.png"]
    assert all(f.stat().st_size > 10_000 for f in files)


def test_demo_spread_table_over_seeds(tmp_path, capsys):
    """benchmarks/demo_spread.py: the README's expected demo numbers, mean ± sd over demo runs of several seeds."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_spread.py"
    spec = importlib.util.spec_from_file_location("demo_spread", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for seed, shift in ((0, 0.0), (1, 2.0)):
        (tmp_path / f"d{seed}").mkdir()
        rows = [{**r, "fid": r["fid"] + shift} for r in _with_baseline()]
        write_pareto_csv(rows, tmp_path / f"d{seed}" / "pareto.csv")
    (tmp_path / "d0" / "config.yaml").write_text("compare_compute: 0.6\n")
    mod.main([str(tmp_path / "d0"), str(tmp_path / "d1")])
    out = capsys.readouterr().out
    assert "| fewer steps: 30 steps all powerful, cfg 2.5 | 60.0 | 130.6 ± 1.4 | 0.780 ± 0.000 | 2 |" in out
    assert "- flex: schedule 30/15 of 50 steps, weak guidance, cfg 4: FID 97.6 ± 1.4" in out
