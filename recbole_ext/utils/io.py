"""Atomic file and folder writes: a failed write never leaves a half-written result behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from recbole_ext.errors import UserError


def make_dirs(path: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p path``; a path that cannot be a folder (a file in the way, no permission, a read-only or pseudo
    file system) is a one-line UserError naming it, not an OSError traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise UserError(f"cannot create the {what} {path}: {reason}", fix="choose a folder you can write") from None
    return path


@contextlib.contextmanager
def new_folders_removed_on(folder: str | os.PathLike, errors=(BaseException,)):
    """On one of ``errors`` in the body, remove the folders on the way to ``folder`` (itself included) that did not
    exist on entry, deepest first and only while empty (another process may have written there meanwhile), then
    re-raise: a refused step leaves no empty ``runs/`` or dataset root behind."""
    folder = Path(folder)
    new = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    try:
        yield
    except errors:
        for path in new:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def current_umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (os.umask can only set and return)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _as_if_opened(path: str | os.PathLike, folder: bool) -> None:
    """Give a temporary (mkstemp: 0600, mkdtemp: 0700) the mode a plain ``open()`` / ``mkdir`` would have given
    it under the user's umask, so what is renamed into place is as shareable as any other file they write."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def _temporary_beside(target: Path, make):
    """``make(prefix, dir)`` (mkdtemp / mkstemp) beside ``target``, with its folder created first."""
    make_dirs(target.parent, "output folder")
    try:
        return make(prefix=f".{target.name}.tmp-", dir=target.parent)
    except OSError as exc:
        raise UserError(f"cannot write in {target.parent}: {exc.strerror or exc}",
                        fix="choose a folder you can write") from None


def refuse_existing(target: str | os.PathLike, overwrite: bool = False) -> None:
    """An existing ``target`` without ``overwrite`` is a UserError (a preparer checks before its long work too)."""
    if Path(target).exists() and not overwrite:
        raise UserError(f"{target} already exists", fix="remove it or pass --overwrite")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike):
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` block: processes that build
    the same cache entry at once (a leaderboard's workers on first use) take turns instead of racing."""
    import fcntl

    path = Path(path)
    make_dirs(path.parent, "cache folder")
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    On any exception the temporary folder is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    refuse_existing(target, overwrite)
    tmp = Path(_temporary_beside(target, tempfile.mkdtemp))  # creates target's folder first
    try:
        _as_if_opened(tmp, folder=True)
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:  # a file (or link) stood where the folder goes: rmtree would leave it behind
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temporary file beside ``target``; it is renamed onto ``target`` only if the block succeeds."""
    target = Path(target)
    fd, tmp = _temporary_beside(target, tempfile.mkstemp)
    os.close(fd)
    try:
        _as_if_opened(tmp, folder=False)
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
