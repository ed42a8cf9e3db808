"""A run's output files: listing them and resolving a download request, confined to the output directory.

Steps write `$ADE_OUTPUT_DIR` freely, symlinks included, so everything here treats the directory as hostile:
an output is a regular file reached from the output directory through real directories only. Symlinks
are neither listed nor served (whatever they point at), and a requested path is checked as text (before
and after one more percent-decoding) and then component by component on disk.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import stat
from pathlib import Path
from urllib.parse import unquote

from ade.core.errors import AdeError, Invalid, not_found
from ade.core.views import OutputFile

_CHUNK = 1024 * 1024
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


def list_outputs(output_dir: Path) -> list[OutputFile]:
    """Every regular file under `output_dir`, recursively, sorted by path; [] when there is no directory.

    Symlinks are skipped entirely, and symlinked directories never entered; so are names that are not
    UTF-8. Each file is read once to hash it (streamed in 1 MiB chunks): the cost is proportional to the
    total output size, so call this for a listing, not per request of one file. Files that vanish or
    change kind while being listed (the run may still be writing) are skipped.
    """
    if not _is_real_dir(output_dir):
        return []
    found: list[OutputFile] = []
    pending = [(output_dir, "")]
    while pending:
        directory, prefix = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            relative = f"{prefix}{entry.name}"
            if entry.is_symlink() or not _is_utf8(entry.name):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), f"{relative}/"))
            elif entry.is_file(follow_symlinks=False) and (hashed := _hash_regular_file(entry.path)):
                size, digest = hashed
                found.append(
                    OutputFile(
                        path=relative, size=size, content_type=content_type_of(relative), sha256=digest
                    )
                )
    found.sort(key=lambda output: output.path)
    return found


def _is_utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (surrogate-escaped): no URL or JSON can carry it."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _hash_regular_file(path: str) -> tuple[int, str] | None:
    """(size, sha256 hex) of a regular file, or None if it is gone or no longer a regular file.

    O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO after the directory scan is neither
    followed nor waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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


def resolve_output(output_dir: Path, requested: str) -> Path:
    """The output file a download request names, or an error; never a path outside `output_dir`.

    `Invalid` (invalid_path): empty, absolute, a `..` component, a backslash or NUL, before or after one
    more percent-decoding (so `%2e%2e/x` and `..%2fx` that survived the framework's decoding are caught).
    `not_found("output", …)`: missing, a directory, or not a regular file reached through real
    directories (a symlink, or a symlinked directory on the way, is treated as absent, as in the listing).
    `Invalid` (path_outside_outputs): the resolved real path is outside the real output directory
    (defence in depth against races with a still-running step).

    The file is looked up under the name as requested; decoding is only for the checks.
    """
    if not requested:
        raise Invalid("output path is empty", code="invalid_path")
    _check_text(requested, requested)
    _check_text(unquote(requested), requested)
    parts = [part for part in requested.split("/") if part not in ("", ".")]
    if not parts:
        raise Invalid(f"output path {requested[:200]!r} names no file", code="invalid_path")
    if not _is_real_dir(output_dir):
        raise not_found("output", requested)
    current = output_dir
    for index, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (OSError, ValueError):  # missing, a file used as a directory, a name too long
            raise not_found("output", requested) from None
        last = index == len(parts) - 1
        if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):  # symlinks fail both
            raise not_found("output", requested)
    root = os.path.realpath(output_dir)
    if os.path.commonpath([root, os.path.realpath(current)]) != root:
        raise Invalid(f"output path {requested[:200]!r} is outside the outputs", code="path_outside_outputs")
    return current


def _is_real_dir(path: Path) -> bool:
    """A directory that is not itself a symlink (a step could replace its output directory with one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


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
