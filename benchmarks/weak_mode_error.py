"""How well each mode predicts the noise, per timestep: powerful, weak after PI-resize only, and distilled weak.

Real Fashion-MNIST test images are noised to x_t with DiT's linear schedule (the same noise for every mode), and
each mode's epsilon prediction is compared with the true noise (mean square over pixels and images). The
undistilled weak mode sees 2x2-averaged pixels and emits smooth (bilinearly de-embedded) 8x8 patches, so it cannot
reproduce the 3/4 of white noise's energy above that resolution: expect about 0.75 at every t.

Also per t (issue 16): the distilled weak mode's mean square difference from the powerful prediction (what
distillation minimises, and the direction weak guidance amplifies), the class direction eps(c) - eps(null) of the
powerful and of the distilled weak mode (its mean square, and the mean cosine between the two: what CFG amplifies in
all-weak steps), and x0_per_eps = (1 - abar) / abar, the factor from an eps mean square error to an x0 one.

    python benchmarks/weak_mode_error.py FLEX.safetensors DISTILLED.safetensors --out OUT.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from _common import provenance, write_csv
from flexcli.api import load_model
from flexcli.builtin.fashion_mnist import fashion_mnist, model_pixels
from flexcli.diffusion.process import GaussianDiffusion


@torch.no_grad()
def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("flexified", type=Path, help="flexified, not distilled (LoRAs still zero)")
    ap.add_argument("distilled", type=Path)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--timesteps", default="999,900,700,500,200,50")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    flex, dist = load_model(a.flexified), load_model(a.distilled)
    p0, weak = flex.patch_sizes[0], min(flex.patch_sizes[1:])
    images, labels = fashion_mnist("test")
    x0 = model_pixels(images[:a.images], flex.config.input_size)
    y = labels[:a.images].long()
    alphas_bar = GaussianDiffusion().alphas_cumprod  # DiT's linear schedule, 1000 steps
    gen = torch.Generator().manual_seed(0)
    rows = []
    for t in (int(s) for s in a.timesteps.split(",")):
        noise = torch.randn(x0.shape, generator=gen)
        ab = float(alphas_bar[t])
        xt = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise
        tt = torch.full((len(x0),), t)
        row = {"t": t}
        pred = {}
        for name, model, p in (("powerful", flex, p0), ("pi_weak", flex, weak), ("distilled_weak", dist, weak)):
            eps = model(xt, tt, y, patch_size=p)[:, :x0.shape[1]]
            pred[name] = eps
            row[f"{name}_eps_mse"] = round(float(((eps - noise) ** 2).mean()), 5)
        # weak vs powerful (the distillation error; also weak guidance's direction, §3.4) and the class direction
        # eps(c) - eps(null) of each mode (what CFG amplifies): its size, and how well the weak one points the same way
        c = x0.shape[1]
        row["distilled_vs_powerful_eps_mse"] = round(float(((pred["distilled_weak"] - pred["powerful"]) ** 2).mean()), 6)
        null = torch.full_like(y, flex.config.num_classes)
        d_pow = (pred["powerful"] - flex(xt, tt, null, patch_size=p0)[:, :c]).flatten(1)
        d_weak = (pred["distilled_weak"] - dist(xt, tt, null, patch_size=weak)[:, :c]).flatten(1)
        row["powerful_class_dir_ms"] = round(float((d_pow ** 2).mean()), 6)
        row["distilled_weak_class_dir_ms"] = round(float((d_weak ** 2).mean()), 6)
        row["class_dir_cosine"] = round(float(torch.nn.functional.cosine_similarity(d_pow, d_weak, dim=1).mean()), 4)
        row["x0_per_eps"] = round((1 - ab) / ab, 4)  # an eps error of e is an x0 error of e * (1 - ab) / ab
        rows.append(row)
        print(row, file=sys.stderr)
    prov = provenance()
    write_csv([{**r, "flexified": a.flexified.name, "distilled": str(a.distilled), "images": a.images, **prov}
               for r in rows], a.out)
    print(a.out)
    return a.out


if __name__ == "__main__":
    main()
