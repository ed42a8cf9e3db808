"""Copying a directory tree between two directory fds without following a single link (README "Caches").

A cache is saved from a run's work directory, which a step wrote and may still be writing, and restored
into it. Both ways the tree is walked with `openat(O_NOFOLLOW)` from directory fds, so a symlink a step
planted — at the top, on the way, or swapped in while the copy runs — is never followed out of the tree:

- a regular file is copied (its bytes, its permission bits without setuid/setgid/sticky, its times);
- a directory is recreated and entered (at most MAX_DEPTH levels: deeper is an error, never a silent cut);
- a symlink is copied as a symlink (its target text, never resolved);
- anything else (FIFOs, sockets, devices) is left out, as is an entry that vanishes or changes kind
  while it is read.

On the destination side an entry in the way is replaced: a file or a link where a directory goes is
removed, a link where a file goes is removed (never written through); a real directory is merged into.
Every byte copied counts against a `Tally`: past its limit the copy stops (`OverLimit`) before writing more.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from dataclasses import dataclass, field

MAX_DEPTH = 64  # directory levels below a cache directory
_CHUNK = 8 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO)  # vanished, or now a link / not a dir
_MODE_BITS = 0o777  # setuid, setgid and sticky bits are dropped


class CopyError(Exception):
    """The copy stopped; what was written so far is incomplete (the caller discards or reports it)."""


class OverLimit(CopyError):
    pass


class Stopped(CopyError):
    pass


@dataclass(slots=True)
class Tally:
    """What a copy wrote so far, and what bounds it."""

    limit: int | None = None  # bytes (regular files' contents plus links' target texts)
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop at the next entry or chunk
    owner: int | None = None  # chown everything written to this uid/gid (a root worker restoring for steps)
    bytes: int = 0
    files: int = 0

    def check(self, more: int = 0) -> None:
        if self.stop.is_set():
            raise Stopped("stopped")
        if self.limit is not None and self.bytes + more > self.limit:
            raise OverLimit(f"more than {self.limit} bytes")


def copy_tree(src: int, dst: int, tally: Tally, depth: int = 0) -> None:
    """Copy the entries of directory fd `src` into directory fd `dst` (neither closed here)."""
    if depth > MAX_DEPTH:
        raise CopyError(f"directories nested deeper than {MAX_DEPTH} levels")
    with os.scandir(src) as entries:
        names = [(entry.name, entry) for entry in entries]
    for name, entry in names:
        tally.check()
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            _copy_file(src, dst, name, tally)
        elif stat.S_ISDIR(info.st_mode):
            _copy_dir(src, dst, name, tally, depth)
        elif stat.S_ISLNK(info.st_mode):
            _copy_link(src, dst, name, info, tally)


def finish_dir(fd: int, info: os.stat_result, tally: Tally) -> None:
    """A copied directory's mode (kept writable by its owner), owner and times, once its entries are in."""
    os.fchmod(fd, (info.st_mode & _MODE_BITS) | 0o700)
    if tally.owner is not None:
        os.fchown(fd, tally.owner, tally.owner)
    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))


def open_or_make_dir(parent: int, name: str, owner: int | None = None) -> int:
    """A directory fd of `parent/name`: the real directory there, or a new one (mode 0700, chowned to
    `owner`) replacing whatever else is there (a file, a link — removed, never followed)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        remove_entry(parent, name)
    os.mkdir(name, 0o700, dir_fd=parent)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    if owner is not None:
        os.fchown(fd, owner, owner)
    return fd


def remove_entry(parent: int, name: str) -> None:
    """Remove `parent/name` whatever it is (a directory recursively, a link itself), if it exists."""
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=parent)  # fd-based: never follows a link inside


def _copy_dir(src: int, dst: int, name: str, tally: Tally, depth: int) -> None:
    try:
        child_src = os.open(name, _DIR_FLAGS, dir_fd=src)
    except OSError as exc:
        if exc.errno in _GONE:
            return
        raise
    try:
        info = os.fstat(child_src)
        child_dst = open_or_make_dir(dst, name)
        try:
            copy_tree(child_src, child_dst, tally, depth + 1)
            finish_dir(child_dst, info, tally)
        finally:
            os.close(child_dst)
    finally:
        os.close(child_src)


def _copy_link(src: int, dst: int, name: str, info: os.stat_result, tally: Tally) -> None:
    try:
        target = os.readlink(name, dir_fd=src)
    except OSError as exc:
        if exc.errno in (*_GONE, errno.EINVAL):  # EINVAL: no longer a link
            return
        raise
    size = len(os.fsencode(target))
    tally.check(size)
    remove_entry(dst, name)
    os.symlink(target, name, dir_fd=dst)
    if tally.owner is not None:
        os.chown(name, tally.owner, tally.owner, dir_fd=dst, follow_symlinks=False)
    os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
    tally.bytes += size
    tally.files += 1


def _copy_file(src: int, dst: int, name: str, tally: Tally) -> None:
    try:
        source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src)
    except OSError as exc:
        if exc.errno in _GONE:
            return
        raise
    try:
        info = os.fstat(source)
        if not stat.S_ISREG(info.st_mode):
            return
        tally.check(info.st_size)  # a huge (or sparse) file is refused before a byte is copied
        remove_entry(dst, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(name, flags, 0o600, dir_fd=dst)
        try:
            _copy_bytes(source, target, tally)
            if tally.owner is not None:
                os.fchown(target, tally.owner, tally.owner)
            os.fchmod(target, info.st_mode & _MODE_BITS)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        finally:
            os.close(target)
    finally:
        os.close(source)
    tally.files += 1


def _copy_bytes(source: int, target: int, tally: Tally) -> None:
    """Everything `source` holds (it may have grown since it was measured), counted as it goes."""
    in_kernel = True
    while True:
        tally.check()
        room = _CHUNK if tally.limit is None else min(_CHUNK, tally.limit - tally.bytes + 1)
        if in_kernel:
            try:
                copied = os.copy_file_range(source, target, room)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                in_kernel = False
                continue
        else:
            chunk = os.read(source, room)
            copied = len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(target, view) :]
        if copied == 0:
            return
        tally.check(copied)
        tally.bytes += copied
