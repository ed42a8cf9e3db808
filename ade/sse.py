"""Server-sent events for one stream: replay from the log, then live from the hub, exactly once.

Order of work (DESIGN.md invariant 3): subscribe first; replay `sequence > after` from the log; then
forward live events, dropping `sequence <= last sent` and reading the log whenever a live event jumps
ahead (`first > last + 1`), the hub asks for a resync, or nothing arrived for a keepalive interval. The
log is always the source of truth, so Redis reconnects, slow readers and restarts all heal the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ade import eventlog
from ade.events import HEAD_DECODER, StreamRef
from ade.hub import Hub

KEEPALIVE_FRAME = b": keepalive\n\n"
END_FRAME = b"event: end\ndata: {}\n\n"
_UNCONFIRMED_POLL_S = 0.5


def event_frame(sequence: int, data: bytes) -> bytes:
    return b"id: %d\nevent: ade.event\ndata: %s\n\n" % (sequence, data)


@dataclass(slots=True)
class _Cursor:
    """Where a reader stands: the last sequence sent and, while reading the log in order, the offset."""

    stream: StreamRef
    last_sequence: int
    offset: int | None = None
    ended: bool = False

    def read_log(self, page_events: int) -> list[bytes]:
        """The next page of frames from the log (empty when the reader is up to date)."""
        path = self.stream.log_path
        if self.offset is None:
            self.offset = eventlog.offset_after(path, self.last_sequence)
        page = eventlog.read_lines(path, self.offset, page_events)
        self.offset = page.next_offset
        frames: list[bytes] = []
        for line in page.lines:
            head = HEAD_DECODER.decode(line)
            if head.sequence <= self.last_sequence:
                continue
            frames.append(event_frame(head.sequence, line))
            self.last_sequence = head.sequence
            if head.type == self.stream.terminal_type:
                self.ended = True
                break
        return frames

    def forwarded(self, sequence: int, data: bytes) -> None:
        """A live event went out: it is the log's next line, so the offset moves past it."""
        self.last_sequence = sequence
        if self.offset is not None:
            self.offset += len(data) + 1


async def stream_frames(
    hub: Hub,
    stream: StreamRef,
    after_sequence: int,
    *,
    keepalive_s: float,
    retry_ms: int,
    page_events: int,
) -> AsyncIterator[bytes]:
    """SSE bytes for `stream` after `after_sequence`, ending with `event: end` after the terminal event."""
    yield b"retry: %d\n\n" % retry_ms
    async with hub.subscribe(stream.channel) as sub:
        cursor = _Cursor(stream, after_sequence)
        tail = eventlog.tail(stream.log_path)
        if tail is not None and tail.type == stream.terminal_type and tail.sequence <= after_sequence:
            yield END_FRAME
            return
        need_log = True
        while True:
            if need_log:  # catch up from the log until it has nothing newer
                while frames := cursor.read_log(page_events):
                    yield b"".join(frames)
                    if cursor.ended:
                        yield END_FRAME
                        return
                need_log = False
            # Live: forward in-order events from the hub; any doubt sends us back to the log.
            timeout_s = keepalive_s if sub.confirmed else min(keepalive_s, _UNCONFIRMED_POLL_S)
            if not await sub.wait(timeout_s):
                if sub.confirmed:
                    yield KEEPALIVE_FRAME
                need_log = True  # cheap insurance against a lost last message
                continue
            items = sub.drain()
            if sub.resync:
                sub.resync = False
                need_log = True
                continue
            frames = []
            for head, data in items:
                if head.sequence <= cursor.last_sequence:
                    continue
                if head.sequence > cursor.last_sequence + 1:
                    need_log = True  # a gap: the log has everything up to here
                    break
                frames.append(event_frame(head.sequence, data))
                cursor.forwarded(head.sequence, data)
                if head.type == stream.terminal_type:
                    cursor.ended = True
                    break
            if frames:
                yield b"".join(frames)
            if cursor.ended:
                yield END_FRAME
                return
