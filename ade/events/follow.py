"""Server-sent events for one stream: replay from the log, then live from the hub, exactly once.

Order of work (DESIGN.md invariant 3): subscribe first; replay `sequence > after` from the log; then
forward live events, dropping `sequence <= last sent` and reading the log whenever a live event jumps
ahead (`first > last + 1`), the hub asks for a resync, or nothing arrived for a keepalive interval. The
log is always the source of truth, so Redis reconnects, slow readers and restarts all heal the same way.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import anyio.lowlevel

from ade.events import eventlog
from ade.events.envelope import HEAD_DECODER, StreamRef
from ade.events.hub import Hub, Live, Subscription, event_frame

KEEPALIVE_FRAME = b": keepalive\n\n"
END_FRAME = b"event: end\ndata: {}\n\n"
_UNCONFIRMED_POLL_S = 0.5
_RECORD_GRACE_POLLS = 20  # x 50 ms


LogEvent = tuple[int, bytes]  # (sequence, the event's line)


@dataclass(slots=True)
class Batch:
    """Events in order: `sequences[i]` is the sequence of `lines[i]`; `frames`, their SSE frames when the
    hub built them already (shared by every reader of a live event). Empty: an idle interval passed."""

    sequences: Sequence[int]
    lines: list[bytes]
    frames: list[bytes] | None = None

    def __iter__(self) -> Iterator[LogEvent]:
        return zip(self.sequences, self.lines, strict=True)

    def __len__(self) -> int:
        return len(self.lines)

    def sse(self) -> bytes:
        if self.frames is not None:
            return b"".join(self.frames)
        return b"".join([event_frame(sequence, line) for sequence, line in self])


class Stop:
    """Tells a follower to end now (the key behind its stream was revoked, say): `request` wakes it, and
    it ends without `event: end`. `close` runs once the follower is gone (the watch forgets it)."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.requested = False
        self._wakes: list[Callable[[], None]] = []
        self._on_close = on_close

    def attach(self, wake: Callable[[], None]) -> None:
        self._wakes.append(wake)

    def request(self) -> None:
        self.requested = True
        for wake in self._wakes:
            wake()

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


@dataclass(slots=True)
class _Cursor:
    """Where a reader stands: the last sequence sent, and where it is in the log — `offset`, just past the
    line of sequence `offset_sequence` (None: not known; the next read finds it)."""

    stream: StreamRef
    last_sequence: int
    offset: int | None = None
    offset_sequence: int | None = None
    ended: bool = False
    at_end: bool = False  # the last read reached the end of the log (a page shorter than asked for)
    wrote_directly: bool = False  # live frames went out from the hub's flush during the last wait

    def read_log(self, page_events: int) -> Batch:
        """The next page of events from the log (empty when the reader is up to date).

        A page that continues the reader's sequence densely — the writer's guarantee, checked on its first
        and last lines — is taken without decoding the lines between (replay speed); anything else is
        read line by line."""
        path = self.stream.log_path
        if self.offset is None:
            self.offset = eventlog.offset_after(path, self.last_sequence)
            self.offset_sequence = None
        page = eventlog.read_lines(path, self.offset, page_events)
        self.offset = page.next_offset
        lines = page.lines
        self.at_end = len(lines) < page_events
        if not lines:
            return Batch((), [])
        first, last = HEAD_DECODER.decode(lines[0]), HEAD_DECODER.decode(lines[-1])
        self.offset_sequence = last.sequence
        if first.sequence == self.last_sequence + 1 and last.sequence == first.sequence + len(lines) - 1:
            self.last_sequence = last.sequence
            self.ended = last.type == self.stream.terminal_type  # only ever the log's last line
            return Batch(range(first.sequence, last.sequence + 1), lines)
        sequences: list[int] = []
        kept: list[bytes] = []
        for line in lines:
            head = HEAD_DECODER.decode(line)
            if head.sequence <= self.last_sequence:
                continue
            sequences.append(head.sequence)
            kept.append(line)
            self.last_sequence = head.sequence
            if head.type == self.stream.terminal_type:
                self.ended = True
                break
        return Batch(sequences, kept)

    def take_live(self, live: Live) -> Batch:
        """Live events (consecutive, the first right after `last_sequence`) go out. If they continue the
        log from the offset, the offset moves past them; else (the reader started past the log's end, say)
        where it is in the log is no longer known."""
        first, last = live.heads[0], live.heads[-1]
        if self.offset is not None and self.offset_sequence == first.sequence - 1:
            self.offset += sum(map(len, live.lines)) + len(live.lines)
            self.offset_sequence = last.sequence
        else:
            self.offset = None
        self.last_sequence = last.sequence
        self.ended = last.type == self.stream.terminal_type  # only ever a stream's last event
        return Batch(range(first.sequence, last.sequence + 1), live.lines, live.frames)


async def follow(
    hub: Hub,
    stream: StreamRef,
    after_sequence: int,
    *,
    idle_s: float,
    page_events: int,
    ended: Callable[[], Awaitable[bool]] | None = None,
    stop: Stop | None = None,
    direct: Callable[[bytes], bool] | None = None,
) -> AsyncIterator[Batch]:
    """The stream's events after `after_sequence`, in order, each exactly once, in batches; an empty batch
    after every idle interval (for keepalives). Ends after the stream's terminal event — or, checked on
    idle intervals, when `ended()` says its record ended although the log could not record it (a disk
    fault: the log then never gets a terminal event, and nothing pretends it did).

    `direct` (SSE): writes live frames at once if it can (False: it wrote nothing). While the follower waits
    for the hub, the hub's flush calls `write_live` instead of waking it, so a live stream's frames go out
    from the flush itself, with no task switch, generator or timer per subscriber and write; anything else
    (a gap, a resync, the terminal event, a client that does not keep up) wakes the follower as before."""
    try:
        async with hub.subscribe(stream.channel) as sub:
            if stop is not None:
                stop.attach(sub.wake)
            cursor = _Cursor(stream, after_sequence)

            def write_live(sub: Subscription) -> bool:
                if sub.resync or hub.draining or (stop is not None and stop.requested) or direct is None:
                    return False
                live = sub.peek(cursor.last_sequence)
                if live is None or (live.heads and live.heads[-1].type == stream.terminal_type):
                    return False  # a gap (the log has it) or the end: the follower's own work
                if live.heads:
                    if not direct(b"".join(live.frames)):
                        return False
                    cursor.take_live(live)
                    cursor.wrote_directly = True
                return True

            if not (batch := cursor.read_log(page_events)):
                tail = eventlog.tail(stream.log_path)  # nothing after `after_sequence`: has it ended already?
                if tail is not None and tail.type == stream.terminal_type and tail.sequence <= after_sequence:
                    return
            else:
                yield batch
                if cursor.ended:
                    return
            need_log = not cursor.at_end
            idle = False  # the last wait timed out with nothing new
            while True:
                if stop is not None and stop.requested:
                    return
                if need_log:  # catch up from the log until it has nothing newer
                    while batch := cursor.read_log(page_events):
                        yield batch
                        if cursor.ended or (stop is not None and stop.requested):
                            return
                        if cursor.at_end:  # a short page: what comes next comes live
                            break
                        # A fast client's sends never suspend: let the hub and other requests run.
                        await anyio.lowlevel.checkpoint()
                    need_log = False
                    if idle and ended is not None and await ended():
                        # Writers record the end a moment before they log it: give the log that moment.
                        for _ in range(_RECORD_GRACE_POLLS):
                            await anyio.sleep(0.05)
                            if batch := cursor.read_log(page_events):
                                yield batch
                                if cursor.ended:
                                    return
                        return  # the record ended though its log could not say so
                    idle = False
                # Live: forward in-order events from the hub; any doubt sends us back to the log.
                # Jittered: readers that opened together do not all go idle, and check, together.
                timeout_s = (idle_s if sub.confirmed else min(idle_s, _UNCONFIRMED_POLL_S)) * random.uniform(
                    0.8, 1
                )
                sub.sink = write_live if direct is not None and sub.confirmed else None
                cursor.wrote_directly = False
                try:
                    woken = await sub.wait(timeout_s)
                finally:
                    sub.sink = None
                if not woken:
                    if cursor.wrote_directly:
                        continue  # not idle: frames went out from the hub's flush meanwhile
                    yield Batch((), [])  # a keepalive
                    need_log = True  # cheap insurance against a lost last message
                    idle = True
                    continue
                if hub.draining or (stop is not None and stop.requested):
                    return
                live = sub.take(cursor.last_sequence)
                if sub.resync or live is None:  # the hub may have missed some, or they are gone from it
                    sub.resync = False
                    need_log = True  # the log has everything
                    continue
                if live.heads:
                    yield cursor.take_live(live)
                    if cursor.ended:
                        return

    finally:
        if stop is not None:
            stop.close()


async def stream_frames(
    hub: Hub,
    stream: StreamRef,
    after_sequence: int,
    *,
    keepalive_s: float,
    retry_ms: int,
    page_events: int,
    ended: Callable[[], Awaitable[bool]] | None = None,
    stop: Stop | None = None,
    farewell: bytes = b"",
    direct: Callable[[bytes], bool] | None = None,
) -> AsyncIterator[bytes]:
    """SSE bytes for `stream` after `after_sequence`, ending with `event: end` after the terminal event —
    or with `farewell` when `stop` is requested."""
    yield b"retry: %d\n\n" % retry_ms
    async for batch in follow(
        hub,
        stream,
        after_sequence,
        idle_s=keepalive_s,
        page_events=page_events,
        ended=ended,
        stop=stop,
        direct=direct,
    ):
        yield batch.sse() if batch else KEEPALIVE_FRAME
    if stop is not None and stop.requested:
        if farewell:
            yield farewell
    elif not hub.draining:  # a stream cut by shutdown ends without `end`: the client resumes elsewhere
        yield END_FRAME
