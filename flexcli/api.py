"""The importable Python API: load, flexify, describe and save checkpoints of any family (`flexcli.families`)."""
from __future__ import annotations

from pathlib import Path

from flexcli.compute import model_cost
from flexcli.errors import FlexcliError
from flexcli.families import family, read_checkpoint
from flexcli.flex.core import MODES, FlexModel, flexify_model
from flexcli.flex.layers import SizeLayerNorm
from flexcli.flex.resize import patch_key
from flexcli.io.checkpoint import Checkpoint, file_sha256, save_checkpoint
from flexcli.version import __version__

NAMES = {"dit": "DiT", "pixart": "PixArt", "wan": "Wan"}  # for messages


def _load(model, ckpt: Checkpoint, keys: set[str] | None = None) -> None:
    """Load the checkpoint's tensors (those among `keys`, checkpoint names) into `model`, strictly."""
    expected = {k.replace(".base_layer.", "."): k for k in model.state_dict()}
    given = set(ckpt.state_dict) if keys is None else set(ckpt.state_dict) & keys
    missing = sorted(set(expected) - given)
    unexpected = sorted(given - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise FlexcliError(f"{ckpt.path} does not match the inferred {NAMES.get(ckpt.family, ckpt.family)} config "
                           f"({what})", f"the checkpoint may be damaged or not a {NAMES.get(ckpt.family, ckpt.family)}")
    try:
        model.load_state_dict({expected[k]: ckpt.state_dict[k] for k in given}, strict=True)
    except RuntimeError as e:
        line = [s.strip() for s in str(e).splitlines() if "size mismatch" in s][:1] or [str(e).splitlines()[0]]
        name = NAMES.get(ckpt.family, ckpt.family)
        raise FlexcliError(f"{ckpt.path} does not fit the inferred {name} config ({line[0]})",
                           f"the checkpoint may be damaged or not a {name}") from e


def build_model(ckpt: Checkpoint):
    """The model a checkpoint describes: the pretrained tensors are loaded first, then a flexified checkpoint's
    weak sizes are added from them (positions follow the loaded table) and its added tensors loaded."""
    model = family(ckpt.family).model(ckpt.config)
    _load(model, ckpt, set(model.state_dict()) if ckpt.flex else None)
    if ckpt.flex:
        f = ckpt.flex
        lora = f.get("lora") or {}
        targets = tuple(lora["targets"]) if lora.get("targets") else None
        flexify_model(model, [p for p in f["patch_sizes"] if p != f["base_patch_size"]], f["mode"],
                      lora.get("rank", 32), lora.get("alpha"), lora_targets=targets)
        _load(model, ckpt)
    return model.eval()


def load_model(path: str | Path, *, use_ema: bool = True, merge_lora: bool = False) -> FlexModel:
    """Load any supported checkpoint as an `nn.Module` with `forward(x, t, y, patch_size=None)`.

    `patch_size=None` is the pretrained size; `model.patch_sizes` lists every supported one.
    `merge_lora=True` merges each weak size's LoRA into its own weight copy (no LoRA FLOPs).
    """
    model = build_model(read_checkpoint(path, use_ema=use_ema))
    if merge_lora and model.flex is not None and model.flex.mode == "lora":
        from flexcli.flex.layers import merge_loras
        merge_loras(model)
    return model


def default_output(src: Path) -> Path:
    stem = src.name if src.is_dir() else src.stem
    return src.parent / f"{stem}-flex.safetensors"


def validate_weak_patches(config, weak_patches: list) -> list:
    """The weak sizes as flexcli names them (ints for square 2-D, tuples for video), checked against the config:
    the model's number of axes, not the pretrained size, and (images) dividing the latent."""
    from flexcli.compute import base_patch_of
    from flexcli.flex.patches import label, parse_patch, volume

    if not weak_patches:
        raise FlexcliError("no weak patch size given", "pass --weak-patch, e.g. --weak-patch 4 (video: 2,2,2)")
    base = base_patch_of(config)
    out = []
    for raw in weak_patches:
        p = parse_patch(raw, len(base))
        if p == config.patch_size or (len(base) == 3 and p == base):
            raise FlexcliError(f"weak patch {label(p)} equals the pretrained patch size",
                               f"choose a larger patch, e.g. --weak-patch "
                               f"{2 * config.patch_size if len(base) == 2 else '2,2,2 or 1,4,4'}")
        if len(base) == 3:
            if any(a < b for a, b in zip(p, base)):
                raise FlexcliError(f"weak patch {label(p)} is smaller than the pretrained {label(base)} along an "
                                   "axis", "weak sizes are larger patches: e.g. --weak-patch 2,2,2 or 1,4,4")
        elif config.input_size % p:
            raise FlexcliError(f"weak patch {p} does not divide the {config.input_size}x{config.input_size} latent",
                               "choose a patch size that divides the latent side")
        if p not in out:
            out.append(p)
    return sorted(out, key=lambda q: (volume(q), q))


def flexify_checkpoint(src: str | Path, weak_patches: list, out: str | Path | None = None, *,
                       mode: str = "lora", lora_rank: int = 32, lora_alpha: float | None = None,
                       use_ema: bool = True, force: bool = False,
                       lora_groups: tuple[str, ...] = ()) -> tuple[Path, FlexModel, Checkpoint]:
    """Read `src`, add the weak patch sizes and write one flexcli .safetensors file (atomically).

    `lora_groups` adds the family's opt-in LoRA targets (PixArt: ("cross_attn",), `--lora-cross-attn`)."""
    from flexcli.io.atomic import check_output

    src = Path(src)
    if mode not in MODES:
        raise FlexcliError(f"unknown mode '{mode}'", f"use one of: {', '.join(MODES)}")
    if lora_rank <= 0:
        raise FlexcliError(f"LoRA rank {lora_rank} is not positive", "pass --lora-rank 32 (the paper's value)")
    out = Path(out) if out is not None else default_output(src)
    check_output(out, force)
    ckpt = read_checkpoint(src, use_ema=use_ema)
    if ckpt.flex:
        raise FlexcliError(f"{src} is already flexified (patch sizes {ckpt.flex['patch_sizes']})",
                           "pass the original (not flexified) checkpoint")
    weak = validate_weak_patches(ckpt.config, weak_patches)
    model = build_model(ckpt)
    spec = model.flex_spec
    unknown = [g for g in lora_groups if g not in spec.optional_lora_targets]
    if unknown:
        raise FlexcliError(f"a {NAMES.get(ckpt.family, ckpt.family)} has no {unknown[0].replace('_', '-')} layers "
                           f"to put LoRAs on", "drop the option (it applies to text-to-image checkpoints)")
    if lora_groups and mode != "lora":
        raise FlexcliError(f"--lora-{lora_groups[0].replace('_', '-')} needs --mode lora", "drop it or use --mode lora")
    flexify_model(model, weak, mode, lora_rank, lora_alpha, lora_targets=spec.targets(tuple(lora_groups)))
    source = {"file": str(src.name), "sha256": file_sha256(src), "layout": ckpt.layout}
    save_checkpoint(model, out, {"source": source, "inferred": ckpt.inferred})
    return out, model, ckpt


def added_parameter_names(model) -> set[str]:
    """Names of the parameters flexify added (tokenizers, size embeddings, LoRAs, norm affines)."""
    names = {n for n, _ in model.named_parameters() if n.startswith("flex.") or ".lora_" in n}
    for mname, module in model.named_modules():
        if isinstance(module, SizeLayerNorm):
            names |= {f"{mname}.{n}" for n, _ in module.named_parameters()}
    return names


def describe(path: str | Path) -> dict:
    """Everything `flexcli info` prints: layout, config, patch sizes, parameter counts, cost per size."""
    ckpt = read_checkpoint(path)
    model = build_model(ckpt)
    added = added_parameter_names(model)
    params = dict(model.named_parameters())
    base = sum(p.numel() for n, p in params.items() if n not in added)
    extra = sum(params[n].numel() for n in added)
    flex = model.flex.describe() if model.flex is not None else None
    rows = []
    for p in model.patch_sizes:
        cost = model_cost(model, p)
        row = {"patch_size": p, "tokens": cost.tokens, "macs": cost.macs, "flops": cost.flops,
               "gmacs": cost.gmacs, "gflops": cost.gflops}
        if flex and flex["mode"] == "lora" and p != model.config.patch_size:
            merged = model_cost(model, p, merged=True)
            row.update(gmacs_merged=merged.gmacs, gflops_merged=merged.gflops)
        rows.append(row)
    return {"path": str(path), "family": ckpt.family, "layout": ckpt.layout, "config": ckpt.config.to_dict(),
            "text": text_info(model), "inferred": ckpt.inferred,
            "flex": flex, "patch_sizes": model.patch_sizes, "params": {"base": base, "added": extra},
            "latent": list(family(ckpt.family).cost.spatial(ckpt.config)),
            "cost": rows, "flops_convention": "per sample, one forward pass; GFLOPs = 2 x GMACs; matmuls only",
            "source": ckpt.metadata.get("source"), "flexcli_version": __version__}


def text_info(model) -> dict | None:
    """A text family's conditioning: caption width, caption tokens (cross-attention keys) and its null caption."""
    width = getattr(model, "text_width", None)
    if width is None:
        return None
    null = "learned y_embedding" if getattr(model, "y_embedding", None) is not None else "encoded negative prompt"
    return {"width": width, "tokens": model.text_length, "null_caption": null}


def export_loras(path: str | Path, out: str | Path, force: bool = False) -> list[Path]:
    """Export the per-size LoRAs of a flexified checkpoint in peft's adapter layout (atomically)."""
    from flexcli.io.peft_export import export_peft_adapters
    from flexcli.io.atomic import atomic_dir, check_output

    out = Path(out)
    check_output(out, force)
    model = build_model(read_checkpoint(path))
    if model.flex is None or model.flex.mode != "lora":
        raise FlexcliError(f"{path} has no LoRAs (not flexified with --mode lora)",
                           "flexify it first: flexcli flexify CKPT --weak-patch 4")
    with atomic_dir(out) as tmp:
        export_peft_adapters(model, tmp, model.flex.lora_rank, model.flex.lora_alpha)
    return [out / patch_key(p) for p in model.flex.weak_patch_sizes]
