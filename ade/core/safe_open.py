"""Opening files below a trusted directory without following any link a step could have planted.

A step writes its run's directories (with the host executor, even the run's log); the API and the worker
must never be led elsewhere by a symlink there, and checking a path first and opening it afterwards is a
race a step can win. So every component below the trusted root is opened with `O_NOFOLLOW`, relative to
the directory fd of its parent (`openat`), and the final file is checked with `fstat` on the open fd: what
is read is what was checked.

Only the root is opened normally (it is the operator's: the data directory, or a directory below it that no
step can write). A symlink, a non-directory on the way, or a final file that is not a regular file (a FIFO,
a socket, a device, a directory) reads as missing: `FileNotFoundError`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK


def _refused(relative: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"{why}: {relative}")


def _parts(relative: str | Sequence[str]) -> list[str]:
    parts = relative.split("/") if isinstance(relative, str) else list(relative)
    parts = [part for part in parts if part not in ("", ".")]
    if any(part == ".." or "\x00" in part for part in parts):
        raise _refused("/".join(parts), "not a plain relative path")
    return parts


def open_directory(root: Path, relative: str | Sequence[str] = ()) -> int:
    """A directory fd of `root/relative`, every component below `root` a real directory (no link)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in _parts(relative):
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink, or a file used as a directory
                    raise _refused(part, "not a real directory") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_no_follow(
    root: Path, relative: str | Sequence[str], *, flags: int = _READ_FLAGS, mode: int = 0o644
) -> int:
    """An fd of the regular file `root/relative`, reached without following any link below `root`.

    `flags` are for the final component (default: read-only, non-blocking); `O_NOFOLLOW` and `O_CLOEXEC`
    are always added, so `O_CREAT` never creates through a planted link either. The caller closes the fd.
    """
    parts = _parts(relative)
    if not parts:
        raise _refused(str(root), "names no file")
    parent = open_directory(root, parts[:-1])
    try:
        try:
            fd = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):  # a symlink; a socket
                raise _refused("/".join(parts), "not a regular file") from None
            if exc.errno == errno.EISDIR:
                raise _refused("/".join(parts), "a directory") from None
            raise
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused("/".join(parts), "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def split_below(path: Path, levels: int) -> tuple[Path, list[str]]:
    """`path` as (the directory `levels` components up, the components below it)."""
    levels = max(1, min(levels, len(path.parts) - 1))
    return path.parents[levels - 1], list(path.parts[-levels:])
