"""Outputs pinned from the code before the flex-core refactor (issue #11), and how to reproduce them.

Everything here goes through interfaces that the refactor keeps: the CLI (`flexify`, `sample`, `info`),
safetensors files and tensor names. Weights are drawn per tensor NAME (a generator seeded from the name), so
they do not depend on the order in which any code creates or initialises modules.

`python tests/pinned.py` rewrites tests/pins/ from the code as it is now: run it only to record an intended
change of behaviour, and say so in the changelog.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

PINS = Path(__file__).resolve().parent / "pins"
FMNIST_BASE = Path(__file__).resolve().parents[1] / "flexcli" / "assets" / "fashion_mnist_dit" / "model.safetensors"
COMMON = ["-n", "2", "--steps", "4", "--class-labels", "3,8", "--seed", "11"]

# name -> (checkpoint, extra `flexcli sample` flags)
CASES = {
    "s2_lora_cfg_separate": ("s2_lora", ["--schedule", "2/2", "--guidance", "cfg"]),
    "s2_lora_merged": ("s2_lora", ["--schedule", "2/2", "--guidance", "cfg", "--merge-lora"]),
    "s2_lora_weak_separate": ("s2_lora", ["--schedule", "3/1", "--guidance", "weak"]),
    "s2_lora_weak_packed": ("s2_lora", ["--schedule", "3/1", "--guidance", "weak", "--packing", "packed"]),
    "s2_lora_cfg_packed": ("s2_lora", ["--schedule", "3/1", "--guidance", "cfg", "--packing", "packed"]),
    "s2_lora_merged_weak_packed": ("s2_lora", ["--schedule", "3/1", "--merge-lora", "--packing", "packed"]),
    "s2_lora_ddim_weak": ("s2_lora", ["--schedule", "3/1", "--solver", "ddim"]),
    "s2_lora_dpm_cfg": ("s2_lora", ["--schedule", "2/2", "--solver", "dpm++2m", "--guidance", "cfg"]),
    "s2_shared_cfg_separate": ("s2_shared", ["--schedule", "2/2", "--guidance", "cfg"]),
    "s2_shared_weak_packed": ("s2_shared", ["--schedule", "3/1", "--packing", "packed"]),
    "s2_shared_weak_separate": ("s2_shared", ["--schedule", "3/1"]),
    "s2_base_powerful": ("s2_base", ["--schedule", "4/4"]),
    "fmnist_lora_cfg": ("fmnist_lora", ["--schedule", "3/3", "--guidance", "cfg", "--steps", "6"]),
    "fmnist_lora_weak_merged": ("fmnist_lora", ["--schedule", "4/2", "--merge-lora", "--steps", "6"]),
    "fmnist_lora_weak_packed": ("fmnist_lora", ["--schedule", "4/2", "--packing", "packed", "--steps", "6"]),
}


def named_randn(name: str, shape, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return scale * torch.randn(tuple(shape), generator=g)


def _read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def _invoke(args: list[str]) -> str:
    from flexcli.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.stdout


def s2_base(path: Path) -> Path:
    """DiT-S/2 (depth 12, width 384, 6 heads) on a 16x16x4 latent, every weight but pos_embed name-seeded."""
    from flexcli.models.configs import named_config
    from flexcli.models.dit import DiT

    torch.manual_seed(0)
    model = DiT(named_config("DiT-S/2", input_size=16, num_classes=10))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k in sd:
        if k != "pos_embed":
            sd[k] = named_randn(k, sd[k].shape, 0.02)
    save_file(sd, str(path))
    return path


def perturb_flex(path: Path) -> None:
    """Give every tensor flexify added a name-seeded value (LoRA A and B, tokenizers, size embeddings, norms)."""
    sd, meta = _read(path)
    for k, v in sd.items():
        if ".lora_A." in k or ".lora_B." in k:
            sd[k] = named_randn(k, v.shape, 0.05)
        elif k.startswith("flex.") or ".weight.p" in k or ".bias.p" in k:
            sd[k] = v + named_randn(k, v.shape, 0.02)
    save_file(sd, str(path), metadata=meta)


def checkpoints(folder: Path) -> dict[str, Path]:
    base = s2_base(folder / "s2_base.safetensors")
    out = {"s2_base": base}
    for name, flags in (("s2_lora", ["-p", "4", "--lora-rank", "8"]), ("s2_shared", ["-p", "4", "--mode", "shared"]),
                        ("fmnist_lora", ["-p", "8", "--lora-rank", "8"])):
        src = FMNIST_BASE if name.startswith("fmnist") else base
        out[name] = folder / f"{name}.safetensors"
        _invoke(["flexify", str(src), *flags, "-o", str(out[name])])
        perturb_flex(out[name])
    return out


def sample_case(name: str, ckpts: dict[str, Path], folder: Path) -> dict:
    """Run one case through `flexcli sample`; returns its arrays and its run.json FLOPs."""
    ckpt, flags = CASES[name]
    out = folder / name
    args = ["sample", str(ckpts[ckpt]), "--out", str(out), *COMMON, *flags]
    _invoke(args)
    run = json.loads((out / "run.json").read_text())
    arrays = {}
    for fname in ("latents.npz", "samples.npz"):
        if (out / fname).exists():
            with np.load(out / fname) as z:
                arrays[fname] = z["arr_0"]
    flops = {"total": run["flops"]["total"], "baseline": run["flops"]["baseline_all_powerful"],
             "packing": run["flops"]["packing_options_total"], "steps": [s["macs"] for s in run["steps"]]}
    return {"arrays": arrays, "flops": flops}


def info_costs(ckpts: dict[str, Path]) -> dict:
    out = {}
    for name in ("s2_lora", "s2_shared", "fmnist_lora"):
        rows = json.loads(_invoke(["info", str(ckpts[name]), "--json"]))["cost"]
        out[name] = [{k: r[k] for k in ("patch_size", "tokens", "macs") + (("gmacs_merged",) if "gmacs_merged" in r else ())}
                     for r in rows]
    return out


def write_pins(folder: Path) -> None:
    PINS.mkdir(exist_ok=True)
    ckpts = checkpoints(folder)
    flops = {}
    for name in CASES:
        res = sample_case(name, ckpts, folder)
        np.savez(PINS / f"{name}.npz", **{k.replace(".npz", ""): v for k, v in res["arrays"].items()})
        flops[name] = res["flops"]
    (PINS / "flops.json").write_text(json.dumps({"sample": flops, "info": info_costs(ckpts)}, indent=1) + "\n")


if __name__ == "__main__":
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        write_pins(Path(d))
    print(f"wrote {PINS}")
