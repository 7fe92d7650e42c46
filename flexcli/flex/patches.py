"""Patch sizes as users write them: `4` (a square image patch), `2,2,2` or `2x2x2` (video: p_t, p_h, p_w).

Images take an int (or `p_h,p_w`), video models a 3-tuple; giving a video model a 2-D size or an image model a
3-D one is a one-line error. Inside flexcli a square 2-D patch is named by its int, any other by its tuple
(`flexcli.flex.core.public_patch`).
"""
from __future__ import annotations

import math
import re

from flexcli.errors import FlexcliError


def axes(value) -> tuple[int, ...] | None:
    """4 -> (4,), "2,2,2" / "2x2x2" / [2, 2, 2] -> (2, 2, 2); None when it is not a patch size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value) if all(isinstance(v, int) and not isinstance(v, bool) for v in value) else None
    text = str(value).strip().strip("()[]").replace(" ", "")
    if not re.fullmatch(r"\d+([,x]\d+)*", text):
        return None
    return tuple(int(v) for v in re.split(r"[,x]", text))


def _example(ndim: int) -> str:
    return "2,2,2 or 1,4,4" if ndim == 3 else "4"


def parse_patch(value, ndim: int, option: str = "--weak-patch"):
    """A user's patch size for a model whose patches have `ndim` axes -> int (square 2-D) or tuple."""
    sizes = axes(value)
    if sizes is None or any(v <= 0 for v in sizes):
        raise FlexcliError(f"{option} {value} is not a patch size", f"pass e.g. {option} {_example(ndim)}")
    if len(sizes) == 1 and ndim == 2:
        sizes = sizes * 2
    if len(sizes) != ndim:
        kind = "a video model's patches have 3 axes (p_t,p_h,p_w)" if ndim == 3 else \
            "an image model's patches have 2 axes"
        given = f"{len(sizes) if len(sizes) > 1 else 2}-D"
        raise FlexcliError(f"{option} {value} is a {given} patch size, but {kind}",
                           f"pass e.g. {option} {_example(ndim)}")
    return sizes[0] if len(sizes) == 2 and sizes[0] == sizes[1] else sizes  # as flex.core.public_patch


def named(text: str):
    """A patch as schedules write it: "4" -> 4, video "1x4x4" -> (1, 4, 4)."""
    sizes = axes(text)
    return sizes[0] if len(sizes) == 1 else sizes


def is_patch(p) -> bool:
    """A positive int, or a tuple of at least two positive ints."""
    sizes = (p,) if isinstance(p, int) else p if isinstance(p, tuple) and len(p) > 1 else None
    return sizes is not None and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)


def volume(p) -> int:
    """Pixels (latent cells) per token: p^2 for an int, the product of a tuple's axes."""
    return p * p if isinstance(p, int) else math.prod(p)


def label(p) -> str:
    """4 -> "4", (2, 2, 2) -> "2x2x2" (file names, CSV cells, messages)."""
    return str(p) if isinstance(p, int) else "x".join(str(v) for v in p)
