"""Outputs written safely: write-then-rename, owner-stamped temporaries, one writer per output (#17).

* `atomic_path` / `atomic_dir` write into a temporary beside the output, named `.<name>.flexcli-<pid>-<random>.tmp`
  (the owner's process id in the name), and rename it over the output only when the work succeeded; on an
  error or an interrupt (SIGINT, or SIGTERM through the CLI) the temporary is removed. A SIGKILL cannot be
  caught: its temporary stays until the next run over the same output, which removes every temporary of that
  output whose owner process is gone (`remove_stale`).
* Outputs are created with the user's umask (mkstemp alone would make them 0600).
* `check_output` (before any work) claims the output with an exclusive lock on `.<name>.flexcli-lock` beside it:
  a second process writing the same output fails at once with a clear error instead of racing the first. The
  claim ends when the output is renamed into place (or the work fails), at the latest when the process exits.
  Under torchrun only rank 0 claims (it owns every output).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

from flexcli.errors import FlexcliError

TMP_TAG = "flexcli"
_TMP = re.compile(r"^\.(?P<name>.+)\.flexcli-(?P<pid>\d+)-[^.]*\.(tmp|probe)$")
_HELD: dict[str, tuple[int, Path]] = {}  # output (resolved folder / name) -> (fd, lock file) held by this process


def check_output(path: Path, force: bool, kind: str | None = None) -> None:
    """Fail early (before any work) if `path` exists without --force, is of the wrong `kind` ("file" or
    "folder"), or its folder is not writable; remove stale temporaries of `path`; claim it (see module doc)."""
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise FlexcliError(f"output directory {parent} does not exist", "create it first or choose another -o")
    if not parent.is_dir():
        raise FlexcliError(f"output location {parent} is not a directory", "choose another -o")
    writable(parent)
    claim(path)
    try:
        remove_stale(path)
        if path.exists() and not force:
            raise FlexcliError(f"output {path} already exists", "pass --force to overwrite it or choose another -o")
        if kind == "folder" and path.exists() and not path.is_dir():
            raise FlexcliError(f"output {path} is a file, but a folder is written there",
                               "remove the file or choose another -o")
        if kind == "file" and path.is_dir():
            raise FlexcliError(f"output {path} is a folder, but a file is written there",
                               "choose a file name with -o")
    except BaseException:
        release(path)
        raise


def writable(folder: Path) -> None:
    """A real write probe (os.access says yes to root even on read-only file systems)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{TMP_TAG}-{os.getpid()}-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FlexcliError(f"output directory {folder} is not writable ({e.strerror})",
                           "choose a writable location with -o") from e


def writable_folder(folder: Path) -> None:
    """`folder` (made later, if missing) can be written: it is a folder, or its nearest existing parent is one."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FlexcliError(f"output {folder} is a file, not a folder", "choose another --out")
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise FlexcliError(f"output location {existing} is not a directory", "choose another --out")
    writable(existing)


# --------------------------------------------------------------------------------------------------
def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_stale(path: Path) -> list[Path]:
    """Remove the temporaries of output `path` whose owner process is gone; returns what was removed."""
    return _sweep(Path(path).parent, Path(path).name)


def remove_stale_in(folder: Path) -> list[Path]:
    """Remove every flexcli temporary inside `folder` whose owner process is gone (a run folder)."""
    return _sweep(Path(folder), None)


def _sweep(folder: Path, name: str | None) -> list[Path]:
    removed = []
    pattern = f".{glob.escape(name)}.{TMP_TAG}-*" if name is not None else f".*.{TMP_TAG}-*"
    with contextlib.suppress(OSError):
        for p in folder.glob(pattern):
            m = _TMP.match(p.name)
            if m and (name is None or m["name"] == name) and not _alive(int(m["pid"])):
                _remove(p)
                removed.append(p)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{TMP_TAG}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure delete it."""
    path = Path(path)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    try:
        yield Path(tmp)
        if not os.path.islink(tmp):
            os.chmod(tmp, mode)  # some writers (safetensors) recreate the file as 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        release(path)


@contextlib.contextmanager
def atomic_dir(path: Path):
    """Like `atomic_path` for a directory."""
    path = Path(path)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release(path)


# --------------------------------------------------------------------------------------------------
def lock_path(path: Path) -> Path:
    return Path(path).parent / f".{Path(path).name}.{TMP_TAG}-lock"


def claim(path: Path) -> None:
    """Take the exclusive lock of output `path` for this process (again: a no-op); a one-line error when
    another process holds it. Not under torchrun's ranks > 0: rank 0 owns the outputs."""
    key = _key(path)
    if key in _HELD or os.environ.get("RANK", "0") != "0":
        return
    lock = lock_path(path)
    for _ in range(5):  # retry while a finishing owner removes the lock file under us
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            # A run folder to resume whose parent cannot be written (read-only media) has no place for a lock.
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                return
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FlexcliError(f"output {path} is being written by another flexcli process (pid {owner})",
                               "wait for it to finish, or choose another -o") from None
        if _same_file(fd, lock):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            if not _HELD:
                atexit.register(release_all)
            _HELD[key] = (fd, lock)
            return
        os.close(fd)
    raise FlexcliError(f"cannot lock output {path}", "try again")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _key(path: Path) -> str:
    path = Path(path)
    return str(path.parent.resolve() / path.name)


def release(path: Path) -> None:
    """End this process's claim on output `path` (if it has one) and remove the lock file."""
    _release(_key(path))


def _release(key: str) -> None:
    held = _HELD.pop(key, None)
    if held is not None:
        fd, lock = held
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still locked: a process that opened it meanwhile retries on a new file
        os.close(fd)


def release_all() -> None:
    """End every claim of this process (the CLI calls it when a command ends; also at exit)."""
    for key in list(_HELD):
        _release(key)
