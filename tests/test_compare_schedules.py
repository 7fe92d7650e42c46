"""benchmarks/compare_schedules.py's comparison: FLOPs must match exactly, quality within the stated tolerance."""
import csv
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("compare_schedules", ROOT / "benchmarks" / "compare_schedules.py")
cs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cs)


def _row(schedule="6/6", cfg=4.0, flops=213483520, fid=0.05, mse=0.1):
    return {"scenario": "quick", "schedule": schedule, "cfg_scale": cfg, "steps": 10, "num_samples": 8,
            "flops_per_sample": flops, "baseline_flops_per_sample": 302612480, "compute_fraction": 0.7,
            "fid": fid, "mse_vs_full": mse, "latency_s": 0.1, "latency_ratio": 0.7, "device": "cpu", "torch": "x",
            "git_sha": "x"}


def test_compare(tmp_path):
    base = tmp_path / "b.csv"
    cs.write_csv([_row(), _row("10/10", flops=302612480, mse=0.0)], base)
    assert cs.compare([_row(), _row("10/10", flops=302612480, mse=0.0)], base) == []
    assert cs.compare([_row(fid=0.05 * 1.04), _row("10/10", flops=302612480, mse=0.0)], base) == []  # within 5 %
    p = cs.compare([_row(flops=213483521), _row("10/10", flops=302612480, mse=0.0)], base)
    assert len(p) == 1 and "flops_per_sample 213483521 != baseline 213483520" in p[0]
    p = cs.compare([_row(fid=0.06), _row("10/10", flops=302612480, mse=float("nan"))], base)
    assert len(p) == 2 and "fid 0.06 vs baseline 0.05" in p[0] and "mse_vs_full nan" in p[1]
    assert cs.compare([_row()], base) == ["schedule 10/10 cfg 4: missing from this run"]


def test_checked_in_baseline_covers_the_ci_scenario():
    with open(cs.BASELINE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["scenario"] == "quick"]
    sc = cs.SCENARIOS["quick"]
    assert {(r["schedule"], float(r["cfg_scale"])) for r in rows} == \
        {(s, c) for s in sc["schedules"] for c in sc["cfg_scales"]}
    assert all(int(r["flops_per_sample"]) <= int(r["baseline_flops_per_sample"]) for r in rows)
    assert "benchmarks/compare_schedules.py --quick" in (ROOT / ".ci" / "run").read_text()
