"""Checks of user input, in one place (#17): numbers, seeds, devices, checkpoints and memory.

Each check raises a one-line `FlexcliError` that names the value and the next thing to try; the settings
validators (`flexcli.sampling.config`, `flexcli.train.config`), the checkpoint reader (`flexcli.families`) and
the commands' library calls use them with one-line call sites.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import os
from pathlib import Path

import torch

from flexcli.errors import FlexcliError

MAX_SEED = 2**64 - 1  # torch generators take 64-bit seeds


# --------------------------------------------------------------------------------------------------
# numbers
def number(name: str, value, lo: float | None = None, hi: float | None = None, *, above: bool = False,
           fix: str = ""):
    """A finite number in [lo, hi] ((lo, hi] with `above`); None passes (not given)."""
    if value is None:
        return value
    bounds = f"{'(' if above else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
    fix = fix or f"pass a number in {bounds}"
    if math.isnan(value):
        raise FlexcliError(f"{name} {value} is not a number", fix)
    if math.isinf(value):
        raise FlexcliError(f"{name} {value} is not finite", fix)
    if lo is not None and (value < lo or (above and value == lo)):
        what = ("not positive" if above else "negative") if lo == 0 else f"below {lo}"
        raise FlexcliError(f"{name} {value} is {what}", fix)
    if hi is not None and value > hi:
        raise FlexcliError(f"{name} {value} is above {hi}", fix)
    return value


def integer(name: str, value, lo: int = 1, hi: int | None = None, fix: str = ""):
    """An int in [lo, hi]; None passes (not given)."""
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlexcliError(f"{name} {value!r} is not an integer", fix or f"pass a whole number >= {lo}")
    if value < lo:
        raise FlexcliError(f"{name} {value} is {'not positive' if lo == 1 else f'below {lo}'}",
                           fix or f"pass {lo} or more")
    if hi is not None and value > hi:
        raise FlexcliError(f"{name} {value} is above {hi}", fix or f"pass at most {hi}")
    return value


def seed(name: str, value: int, count: int = 1) -> int:
    """A seed of torch's 64-bit generators; with `count` seeds value, value + 1, ... all fit."""
    integer(name, value, 0, fix=f"pass a seed from 0 to 2**64 - 1 = {MAX_SEED}")
    if value + count - 1 > MAX_SEED:
        last = f" (the last of {count} samples would use {value + count - 1})" if count > 1 else ""
        raise FlexcliError(f"{name} {value} is beyond 64 bits{last}",
                           f"pass a seed from 0 to {MAX_SEED - count + 1}")
    return value


def finite_fields(cfg, name=lambda key: key) -> None:
    """Every float setting of a config dataclass is a number (NaN is 'not a number', not 'negative')."""
    for f in dataclasses.fields(cfg):
        values = getattr(cfg, f.name)
        for v in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(v, float) and not math.isfinite(v):
                number(name(f.name), v, fix="give it a finite value")


# --------------------------------------------------------------------------------------------------
# devices
def device(text: str) -> torch.device | None:
    """'auto' (None), or a device that parses and is available here."""
    if text == "auto":
        return None
    fix = "use auto, cpu, cuda or cuda:N"
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise FlexcliError(f"--device '{text}' is not a device", fix) from None
    if d.type == "meta":
        raise FlexcliError("--device meta holds no data, so nothing can run on it", "use cpu or cuda")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise FlexcliError(f"--device {text}: CUDA is not available on this machine", "use --device cpu (or auto)")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise FlexcliError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                               f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise FlexcliError(f"--device {text}: MPS is not available on this machine", "use --device cpu (or auto)")
    elif d.type != "cpu":
        raise FlexcliError(f"--device {text}: flexcli runs on cpu, cuda or mps", fix)
    return d


# --------------------------------------------------------------------------------------------------
# checkpoints
_POSITIVE = ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "num_layers",
             "num_attention_heads", "attention_head_dim")


def config_values(config, path) -> None:
    """A config (from metadata or config.json) whose values have the right types and sizes that fit."""
    bad = f"the config of {path}"
    fix = "the checkpoint's metadata is damaged; re-export it"
    for f in dataclasses.fields(config):
        v, default = getattr(config, f.name), f.default
        kind = type(default) if isinstance(default, (bool, int, float)) else None
        fits = kind is None or (isinstance(v, bool) if kind is bool else not isinstance(v, bool) and (
            isinstance(v, int) if kind is int else isinstance(v, (int, float))))
        if not fits:
            raise FlexcliError(f"{bad} has {f.name} = {v!r}, not {'an' if kind is int else 'a'} "
                               f"{ {bool: 'boolean', int: 'integer', float: 'number'}[kind]}", fix)
        if isinstance(v, float) and not math.isfinite(v):
            raise FlexcliError(f"{bad} has {f.name} = {v}", fix)
        if f.name in _POSITIVE and isinstance(v, (int, float)) and not isinstance(v, bool) and v < 1:
            raise FlexcliError(f"{bad} has {f.name} = {v} (it must be 1 or more)", fix)
    heads, width = getattr(config, "num_heads", None), getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(width, int) and width % heads:
        raise FlexcliError(f"{bad}: num_heads {heads} does not divide the width (hidden_size) {width}",
                           f"{fix}, or fix num_heads (e.g. {max(1, width // 64)})")


def _patch_ok(p) -> bool:
    if isinstance(p, list):
        return 2 <= len(p) <= 3 and all(_patch_ok(q) for q in p)
    return isinstance(p, int) and not isinstance(p, bool) and p >= 1


def flex_metadata(flex, config, path) -> None:
    """The flex description of a flexified checkpoint: a known mode, valid patch sizes, LoRA settings."""
    from flexcli.flex.core import MODES

    fix = "the flexcli metadata is damaged; flexify the original checkpoint again"
    where = f"the flexcli metadata of {path}"
    if not isinstance(flex, dict):
        raise FlexcliError(f"{where} has flex = {flex!r}, not a mapping", fix)
    if flex.get("mode") not in MODES:
        raise FlexcliError(f"{where} has mode {flex.get('mode')!r}, not one of {', '.join(MODES)}", fix)
    sizes, base = flex.get("patch_sizes"), flex.get("base_patch_size")
    if not isinstance(sizes, list) or not sizes or not all(_patch_ok(p) for p in sizes):
        raise FlexcliError(f"{where} has patch_sizes {sizes!r}, not a list of patch sizes", fix)
    pretrained = getattr(config, "patch_size", base)
    if base not in sizes or _as_tuple(base) != _as_tuple(pretrained):
        raise FlexcliError(f"{where} has base_patch_size {base!r}, not the pretrained size among {sizes}", fix)
    if flex["mode"] == "lora":
        lora = flex.get("lora") or {}
        rank, alpha = lora.get("rank"), lora.get("alpha")
        if not (isinstance(rank, int) and rank >= 1) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha)
                                                            and alpha > 0):
            raise FlexcliError(f"{where} has LoRA rank {rank!r} and alpha {alpha!r}", fix)


def _as_tuple(p):
    return tuple(p) if isinstance(p, (list, tuple)) else p


def lora(rank: int, alpha: float | None, width: int | None = None) -> None:
    """LoRA settings for flexify: 1 <= rank (<= the model width, when given), a finite positive alpha."""
    if rank < 1:
        raise FlexcliError(f"--lora-rank {rank} is not positive", "pass --lora-rank 32 (the paper's value)")
    if width is not None and rank > width:
        raise FlexcliError(f"--lora-rank {rank} is larger than the model width {width}",
                           f"pass --lora-rank {min(32, width)} (at most {width}; the paper uses 32)")
    number("--lora-alpha", alpha, 0, above=True, fix="leave --lora-alpha out (it defaults to the rank) or pass "
           "a positive number")


def width_of(config) -> int | None:
    """The model width of a config (DiT: hidden_size; text families: heads x head_dim)."""
    if isinstance(getattr(config, "hidden_size", None), int):
        return config.hidden_size
    heads, dim = getattr(config, "num_attention_heads", None), getattr(config, "attention_head_dim", None)
    return heads * dim if isinstance(heads, int) and isinstance(dim, int) else None


def nonfinite(state_dict: dict, path, allow: bool) -> None:
    """Checkpoints hold finite weights (a diverged run's NaNs would make every sample NaN)."""
    if allow:
        return
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in state_dict.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise FlexcliError(f"{path} holds non-finite weights: {bad[0][0]} has {bad[0][1]} NaN/inf values{more}",
                           "the checkpoint is damaged (e.g. from a diverged run); pass --allow-nonfinite (flexify, "
                           "info, sample, export-lora, distill) to use it anyway")


def checkpoint(ckpt, allow_nonfinite: bool = False):
    """A checkpoint as read: its config, flex metadata and weights checked; returns it."""
    config_values(ckpt.config, ckpt.path)
    if ckpt.flex is not None:
        flex_metadata(ckpt.flex, ckpt.config, ckpt.path)
    nonfinite(ckpt.state_dict, ckpt.path, allow_nonfinite)
    return ckpt


def input_path(path: Path, what: str = "checkpoint") -> Path:
    """An input that exists; a symlink loop or a dangling link says so."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:
                raise FlexcliError(f"{what} {path} is a symlink loop", "point it at a real file") from None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise FlexcliError(f"{what} {path} is a symlink loop", "point it at a real file") from None
            raise FlexcliError(f"{what} {path} is a broken symlink (to {os.readlink(path)})", "check the path")
        raise FlexcliError(f"{what} {path} not found", "check the path")
    return path


# --------------------------------------------------------------------------------------------------
# memory
def available_memory(dev: torch.device | None = None) -> int | None:
    """Free bytes on the device (CUDA) or available RAM; None when unknown."""
    if dev is not None and dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TB"


def sample_count(n: int, seed_: int, latent_shape, dev=None) -> None:
    """The outputs of n samples (latents, images, npz) fit in memory; sampling itself runs in batches."""
    per_sample = 3 * 4 * math.prod(latent_shape)  # float32 latents, uint8 images and npz copies (generous)
    avail = available_memory(None)  # outputs are gathered on the CPU
    if avail is None or n * per_sample <= avail:
        return
    fit = max(1, avail // per_sample)
    raise FlexcliError(f"-n {n} samples need about {_size(n * per_sample)} of memory for their outputs, more than "
                       f"the {_size(avail)} available", f"use -n {fit} or fewer per run (batches of --batch-size run "
                       f"one after another; --seed {seed_ + fit} continues where it stopped)")


def _shape(model, latent_shape) -> tuple[int, int, int, int]:
    """(tokens at the pretrained patch size, width, heads, depth) of a run on `latent_shape` (C, *spatial)."""
    cfg = model.config
    tokens = max(1, math.prod(latent_shape[1:]) // math.prod(model.base_patch))
    heads = getattr(cfg, "num_heads", None) or getattr(cfg, "num_attention_heads", None) or 1
    depth = getattr(cfg, "depth", None) or getattr(cfg, "num_layers", None) or 1
    return tokens, width_of(cfg) or 1, heads, depth


def _refuse(flag: str, batch: int, need: int, per_sample: int, avail: int | None, what: str, fix: str) -> None:
    """An estimate: only clearly impossible batches (over twice the memory available) are refused."""
    if avail is None or need <= 2 * avail:
        return
    fit = max(1, int(2 * avail // per_sample))
    raise FlexcliError(f"{flag} {batch} needs about {_size(need)} of memory {what}, more than the {_size(avail)} "
                       "available", f"use {flag} {fit} or less{fix}")


def train_batch(model, latent_shape, batch: int, micro: int, dev, bytes_per_value: int = 4) -> None:
    """A distillation batch fits: the global batch's inputs, and one micro-batch's activations (an estimate,
    after Korthikanti et al. 2022: per block, tokens x (34 width + 5 heads x tokens) values)."""
    tokens, width, heads, depth = _shape(model, latent_shape)
    latent = math.prod(latent_shape)
    per_sample = bytes_per_value * depth * tokens * (34 * width + 5 * heads * tokens) + 8 * 4 * latent
    _refuse("--batch-size", batch, micro * per_sample + batch * 8 * 4 * latent, per_sample, available_memory(dev),
            "per step", " (with --grad-accum K for a K times larger batch)")


def sample_batch(model, latent_shape, batch: int, guided: bool, dev, bytes_per_value: int = 4) -> None:
    """A sampling batch fits: one block's activations at a time (no autograd), both guidance branches."""
    tokens, width, heads, _ = _shape(model, latent_shape)
    per_sample = (2 if guided else 1) * bytes_per_value * tokens * (12 * width + 2 * heads * tokens)
    per_sample += 8 * 4 * math.prod(latent_shape)  # the solver's latents, noise and predictions
    _refuse("--batch-size", batch, batch * per_sample, per_sample, available_memory(dev), "per forward pass",
            " (-n can stay: batches run one after another)")


# --------------------------------------------------------------------------------------------------
# sampling
def sample_settings(cfg) -> None:
    """`flexcli sample`'s numbers and device, before any model is read."""
    seed("--seed", cfg.seed, max(1, cfg.num_samples))
    for flag, value in (("--cfg-scale", cfg.cfg_scale), ("--cfg-scale-weak", cfg.cfg_scale_weak),
                        ("--cfg-scale-all-weak", cfg.cfg_scale_all_weak)):
        number(flag, value, 0, 100, fix=f"pass {flag} between 0 and 100 (1 disables guidance; DiT uses 1.5 to 4)")
    integer("--guided-channels", cfg.guided_channels, 1, fix="pass 1 or more, or leave it out to guide every channel")
    device(cfg.device)


def sample_plan(cfg, latent_shape) -> None:
    """`flexcli sample`'s settings against the run's latent (C, *spatial): guided channels, and outputs that fit
    in memory."""
    channels = latent_shape[0]
    integer("--guided-channels", cfg.guided_channels, 1, channels,
            fix=f"pass 1 to {channels} (the model's eps channels), or leave it out to guide every channel")
    sample_count(cfg.num_samples, cfg.seed, latent_shape)
