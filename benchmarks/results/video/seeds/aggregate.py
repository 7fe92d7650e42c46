"""The #15 demo over three seeds: mean and sample std of each setting's scores (the default run is seed 0, the
recipes seed1.yaml and seed2.yaml the others), and per seed the settings that match that seed's baseline (the
demo's own rule, `flexcli.builtin.demo_video.matches_baseline`). Writes seeds.csv.

    python benchmarks/results/video/seeds/aggregate.py
"""
from pathlib import Path

import pandas as pd

from flexcli.builtin.demo_video import baseline_row, matches_baseline, settings

HERE = Path(__file__).resolve().parent
RUNS = {0: HERE.parent / "demo" / "pareto.csv", 1: HERE / "seed1" / "pareto.csv", 2: HERE / "seed2" / "pareto.csv"}

rows = pd.concat([pd.read_csv(path).assign(seed=seed) for seed, path in RUNS.items()])
rows["accuracy"] = 100 * rows["class_accuracy"]
table = rows.groupby("label").agg(compute=("compute_fraction", "first"), fid=("fid", "mean"), fid_std=("fid", "std"),
                                  accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                                  temporal_gap=("temporal_gap", "mean"), speed=("speed", "mean"))
matched = {}
for seed, path in RUNS.items():
    job = settings(recipe=path.parent / "config.yaml")  # that run's resolved settings (steps, tolerances)
    at = rows[rows["seed"] == seed].to_dict("records")
    base = baseline_row(at, job)
    for row in at:
        matched[row["label"]] = matched.get(row["label"], 0) + matches_baseline(row, base, job)
table["seeds_matching"] = [matched.get(label, 0) for label in table.index]
table = table.sort_values(["compute", "fid"], ascending=[False, True]).round(3)
table.to_csv(HERE / "seeds.csv")
print(table.to_string())
