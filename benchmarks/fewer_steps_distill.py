"""Issue #16: distil the built-in default's weak mode (patch 8) with the demo's settings and with variants.

The demo's checkpoint (`flexcli demo`): `flexcli.builtin.demo.distill_config(1000 steps, batch 64, lr 1e-3,
data_limit 4096, seed 0)` on the shipped base flexified with `-p 8`. Variants change only the keys given:

    python benchmarks/fewer_steps_distill.py --out DIR                                  # the demo's settings
    python benchmarks/fewer_steps_distill.py --out DIR --steps 4000                     # 4x longer
    python benchmarks/fewer_steps_distill.py --out DIR --timesteps high --t-bias-power 1.5   # biased to large t
    python benchmarks/fewer_steps_distill.py --out DIR --family t2i        # `flexcli demo --family t2i`'s (#13)

Writes DIR/flex.safetensors (flexified, undistilled), DIR/distill/ (the run folder with distilled.safetensors,
loss.csv) and DIR/distill.json (the resolved config, final loss, losses every 50 steps).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data-limit", type=int, default=4096, help="the demo's 4096; 0 = all 60000 train images")
    ap.add_argument("--timesteps", default="uniform", choices=["uniform", "low", "high"])
    ap.add_argument("--t-bias-power", type=float, default=2.0)
    ap.add_argument("--family", default="dit", choices=["dit", "t2i"],
                    help="dit: the shipped DiT-FMNIST/4 on Fashion-MNIST; t2i: PixArt-FMNIST/4 on its captions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="also keep distill/distilled_step{N}.safetensors every N steps (the run is the same: the "
                         "lr is constant and the data order, EMA warm-up and draws do not depend on --steps)")
    a = ap.parse_args(argv)

    import dataclasses

    import torch

    from flexcli.api import flexify_checkpoint
    from flexcli.builtin import demo, demo_t2i
    from flexcli.train import distill

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    base, data = (demo.BASE, "fashion-mnist") if a.family == "dit" else (demo_t2i.BASE, demo_t2i.DATA)
    flex, _, _ = flexify_checkpoint(base, [8], a.out / "flex.safetensors", force=True)
    cfg = demo.distill_config(a.steps, a.batch, a.lr, data_limit=a.data_limit or None, seed=a.seed,
                              where="fewer_steps", data=data)
    cfg = dataclasses.replace(cfg, timesteps=a.timesteps, t_bias_power=a.t_bias_power,
                              ckpt_every=a.snapshot_every or cfg.ckpt_every)
    t0 = time.perf_counter()

    last = {"step": 0}

    def on_step(event, data):
        if event == "step":
            last["step"] = data.step
            if data.step % 50 == 0 or data.step == data.steps:
                print(f"[{time.perf_counter() - t0:7.1f} s] step {data.step}/{data.steps} loss {data.loss:.5f}",
                      file=sys.stderr, flush=True)
        elif event == "checkpoint" and a.snapshot_every:
            shutil.copy(a.out / "distill" / "distilled.safetensors",
                        a.out / "distill" / f"distilled_step{last['step']}.safetensors")
    res = distill(flex, a.out / "distill", config=cfg, callback=on_step)
    info = {"command": " ".join(sys.argv), "config": cfg.to_dict(), "final_loss": res.final_loss,
            "losses_every_50": res.losses[::50], "checkpoint": str(res.checkpoint)}
    (a.out / "distill.json").write_text(json.dumps(info, indent=2) + "\n")
    print(res.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
