"""A run's output files: listing them (with the step that produced each), resolving a download request,
confined to the output directory, and streaming all of them as one archive (tar.gz or zip).

Steps write `$ADE_OUTPUT_DIR` freely, symlinks included, and may still be running, so everything here
treats the directory as hostile: an output is a regular file reached from the output directory through
real directories only. Symlinks are neither listed nor served (whatever they point at); a requested path
is checked as text (before and after one more percent-decoding) and then opened component by component
with O_NOFOLLOW from a directory fd (`ade.core.safe_open`), and served from that open fd — no
check-then-open race for a step to win. Archives read every file the same way, one at a time, in bounded
pieces.

Which step produced an output is kept in the run record (`StepState.outputs`, written by
`ade.execution.outputs` through `transitions.finish_step`); `owners_of` reads it back.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from io import FileIO
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from ade.core.errors import AdeError, Invalid, not_found
from ade.core.models import StepState
from ade.core.safe_open import open_directory, open_no_follow, split_below
from ade.core.views import OutputFile

_CHUNK = 1024 * 1024
MAX_OUTPUT_DEPTH = 64  # directory levels below the output directory that are listed, counted and served
# A file being copied into the outputs (`ade.execution.outputs`) is written under this name first, then
# renamed: such names are never listed, counted, served or archived.
PARTIAL_PREFIX = ".ade-partial-"
ARCHIVE_PIECE_BYTES = 256 * 1024  # an archive is sent in pieces of about this size
_ARCHIVE_LEVEL = 6  # deflate level of both archive formats
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


def owners_of(states: Sequence[StepState]) -> dict[str, str]:
    """Which step produced each output path, from the run record's step states.

    Each step lists the files it added (`StepState.outputs`); when two list the same path, the last writer
    wins: the one whose entry names the other as `replaced` (when that does not settle it, the step that
    completed last). A path no step lists has no known producer.
    """
    claims: dict[str, list[tuple[str, str | None]]] = {}
    ordered = sorted(
        (state for state in states if state.outputs),
        key=lambda state: state.completed_at.timestamp() if state.completed_at else float("inf"),
    )
    for state in ordered:
        for output in state.outputs:
            claims.setdefault(output.path, []).append((state.name, output.replaced))
    owners: dict[str, str] = {}
    for path, claimants in claims.items():
        replaced = {previous for _, previous in claimants if previous is not None}
        last = [name for name, _ in claimants if name not in replaced]
        owners[path] = last[-1] if last else claimants[-1][0]
    return owners


def list_outputs(
    output_dir: Path, *, root: Path | None = None, owners: Mapping[str, str] | None = None
) -> list[OutputFile]:
    """Every regular file under `output_dir`, recursively, sorted by path; [] when there is no directory.
    Each carries its `step` from `owners` (path → step, see `owners_of`), None for a path not in it.

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
                OutputFile(
                    path=relative,
                    size=size,
                    content_type=content_type_of(relative),
                    sha256=digest,
                    step=(owners or {}).get(relative),
                )
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
    return regular_files(output_dir, root=root)


def regular_files(
    directory: Path, *, root: Path | None = None, start: Sequence[str] = ()
) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """(relative path, fd of its directory, its name, its lstat) of each regular file under `directory`
    (or under its subdirectory `start`; paths stay relative to `directory`), at most MAX_OUTPUT_DEPTH
    levels down, skipping names that are not UTF-8 and PARTIAL_PREFIX files.

    Directories are reached from the trusted root one `openat(O_NOFOLLOW | O_DIRECTORY)` at a time, so a
    directory swapped for a symlink while this walks is never entered; at most two directory fds are open
    at once, however wide or deep the tree. The directory fd is valid until the next item is asked for.
    """
    base, below = _trusted(directory, root)
    pending: list[list[str]] = [list(start)]
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
                    if not _is_utf8(entry.name) or entry.name.startswith(PARTIAL_PREFIX):
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


# Archives ---------------------------------------------------------------------------------------------

ArchiveFormat = Literal["tar.gz", "zip"]
ARCHIVE_MEDIA_TYPES: dict[ArchiveFormat, str] = {"tar.gz": "application/gzip", "zip": "application/zip"}


class _Pieces:
    """Where an archive writer puts its bytes: collected until the generator hands them on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes, /) -> int:
        if data:
            self._parts.append(bytes(data))
            self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.size = 0
        return data


def _archived_files(
    output_dir: Path, root: Path | None, include: Callable[[str], bool] | None
) -> Iterator[tuple[str, int, os.stat_result]]:
    """(relative path, an open fd, its fstat) of each output to archive; the fd is closed when the next
    item is asked for (or the walk is abandoned)."""
    for relative, dir_fd, name, _ in regular_files(output_dir, root=root):
        if include is not None and not include(relative):
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            continue  # gone, or swapped for a link or a FIFO since the scan
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                yield relative, fd, info
        finally:
            os.close(fd)


def _file_pieces(fd: int, size: int) -> Iterator[bytes]:
    """Exactly `size` bytes of an open file, in pieces: a file that shrank since it was measured is padded
    with zeros, one that grew is cut (an archive entry's size is declared before its bytes)."""
    remaining = size
    while remaining > 0:
        try:
            chunk = os.read(fd, min(remaining, ARCHIVE_PIECE_BYTES))
        except OSError:
            chunk = b""
        if not chunk:
            chunk = bytes(min(remaining, ARCHIVE_PIECE_BYTES))
        remaining -= len(chunk)
        yield chunk


def tar_gz_pieces(
    output_dir: Path, *, root: Path | None = None, include: Callable[[str], bool] | None = None
) -> Generator[bytes, None, None]:
    """The outputs (those `include` accepts) as a gzip-compressed tar (POSIX pax), generated piece by piece:
    memory stays at about ARCHIVE_PIECE_BYTES whatever the outputs' size. Entries are regular files, mode
    0644, with their modification time; files are opened without following links, like a download."""
    compressor = zlib.compressobj(_ARCHIVE_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip container
    pending = bytearray()
    for relative, fd, info in _archived_files(output_dir, root, include):
        entry = tarfile.TarInfo(relative)
        entry.size, entry.mode, entry.type = info.st_size, 0o644, tarfile.REGTYPE
        entry.mtime = max(0, int(info.st_mtime))
        pending += compressor.compress(entry.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        for chunk in _file_pieces(fd, info.st_size):
            pending += compressor.compress(chunk)
            if len(pending) >= ARCHIVE_PIECE_BYTES:
                yield bytes(pending)
                pending.clear()
        pending += compressor.compress(bytes(-info.st_size % tarfile.BLOCKSIZE))
    end = bytes(2 * tarfile.BLOCKSIZE)  # two zero blocks, padded to a whole record as tarfile does
    end += bytes(-len(end) % tarfile.RECORDSIZE)
    pending += compressor.compress(end) + compressor.flush()
    yield bytes(pending)


def zip_pieces(
    output_dir: Path, *, root: Path | None = None, include: Callable[[str], bool] | None = None
) -> Generator[bytes, None, None]:
    """The outputs (those `include` accepts) as a zip (deflate; ZIP64 where a file needs it), generated
    piece by piece without seeking: each entry's sizes and CRC follow its data (a data descriptor), and the
    central directory comes last. Memory: about ARCHIVE_PIECE_BYTES plus one directory entry per file."""
    pieces = _Pieces()
    deflate = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(pieces, "w", compression=deflate, compresslevel=_ARCHIVE_LEVEL) as archive:
        for relative, fd, info in _archived_files(output_dir, root, include):
            entry = zipfile.ZipInfo(relative, date_time=_zip_time(info.st_mtime))
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = (stat.S_IFREG | 0o644) << 16
            entry.file_size = info.st_size  # lets zipfile choose ZIP64 up front
            with archive.open(entry, "w", force_zip64=info.st_size >= zipfile.ZIP64_LIMIT) as member:
                for chunk in _file_pieces(fd, info.st_size):
                    member.write(chunk)
                    if pieces.size >= ARCHIVE_PIECE_BYTES:
                        yield pieces.take()
            if pieces.size >= ARCHIVE_PIECE_BYTES:
                yield pieces.take()
    yield pieces.take()


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """A zip entry's local time (zip cannot say anything before 1980 or after 2107)."""
    moment = time.gmtime(min(max(mtime, 315532800.0), 4354819199.0))
    return moment[0], moment[1], moment[2], moment[3], moment[4], moment[5]
