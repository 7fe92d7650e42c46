"""Patch schedules (paper §3.3) and guidance (§3.4, App. B.4): the patch size of every sampling step, for the
conditional and the guidance (unconditional) branch separately (step 0 is the noisiest), and how the two
branches' outputs are combined. Nothing here knows models: step costs come in as callables.

Schedules (`parse_schedule`):
* `x/y` (App. B.4): the conditional branch runs its LAST x steps at the powerful patch size, the guidance branch
  its last y; earlier steps run at the weak size. `x` alone means `x/x`.
* segments `P:N,P:N,...` in sampling order, e.g. `8:50,4:100,2:100` (video sizes `p_t x p_h x p_w`, e.g.
  `2x2x2:20,1x2x2:30`); `A/B` gives the branches separately.
* an explicit per-step list (recipes): `[4, 4, ..., 2]`, or `{cond: [...], uncond: [...]}`.
Several schedules on one command line (`parse_schedules`) are separated by ',' or, when they hold segments, ';'.
`--compute F` picks the `x/x` schedule with the largest compute fraction not above F (`for_compute`);
`weak-last` (the Fig. 19 ablation) reverses each branch.

Guidance, per step with patch sizes p_cond and p_uncond, on the first `guided_channels` eps channels (all by
default; 3 reproduces DiT's released FIDs); the other channels come from the conditional branch:
* p_cond == p_uncond: eps(null; p_u) + s1 (eps(c; p_c) - eps(null; p_u))   (standard CFG)
* p_cond <  p_uncond (fewer cells per token), weak guidance: eps(c; p_u) + s2 (eps(c; p_c) - eps(c; p_u)): the
  guidance branch is the WEAK model's CONDITIONAL prediction.
* otherwise (plain CFG mode, or p_cond > p_uncond): standard CFG with s1 and the null conditioning at p_u.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from flexcli.errors import FlexcliError
from flexcli.flex.patches import is_patch, named, volume

ORDERS = ("weak-first", "weak-last")
StepCost = Callable[[int, "int | None"], float]  # (p_cond, p_uncond or None) -> cost of one step


@dataclass(frozen=True)
class PatchSchedule:
    cond: tuple[int, ...]
    uncond: tuple[int, ...]
    spec: str = ""

    @property
    def steps(self) -> int:
        return len(self.cond)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.cond, self.uncond))

    def sizes(self) -> set[int]:
        return set(self.cond) | set(self.uncond)

    def reversed(self) -> "PatchSchedule":
        return PatchSchedule(self.cond[::-1], self.uncond[::-1], self.spec + " (weak-last)")

    def to_dict(self) -> dict:
        return {"spec": self.spec, "cond": list(self.cond), "uncond": list(self.uncond)}


def _bad(spec, why: str) -> FlexcliError:
    return FlexcliError(f"cannot parse schedule '{spec}': {why}",
                        "use x/y (powerful for the last x cond / y guidance steps, e.g. 130/130), "
                        "segments P:N,P:N (e.g. 4:150,2:100) or A/B for the two branches")


def powerful_last(steps: int, n_powerful: int, powerful: int, weak: int) -> tuple[int, ...]:
    """The first steps - n at the weak size, the last n at the powerful size."""
    return (weak,) * (steps - n_powerful) + (powerful,) * n_powerful


def _segments(spec: str, part: str, steps: int) -> tuple:
    out: list = []
    for item in part.split(","):
        m = re.fullmatch(r"\s*(\d+(?:x\d+)*)\s*:\s*(\d+)\s*", item)
        if not m:  # a part without any ':' ('-3', 'abc') may have been meant as a count
            why = "is not P:N" if ":" in part else f"is neither a count of powerful steps (0 to {steps}) nor P:N"
            raise _bad(spec, f"'{item.strip()}' {why}")
        p, n = named(m.group(1)), int(m.group(2))
        if min(p if isinstance(p, tuple) else (p,)) < 1:
            raise _bad(spec, f"patch size {m.group(1)} is not positive")
        out += [p] * n
    if len(out) != steps:
        raise _bad(spec, f"the segments cover {len(out)} steps, not {steps}")
    return tuple(out)


def parse_schedule(spec: str, steps: int, powerful: int, weak: int | None) -> PatchSchedule:
    """Parse `x/y`, `x` or segment lists (see the module doc) for `steps` sampling steps."""
    text = str(spec).strip()
    if not text:
        raise _bad(spec, "it is empty")
    parts = text.split("/")
    if len(parts) > 2:
        raise _bad(spec, "more than one '/'")
    if all(re.fullmatch(r"\s*\d+\s*", p) for p in parts):
        counts = [int(p) for p in parts] * (2 // len(parts))
        for c in counts:
            if c > steps:
                raise _bad(spec, f"{c} powerful steps is more than the {steps} steps")
        if weak is None and any(c < steps for c in counts):
            raise FlexcliError(f"schedule '{spec}' needs a weak patch size but the checkpoint has only "
                               f"patch size {powerful}", "flexify it first (flexcli flexify CKPT -p 4) or use "
                               f"--schedule {steps}/{steps}")
        w = weak if weak is not None else powerful
        return PatchSchedule(powerful_last(steps, counts[0], powerful, w),
                             powerful_last(steps, counts[1], powerful, w), text)
    if any(":" in p for p in parts) and any(":" not in p for p in parts):
        raise _bad(spec, "mixes the x/y and P:N forms")
    branches = [_segments(spec, p, steps) for p in parts]
    return PatchSchedule(branches[0], branches[-1], text)


def from_list(value, steps: int) -> PatchSchedule:
    """An explicit per-step schedule: a list of patch sizes (both branches) or {cond: [...], uncond: [...]}."""
    if isinstance(value, dict):
        unknown = set(value) - {"cond", "uncond"}
        if unknown or "cond" not in value:
            raise FlexcliError(f"schedule_steps has keys {sorted(value)}",
                               "give a list, or {cond: [...], uncond: [...]}")
        cond, uncond = value["cond"], value.get("uncond", value["cond"])
    else:
        cond = uncond = value
    out = []
    for name, lst in (("cond", cond), ("uncond", uncond)):
        if isinstance(lst, (list, tuple)):  # video sizes: [1, 4, 4] entries or "1x4x4" strings
            lst = [tuple(p) if isinstance(p, (list, tuple)) else named(p) if isinstance(p, str) and
                   re.fullmatch(r"\d+(x\d+)+", p) else p for p in lst]
        if not isinstance(lst, (list, tuple)) or not all(is_patch(p) for p in lst):
            raise FlexcliError(f"schedule_steps ({name}) is not a list of positive patch sizes",
                               "write e.g. schedule_steps: [4, 4, 2, 2] (video: [[1, 4, 4], [1, 2, 2]])")
        if len(lst) != steps:
            raise FlexcliError(f"schedule_steps ({name}) has {len(lst)} entries for {steps} steps",
                               "give one patch size per step")
        out.append(tuple(lst))
    return PatchSchedule(out[0], out[1], "explicit list")


def parse_schedules(text: str | None) -> list[str] | None:
    """'250/250,130/130,70/70' -> ['250/250', '130/130', '70/70'].

    Segment schedules contain commas themselves: alone ('8:50,2:200') they are one schedule; beside others the
    schedules are separated by ';' ('8:50,2:200;250/250')."""
    if text is None:
        return None
    sep = ";" if ";" in text else ","
    out: list[str] = []
    for part in str(text).split(sep):
        part = part.strip()
        if part and part not in out:
            out.append(part)
    if not out:
        raise FlexcliError("--schedules is empty", "e.g. --schedules 250/250,130/130,70/70")
    if sep == "," and len(out) > 1 and any(":" in part for part in out):
        if not any(re.fullmatch(r"\d+(/\d+)?", part) for part in out):  # one segment schedule, e.g. 8:50,2:200
            return [str(text).strip()]
        raise FlexcliError(f"--schedules '{text}' mixes ',' between schedules with P:N segments",
                           "separate the schedules with ';', e.g. --schedules '8:50,2:200;250/250'")
    return out


def schedule_cost(schedule: PatchSchedule, step_cost: StepCost, guided: bool = True) -> float:
    return sum(step_cost(c, u if guided else None) for c, u in schedule.pairs())


def compute_fraction(schedule: PatchSchedule, step_cost: StepCost, powerful: int, guided: bool = True) -> float:
    """Cost of the schedule / cost of running every step of both branches at the powerful size."""
    base = schedule.steps * step_cost(powerful, powerful if guided else None)
    return schedule_cost(schedule, step_cost, guided) / base


def for_compute(target: float, steps: int, step_cost: StepCost, powerful: int, weak: int | None,
                guided: bool = True) -> PatchSchedule:
    """The `x/x` schedule with the largest compute fraction that does not exceed `target`."""
    if not 0 < target <= 1:
        raise FlexcliError(f"compute target {target} is not in (0, 1]", "pass a fraction, e.g. --compute 0.6")
    if weak is None:
        if target < 1:
            raise FlexcliError(f"compute target {target} needs a weak patch size but the checkpoint has only "
                               f"patch size {powerful}", "flexify it first: flexcli flexify CKPT -p 4")
        return parse_schedule(f"{steps}/{steps}", steps, powerful, None)
    best = None
    for x in range(steps + 1):
        s = parse_schedule(f"{x}/{x}", steps, powerful, weak)
        frac = compute_fraction(s, step_cost, powerful, guided)
        if frac <= target + 1e-12:
            best = s
    if best is None:
        floor = compute_fraction(parse_schedule("0/0", steps, powerful, weak), step_cost, powerful, guided)
        raise FlexcliError(f"compute target {target} is below the all-weak cost ({floor:.4f} at patch size {weak})",
                           f"pass --compute {floor:.4f} or more")
    return PatchSchedule(best.cond, best.uncond, f"{best.spec} (from --compute {target})")


# ---------------------------------------------------------------------------------------------------------
GUIDANCE_MODES = ("weak", "cfg")
PAPER_LINK = 2.5  # (1 - s1) / (1 - s2), App. B.4


def linked_weak_scale(s1: float, link: float = PAPER_LINK) -> float:
    """s2 from (1 - s1) / (1 - s2) = link."""
    return 1.0 - (1.0 - s1) / link


def uses_weak_guidance(p_cond, p_uncond, mode: str = "weak") -> bool:
    """Whether this step's guidance branch is the weak conditional prediction (label c instead of null): the
    guidance branch runs at a larger patch (more cells per token) than the conditional one."""
    return mode == "weak" and volume(p_cond) < volume(p_uncond)


def step_scale(p_cond, p_uncond, s1: float, s2: float, mode="weak", s0: float | None = None, powerful=None):
    all_weak = s0 is not None and p_cond == p_uncond != powerful  # s0 (if given): both branches at a weak size
    return s2 if uses_weak_guidance(p_cond, p_uncond, mode) else s0 if all_weak else s1


def combine(cond: torch.Tensor, guide: torch.Tensor, scale: float, eps_channels: int,
            guided_channels: int | None = None) -> torch.Tensor:
    """guide + scale (cond - guide) on the first `guided_channels` eps channels; the rest from `cond`."""
    n = guided_channels or eps_channels
    g = guide[:, :n] + scale * (cond[:, :n] - guide[:, :n])
    return torch.cat([g, cond[:, n:]], dim=1)
