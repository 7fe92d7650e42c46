"""Operators dispatched per denoiser call, by patch size and LoRA state: why a weak step can take longer than a
powerful one on a GPU in eager mode (README, "Measured on an H200").

A small eager step on a GPU is bound by launches, not arithmetic: each ATen operator that computes is at least
one kernel. This counts the operators of one forward pass (`--batch` samples) under torch's dispatch mode, for
the powerful size, and for the weak size with the LoRAs unmerged (peft) and merged (one weight copy per size),
on random weights flexified in memory in LoRA mode. Views (no kernel) are counted apart. The counts do not depend
on the machine or the batch.

    python benchmarks/op_count.py --model DiT-XL/2 --image-size 256 --out benchmarks/results/op_count.csv
"""
from __future__ import annotations

import argparse
import copy
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _common import provenance, random_dit, write_csv


class OperatorCount(TorchDispatchMode):
    """Every ATen operator dispatched inside the `with` block, by overload."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func] += 1
        return func(*args, **(kwargs or {}))


def count(model, patch: int, batch: int) -> dict:
    """Operators of one forward pass at `patch`: {"ops", "views", "top"} (top: the five most frequent computing ops)."""
    side, channels = model.config.input_size, model.config.in_channels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, model.config.num_classes, (batch,), generator=g)
    with torch.no_grad(), OperatorCount() as c:
        model(x, t, y, patch_size=patch)
    views = sum(n for f, n in c.ops.items() if f.is_view)
    computing = Counter({f: n for f, n in c.ops.items() if not f.is_view})
    top = "; ".join(f"{f.overloadpacket.__name__} {n}" for f, n in computing.most_common(5))
    return {"ops": sum(computing.values()), "views": views, "top": top}


def main(argv=None) -> Path:
    from flexcli.flex.core import flexify_model
    from flexcli.flex.layers import merge_loras

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="DiT-XL/2")
    ap.add_argument("--image-size", type=int, default=256, help="pixels; the latent is an eighth of it")
    ap.add_argument("--weak-patch", type=int, default=None, help="default: twice the model's patch")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/op_count.csv"))
    args = ap.parse_args(argv)

    model = random_dit(args.model, args.image_size // 8)
    p0 = model.config.patch_size
    weak = args.weak_patch or 2 * p0
    flexify_model(model, [weak], "lora", lora_rank=args.lora_rank)
    merged = copy.deepcopy(model)
    merge_loras(merged)
    rows = []
    for lora, m in (("unmerged", model), ("merged", merged)):
        for p in (p0, weak):
            side = model.config.input_size
            rows.append({"model": args.model, "image_size": args.image_size, "lora": lora, "lora_rank": args.lora_rank,
                         "patch_size": p, "tokens": (side // p) ** 2, "batch": args.batch,
                         **count(m, p, args.batch), **provenance()})
    return write_csv(rows, args.out)


if __name__ == "__main__":
    print(main())
