"""Files and directories that are replaced as a whole or not at all.

Every PanoVLM writer of a checkpoint directory (model, processor, adapter, Trainer `checkpoint-N`, converter output,
remote-code export) and of a report file goes through this module, which lives in the lowest layer so that every
layer can use it. The rules:

* A directory is written into a sibling staging directory, every file and the directory are fsynced, and then the
  staging directory takes the target's place in one step: on Linux with `renameat2(RENAME_EXCHANGE)` (macOS:
  `renamex_np(RENAME_SWAP)`), so the target path always holds either the complete old or the complete new
  directory, even if the process is killed. Elsewhere the swap is two renames, with a window in which the path is
  briefly missing (the old directory is then in `.<name>.old-*` beside it).
* Files of the old directory that the new one does not write are carried over (hard links, so nothing is copied),
  unless `replaces(name)` says the new writer owns that name (stale weight shards of an earlier save, say).
* After an exception, the staging directory is removed and the target is untouched. Concurrent writers each have
  their own staging directory: the last swap wins, and the result is always one complete directory.
* Files are written with mode 0644 and directories 0755, whatever the process umask or the temporary-file defaults
  (0600 / 0700), so a shared team can read checkpoints.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path


FILE_MODE = 0o644
DIRECTORY_MODE = 0o755
STAGING_MARK = ".staging-"


@contextmanager
def atomic_directory(path: str | os.PathLike, replaces: Callable[[str], bool] = lambda name: False) -> Iterator[Path]:
    """Yield an empty staging directory; on normal exit it replaces `path` as a whole (see the module docstring).

    Args:
        path: the directory to write; its parent is created if needed.
        replaces: for a relative file name of the existing directory that the new one does not contain, whether the
            new writer owns it (it is then dropped rather than carried over).
    """
    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target)
    staging = target.parent / f".{target.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=DIRECTORY_MODE)
    try:
        yield staging
        if target.is_dir():
            _carry_over(target, staging, replaces)
        _finish(staging)
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the old directory


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a fsynced temporary file renamed into place; mode 0644."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a fsynced temporary file renamed into place; mode 0644."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(target)
    partial = target.parent / f".{target.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, FILE_MODE)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _fsync_directory(target.parent)
    return target


def is_staging_name(name: str) -> bool:
    """Whether a file or directory name is one of this module's staging names (to skip when listing a folder)."""
    return name.startswith(".") and STAGING_MARK in name


def remove_directory_atomically(path: str | os.PathLike) -> None:
    """Delete the directory `path` so that it is never seen half-deleted: it is renamed to a staging name first (one
    atomic step), then removed. A kill during the removal leaves only the staging name, which the next
    `remove_abandoned_staging` of its folder (or the next write to `path`) clears."""
    path = Path(path)
    doomed = path.parent / f".{path.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def remove_abandoned_staging(folder: str | os.PathLike) -> None:
    """Remove every staging entry in `folder` left by a process that no longer runs (killed mid-write or mid-delete)."""
    for candidate in Path(folder).iterdir():
        if is_staging_name(candidate.name):
            _remove_if_abandoned(candidate, candidate.name.split(STAGING_MARK, 1)[1])


def _remove_if_abandoned(candidate: Path, owner: str) -> None:
    pid = owner.split("-", 1)[0]
    if pid.isdigit() and not _process_exists(int(pid)):
        shutil.rmtree(candidate, ignore_errors=True) if candidate.is_dir() else candidate.unlink(missing_ok=True)


def _remove_abandoned_staging(target: Path) -> None:
    """Remove staging directories of `target` left by processes that no longer run (killed mid-write)."""
    prefix = f".{target.name}{STAGING_MARK}"
    for candidate in target.parent.glob(f"{glob_escape(prefix)}*"):
        _remove_if_abandoned(candidate, candidate.name[len(prefix) :])


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _carry_over(old: Path, new: Path, replaces: Callable[[str], bool]) -> None:
    for source in sorted(old.rglob("*")):
        relative = source.relative_to(old)
        if is_staging_name(source.name) or (new / relative).exists():
            continue
        if source.is_dir():
            (new / relative).mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        elif not replaces(relative.as_posix()):
            (new / relative).parent.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
            try:
                os.link(source, new / relative)
            except OSError:  # filesystems without hard links
                shutil.copy2(source, new / relative)


def _finish(directory: Path) -> None:
    """Set modes and fsync every file and directory below `directory`, deepest first."""
    for root, directories, files in os.walk(directory, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            os.chmod(path, FILE_MODE)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        for name in directories:
            os.chmod(os.path.join(root, name), DIRECTORY_MODE)
        _fsync_directory(Path(root))
    os.chmod(directory, DIRECTORY_MODE)


def _swap_into_place(staging: Path, target: Path) -> None:
    try:
        os.rename(staging, target)  # atomic when nothing is at `target`
    except OSError as error:
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise
        if not target.is_dir():
            raise NotADirectoryError(f"{target} exists and is not a directory; it cannot hold a checkpoint") from error
        _exchange(staging, target)
    _fsync_directory(target.parent)


def _exchange(first: Path, second: Path) -> None:
    """Swap two existing paths in one step where the OS can; else in two renames."""
    if _native_exchange(first, second):
        return
    old = second.parent / f".{second.name}.old-{uuid.uuid4().hex[:12]}"
    os.rename(second, old)
    os.rename(first, second)
    os.rename(old, first)  # the caller removes `first`, which now holds the old directory


def _native_exchange(first: Path, second: Path) -> bool:
    libc = _libc()
    if libc is None:
        return False
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2
        result = libc.renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        rename_swap = 2
        result = libc.renamex_np(os.fsencode(first), os.fsencode(second), rename_swap)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the filesystem cannot exchange: fall back
        return False
    raise OSError(code, os.strerror(code), str(second))


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


__all__ = [
    "atomic_directory",
    "is_staging_name",
    "remove_abandoned_staging",
    "remove_directory_atomically",
    "write_bytes_atomically",
    "write_text_atomically",
]
