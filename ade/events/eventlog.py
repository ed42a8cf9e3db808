"""The NDJSON event log of one stream: append, O(1) tail seed, O(log n) seek, pages.

Each line is one encoded event ending in `\\n`, sequences 1, 2, 3, … in file order. Only complete lines
count: a torn tail (a writer killed mid-write) is never read, and the next writer truncates it before
appending. Sequences are dense and ordered, so a binary search over byte offsets finds any sequence in
O(log n) line reads, and the last line gives the next sequence in O(1).

A step may plant links in its run's directory (with the host executor, even in place of the log), so every
reader and the appender open the log through `ade.core.safe_open`: no component below the data directory
is followed if it is a link, and a log that is not a regular file reads as missing.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ade.core import paths
from ade.core.errors import LogWriteFailed
from ade.core.safe_open import open_no_follow, split_below
from ade.events.envelope import HEAD_DECODER, EventHead

_CHUNK_BYTES = 64 * 1024
_PROBE_BYTES = 4096  # a binary-search probe reads about one line


def _below_data_dir(path: Path) -> tuple[Path, list[str]]:
    """A stream's log is `<data dir>/<runs|builds>/<id>/logs/events.ndjson`: the data directory is trusted,
    the four components below it are not. Any other path (a bare file in a test): its directory is."""
    shaped = (
        len(path.parts) > 4
        and path.name == paths.LOG_NAME
        and path.parent.name == "logs"
        and path.parents[2].name in ("runs", "builds")
    )
    return split_below(path, 4 if shaped else 1)


def open_for_reading(path: Path) -> int:
    """A read-only fd of the log; `FileNotFoundError` if it is missing, or a link or not a regular file, or
    a directory on its way is a link."""
    root, relative = _below_data_dir(path)
    return open_no_follow(root, relative)


@dataclass(slots=True)
class LinesPage:
    lines: list[bytes]  # complete lines, without their trailing newline
    next_offset: int  # where the line after the last one returned starts


def complete_size(fd: int) -> int:
    """Size of the log up to and including its last newline (a torn tail is excluded)."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - _CHUNK_BYTES)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _last_line(fd: int, end: int) -> bytes | None:
    """The complete line that ends at byte `end` (exclusive of its newline at end - 1)."""
    if end == 0:
        return None
    stop = end - 1
    parts: list[bytes] = []
    pos = stop
    while pos > 0:
        start = max(0, pos - _CHUNK_BYTES)
        chunk = os.pread(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            parts.append(chunk[newline + 1 :])
            break
        parts.append(chunk)
        pos = start
    return b"".join(reversed(parts))


def _tail_line(path: Path) -> bytes | None:
    """The last complete line, reading only the end of the file (None: no file, or no complete line)."""
    try:
        fd = open_for_reading(path)
    except FileNotFoundError:
        return None
    try:
        return _last_line(fd, complete_size(fd)) or None
    finally:
        os.close(fd)


def tail(path: Path) -> EventHead | None:
    """The head (sequence, type) of the last complete line, reading only the end of the file."""
    line = _tail_line(path)
    return HEAD_DECODER.decode(line) if line else None


class _EventIdOnly(msgspec.Struct):
    event_id: str


_EVENT_ID_DECODER = msgspec.json.Decoder(_EventIdOnly)


def tail_event_id(path: Path) -> str | None:
    """The `event_id` of the last complete line (reading only the end of the file), None if there is none."""
    line = _tail_line(path)
    return _EVENT_ID_DECODER.decode(line).event_id if line else None


def _line_at_or_after(fd: int, pos: int, size: int) -> tuple[int, bytes] | None:
    """The first complete line that starts at or after byte `pos`: (its start, its bytes)."""
    if pos > 0:
        # A line starts at `pos` only if the byte before it is a newline.
        scan = pos - 1
        while True:
            chunk = os.pread(fd, min(_PROBE_BYTES, size - scan), scan)
            if not chunk:
                return None
            newline = chunk.find(b"\n")
            if newline >= 0:
                pos = scan + newline + 1
                break
            scan += len(chunk)
    if pos >= size:
        return None
    parts: list[bytes] = []
    scan = pos
    while scan < size:
        chunk = os.pread(fd, min(_PROBE_BYTES, size - scan), scan)
        newline = chunk.find(b"\n")
        if newline >= 0:
            parts.append(chunk[:newline])
            return pos, b"".join(parts)
        parts.append(chunk)
        scan += len(chunk)
    return None


_PAGE_ENDS: OrderedDict[tuple[Path, int], int] = OrderedDict()  # (log, sequence): offset past its line
_PAGE_ENDS_KEPT = 1024


def note_page_end(path: Path, sequence: int, offset: int) -> None:
    """Remember where the line of `sequence` ends (a page just ended there): the next page, which starts
    after it, is found without a search. Safe to keep: a log's complete lines never move."""
    _PAGE_ENDS[(path, sequence)] = offset
    if len(_PAGE_ENDS) > _PAGE_ENDS_KEPT:
        _PAGE_ENDS.popitem(last=False)


def offset_after(path: Path, after_sequence: int) -> int:
    """Byte offset of the first line whose sequence is greater than `after_sequence`.

    Where a page ended (`note_page_end`), or a binary search over byte offsets: O(log n) single-line reads,
    never a scan from the start. Returns the end of the complete part of the file when no such line exists
    yet.
    """
    if after_sequence <= 0:
        return 0
    if (known := _PAGE_ENDS.get((path, after_sequence))) is not None:
        return known
    try:
        fd = open_for_reading(path)
    except FileNotFoundError:
        return 0
    try:
        size = complete_size(fd)
        if after_sequence <= 0:
            return 0
        lo, hi = 0, size
        while lo < hi:
            mid = (lo + hi) // 2
            found = _line_at_or_after(fd, mid, size)
            if found is None:
                hi = mid
                continue
            start, line = found
            if HEAD_DECODER.decode(line).sequence > after_sequence:
                hi = mid
            else:
                lo = start + len(line) + 1
        found = _line_at_or_after(fd, lo, size)
        return found[0] if found else size
    finally:
        os.close(fd)


def read_lines(path: Path, offset: int, limit: int) -> LinesPage:
    """Up to `limit` complete lines starting at byte `offset`."""
    try:
        fd = open_for_reading(path)
    except FileNotFoundError:
        return LinesPage([], offset)
    try:
        lines: list[bytes] = []
        pending = b""
        pos = offset
        while len(lines) < limit:
            chunk = os.pread(fd, _CHUNK_BYTES, pos)
            if not chunk:
                break
            pos += len(chunk)
            data = pending + chunk
            parts = data.split(b"\n")
            pending = parts.pop()
            lines.extend(parts)
        if len(lines) > limit:
            lines = lines[:limit]
        next_offset = offset + sum(len(line) + 1 for line in lines)
        return LinesPage(lines, next_offset)
    finally:
        os.close(fd)


class LogWriter:
    """The single appender of one stream's log (the dispatcher holds the stream's lease)."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self._fsync = fsync
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            root, relative = _below_data_dir(path)
            self._fd = open_no_follow(root, relative, flags=os.O_RDWR | os.O_CREAT | os.O_APPEND)
            complete = complete_size(self._fd)
            if complete != os.fstat(self._fd).st_size:
                os.ftruncate(self._fd, complete)  # drop a torn tail: it was never published
            line = _last_line(self._fd, complete)
        except OSError as exc:
            raise LogWriteFailed(f"cannot open event log {path}: {exc.strerror}") from exc
        self.last_sequence = HEAD_DECODER.decode(line).sequence if line else 0

    def append(self, data: bytes) -> None:
        """Write complete lines (each ending in a newline) in one go; raise LogWriteFailed on error, after
        cutting off whatever part of them did get written (the log only ever holds complete events)."""
        size_before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size_before)
            raise LogWriteFailed(f"cannot append to event log {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        os.close(self._fd)
