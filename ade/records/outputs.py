"""A run's output files: listing them and resolving a download request, confined to the output directory.

Steps write `$ADE_OUTPUT_DIR` freely, symlinks included, and may still be running, so everything here
treats the directory as hostile: an output is a regular file reached from the output directory through
real directories only. Symlinks are neither listed nor served (whatever they point at); a requested path
is checked as text (before and after one more percent-decoding) and then opened component by component
with O_NOFOLLOW from a directory fd (`ade.core.safe_open`), and served from that open fd — no
check-then-open race for a step to win.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import stat
from collections.abc import Iterator
from io import FileIO
from pathlib import Path
from urllib.parse import unquote

from ade.core.errors import AdeError, Invalid, not_found
from ade.core.safe_open import open_directory, open_no_follow, split_below
from ade.core.views import OutputFile

_CHUNK = 1024 * 1024
MAX_OUTPUT_DEPTH = 64  # directory levels below the output directory that are listed, counted and served
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)


class RangeNotSatisfiable(AdeError):
    """A well-formed `Range` that selects no byte of the file; the HTTP layer answers 416 with
    `Content-Range: bytes */<size>`."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(f"the requested range is not satisfiable: the file has {size} bytes")
        self.size = size
        self.headers = {"Content-Range": f"bytes */{size}"}


def content_type_of(path: str) -> str:
    return mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"


def list_outputs(output_dir: Path, *, root: Path | None = None) -> list[OutputFile]:
    """Every regular file under `output_dir`, recursively, sorted by path; [] when there is no directory.

    `root` is the trusted directory `output_dir` lies below (the data directory; default: its parent):
    every component from there down is opened without following links. Symlinks are skipped entirely,
    symlinked directories never entered, and so are names that are not UTF-8 and directories nested deeper
    than MAX_OUTPUT_DEPTH. Each file is read once to hash it (streamed in 1 MiB chunks): the cost is
    proportional to the total output size, so call this for a listing, not per request of one file. Files
    that vanish or change kind while being listed (the run may still be writing) are skipped.
    """
    found: list[OutputFile] = []
    for relative, dir_fd, name, _ in _regular_files(output_dir, root):
        if hashed := _hash_regular_file(dir_fd, name):
            size, digest = hashed
            found.append(
                OutputFile(path=relative, size=size, content_type=content_type_of(relative), sha256=digest)
            )
    found.sort(key=lambda output: output.path)
    return found


def outputs_size(output_dir: Path, *, root: Path | None = None) -> tuple[int, int]:
    """(bytes, files) of the regular files under `output_dir`, measured like the listing: links are
    neither followed nor counted. A file's apparent size counts (a sparse file is as large as it claims),
    and a file hard-linked twice counts twice."""
    total = count = 0
    for _, _, _, info in _regular_files(output_dir, root):
        total += info.st_size
        count += 1
    return total, count


def _trusted(output_dir: Path, root: Path | None) -> tuple[Path, list[str]]:
    if root is None:
        return split_below(output_dir, 1)
    return root, list(output_dir.relative_to(root).parts)


def _regular_files(output_dir: Path, root: Path | None) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """(relative path, fd of its directory, its name, its lstat) of each regular file under `output_dir`.

    Directories are reached from the trusted root one `openat(O_NOFOLLOW | O_DIRECTORY)` at a time, so a
    directory swapped for a symlink while this walks is never entered; at most two directory fds are open
    at once, however wide or deep the tree. The directory fd is valid until the next item is asked for.
    """
    base, below = _trusted(output_dir, root)
    pending: list[list[str]] = [[]]
    while pending:
        parts = pending.pop()
        try:
            dir_fd = open_directory(base, below + parts)
        except (OSError, ValueError):
            continue  # gone, or swapped for something that is not a real directory
        try:
            prefix = "".join(f"{part}/" for part in parts)
            with os.scandir(dir_fd) as entries:
                for entry in entries:
                    if not _is_utf8(entry.name):
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(info.st_mode):
                        if len(parts) < MAX_OUTPUT_DEPTH:
                            pending.append([*parts, entry.name])
                    elif stat.S_ISREG(info.st_mode):
                        yield f"{prefix}{entry.name}", dir_fd, entry.name, info
        finally:
            os.close(dir_fd)


def _is_utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (surrogate-escaped): no URL or JSON can carry it."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _hash_regular_file(dir_fd: int, name: str) -> tuple[int, str] | None:
    """(size, sha256 hex) of a regular file, or None if it is gone or no longer a regular file.

    O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO after the directory scan is neither
    followed nor waited on.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _check_text(path: str, requested: str) -> None:
    def invalid(reason: str) -> Invalid:
        return Invalid(f"output path {requested[:200]!r} {reason}", code="invalid_path")

    if "\x00" in path or "\\" in path:
        raise invalid("contains NUL or a backslash")
    if path.startswith("/"):
        raise invalid("is absolute")
    if ".." in path.split("/"):
        raise invalid("contains '..'")


def open_output(output_dir: Path, requested: str, *, root: Path | None = None) -> FileIO:
    """The output file a download request names, opened for reading; never a file outside `output_dir`.

    `Invalid` (invalid_path): empty, absolute, a `..` component, a backslash or NUL, before or after one
    more percent-decoding (so `%2e%2e/x` and `..%2fx` that survived the framework's decoding are caught).
    `not_found("output", …)`: missing, a directory, or not a regular file reached through real
    directories (a symlink, or a symlinked directory on the way, is treated as absent, as in the listing).

    Every component from `root` (the trusted directory `output_dir` lies below; default: its parent) down
    is opened with O_NOFOLLOW relative to its parent's fd, and the file is checked on the open fd: a step
    swapping the file for a symlink cannot win a race between a check and the open. Serve from the
    returned file (the caller closes it); its size is `os.fstat(file.fileno()).st_size`.

    The file is looked up under the name as requested; decoding is only for the checks.
    """
    if not requested:
        raise Invalid("output path is empty", code="invalid_path")
    _check_text(requested, requested)
    _check_text(unquote(requested), requested)
    parts = [part for part in requested.split("/") if part not in ("", ".")]
    if not parts:
        raise Invalid(f"output path {requested[:200]!r} names no file", code="invalid_path")
    if len(parts) > MAX_OUTPUT_DEPTH + 1:
        raise not_found("output", requested)
    base, below = _trusted(output_dir, root)
    try:
        fd = open_no_follow(base, below + parts)
    except (OSError, ValueError):  # missing, a link, a file used as a directory, a name too long
        raise not_found("output", requested) from None
    return os.fdopen(fd, "rb", buffering=0)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) of a single-range `Range` header, clipped to a file of `size` bytes.

    None (serve the whole file): no header, several ranges, another unit, or a malformed header (RFC 9110
    says to ignore a Range it does not understand). `RangeNotSatisfiable` (416): a well-formed range that
    selects no byte: its start is at or past the end, a zero-length suffix (`bytes=-0`), or any range of
    an empty file.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = int(last) if last else size - 1
        if last and end < start:
            return None  # `bytes=5-2` is invalid, not unsatisfiable
        if start >= size:
            raise RangeNotSatisfiable(size)
        return start, min(end, size - 1)
    if not last:
        return None  # `bytes=-`
    suffix = int(last)
    if suffix == 0 or size == 0:
        raise RangeNotSatisfiable(size)
    return max(0, size - suffix), size - 1
