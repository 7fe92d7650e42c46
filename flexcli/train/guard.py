"""What a distillation run folder holds when a run stops early (#17): the rolling last-good checkpoint kept by
the NaN guard, and the one-line messages that say exactly which checkpoint exists and the command that goes on.

Checkpoints: `state.pt` is the latest (every `ckpt_every` steps, for an exact resume after a kill); when a new
one is written, the previous one, confirmed by the healthy steps run on its weights since, becomes
`last-good.pt` (a hard link: no copy) unless a loss spike is still unconfirmed. When the guard stops a run
whose first bad step is s (`flexcli.train.step.LossGuard`), a checkpoint written by this process at step s - 1
or later is suspect (its weights produced the bad loss, or came from it), so the run rolls back to
`last-good.pt`; with no good checkpoint the suspect files are removed and the advice is a fresh start with a
lower lr.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from flexcli.errors import FlexcliError, Interrupted
from flexcli.io.atomic import atomic_path
from flexcli.train.state import STATE_NAME

GOOD_NAME = "last-good.pt"


@dataclass
class Saved:
    """The run's latest checkpoint: its step, and whether this process wrote it (else it was resumed from)."""

    step: int | None = None
    written_here: bool = False


def promote(out_dir: Path) -> None:
    """Make the current state.pt the last-good checkpoint (a hard link, or a copy where links fail)."""
    state, good = out_dir / STATE_NAME, out_dir / GOOD_NAME
    if state.exists():
        _link(state, good)


def _link(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def good_checkpoint(out_dir: Path, saved: Saved, failed_step: int) -> tuple[Path | None, bool]:
    """(the checkpoint to keep, whether it must first be restored into state.pt) after a failure."""
    if saved.step is not None and (failed_step > saved.step + 1 or not saved.written_here):
        return out_dir / STATE_NAME, False  # confirmed by healthy steps since, or the one the user resumed from
    if (out_dir / GOOD_NAME).exists():
        return out_dir / GOOD_NAME, True
    return None, False


def roll_back(out_dir: Path, good: Path) -> None:
    """state.pt := the last-good checkpoint (both names kept)."""
    _link(good, out_dir / STATE_NAME)


def discard_suspect(out_dir: Path, names) -> None:
    """No good checkpoint: remove the files written from damaged weights."""
    for name in (STATE_NAME, GOOD_NAME, *names):
        with contextlib.suppress(FileNotFoundError):
            (out_dir / name).unlink()


def _cmd(checkpoint: Path, out_dir: Path, *rest: str) -> str:
    return " ".join(["flexcli distill", shlex.quote(str(checkpoint)), "-o", shlex.quote(str(out_dir)), *rest])


def diverged(problem: str, checkpoint: Path, out_dir: Path, kept_step: int | None, lr: float) -> FlexcliError:
    lower = f"{lr / 10:g}"
    if kept_step is not None:
        return FlexcliError(f"{problem}; training stopped, and the last good checkpoint ({STATE_NAME}, step "
                            f"{kept_step}) is kept in {out_dir}", "continue from it with a lower lr: "
                            + _cmd(checkpoint, out_dir, "--resume", "--lr", lower))
    return FlexcliError(f"{problem}; training stopped before any good checkpoint was written",
                        "start over with a lower lr: " + _cmd(checkpoint, out_dir, "-r",
                                                              shlex.quote(str(out_dir / "config.yaml")),
                                                              "--force", "--lr", lower))


def interrupted(e: KeyboardInterrupt, checkpoint: Path, out_dir: Path, step_of) -> Interrupted:
    """The interrupt of a run, with the checkpoint it left and the command that continues it."""
    state, config = out_dir / STATE_NAME, out_dir / "config.yaml"
    if state.exists():
        detail = (f"the last checkpoint is {state} (step {step_of(state)}); continue with: "
                  + _cmd(checkpoint, out_dir, "--resume"))
    elif config.exists():
        detail = ("no checkpoint was written yet; start over with: "
                  + _cmd(checkpoint, out_dir, "-r", shlex.quote(str(config)), "--force"))
    else:
        detail = "no output was written"
    return Interrupted(detail, getattr(e, "signum", 2))
