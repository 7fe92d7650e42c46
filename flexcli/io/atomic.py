"""Write-then-rename helpers: an interrupted or failed write never leaves a half-written output."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from flexcli.errors import FlexcliError


def check_output(path: Path, force: bool) -> None:
    """Fail early (before any work) if `path` exists without --force or its folder is not writable."""
    if path.exists() and not force:
        raise FlexcliError(f"output {path} already exists", "pass --force to overwrite it or choose another -o")
    parent = path.parent
    if not parent.exists():
        raise FlexcliError(f"output directory {parent} does not exist", "create it first or choose another -o")
    if not parent.is_dir():
        raise FlexcliError(f"output location {parent} is not a directory", "choose another -o")
    try:  # a real probe: os.access says yes to root even on read-only file systems
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FlexcliError(f"output directory {parent} is not writable ({e.strerror})",
                           "choose a writable location with -o") from e


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Like `atomic_path` for a directory."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
