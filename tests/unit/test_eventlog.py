"""The NDJSON log: seek without scanning, O(1) tail, torn tails never read and truncated on reopen."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ade.events import eventlog
from ade.events.envelope import Event, encode_event


def write_log(path: Path, count: int, *, message_bytes: int = 40) -> list[bytes]:
    now = datetime.now(UTC)
    lines = [
        encode_event(
            Event(
                type="console.line",
                sequence=n,
                event_id=f"evt_{n}",
                created_at=now,
                source="worker",
                workspace_id="ws_x",
                payload={"message": "m" * (message_bytes + n % 17)},
            )
        )
        for n in range(1, count + 1)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


class ReadCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes_read = 0
        real = os.pread

        def counting(fd: int, size: int, offset: int) -> bytes:
            data = real(fd, size, offset)
            self.bytes_read += len(data)
            return data

        monkeypatch.setattr(eventlog.os, "pread", counting)


@pytest.mark.parametrize("after", [0, 1, 2, 499, 500, 777, 999, 1000, 1001, 5000])
def test_offset_after_finds_the_first_later_sequence(tmp_path: Path, after: int) -> None:
    path = tmp_path / "events.ndjson"
    lines = write_log(path, 1000)
    page = eventlog.read_lines(path, eventlog.offset_after(path, after), 3)
    assert page.lines == lines[after : after + 3]


def test_seek_reads_a_tiny_fraction_of_a_large_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.ndjson"
    write_log(path, 100_000)
    size = path.stat().st_size
    counter = ReadCounter(monkeypatch)
    offset = eventlog.offset_after(path, 73_210)
    assert counter.bytes_read < size / 50, "seeking must not read the log from its start"
    assert (
        eventlog.read_lines(path, offset, 1).lines[0].startswith(b'{"type":"console.line","sequence":73211,')
    )


def test_tail_reads_only_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.ndjson"
    write_log(path, 100_000)
    counter = ReadCounter(monkeypatch)
    tail = eventlog.tail(path)
    assert tail is not None and tail.sequence == 100_000 and tail.type == "console.line"
    assert counter.bytes_read <= 2 * 64 * 1024


def test_torn_tail_is_invisible_and_truncated_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    lines = write_log(path, 10)
    with path.open("ab") as handle:
        handle.write(b'{"type":"console.line","sequence":11,"ev')  # a writer killed mid-line
    assert eventlog.tail(path).sequence == 10  # type: ignore[union-attr]
    assert eventlog.read_lines(path, 0, 100).lines == lines
    writer = eventlog.LogWriter(path)
    try:
        assert writer.last_sequence == 10
        assert path.read_bytes().endswith(lines[-1] + b"\n")
    finally:
        writer.close()


def test_read_lines_pages_through_the_log(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    lines = write_log(path, 2500, message_bytes=400)
    got: list[bytes] = []
    offset = 0
    while page := eventlog.read_lines(path, offset, 1000).lines:
        got += page
        offset += sum(len(line) + 1 for line in page)
    assert got == lines


def test_a_noted_page_end_is_where_the_search_would_land(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    write_log(path, 2500, message_bytes=40)
    page = eventlog.read_lines(path, eventlog.offset_after(path, 700), 1000)
    searched = eventlog.offset_after(path, 1700)
    eventlog.note_page_end(path, 1700, page.next_offset)
    assert eventlog.offset_after(path, 1700) == page.next_offset == searched


def test_missing_log_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "none.ndjson"
    assert eventlog.tail(path) is None
    assert eventlog.offset_after(path, 5) == 0
    assert eventlog.read_lines(path, 0, 10).lines == []
