"""Event endpoints for any stream (runs now, builds later): SSE, JSON pages and NDJSON, one code path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec
from litestar import Request, Response
from litestar.response import Stream

from ade import eventlog
from ade.api.deps import Services
from ade.errors import Invalid
from ade.events import EVENT_DECODER, Event, StreamRef
from ade.sse import stream_frames

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
EventsFormat = Literal["json", "ndjson"]


class EventsPage(msgspec.Struct, kw_only=True):
    items: list[Event]
    next_after_sequence: int


def wants_stream(request: Request[Any, Any, Any], stream: bool | None) -> bool:
    if stream is not None:
        return stream
    return "text/event-stream" in request.headers.get("accept", "")


def resume_point(after_sequence: int, last_event_id: str | None) -> int:
    """`Last-Event-ID` (what EventSource sends on reconnect) wins over `after_sequence`."""
    if last_event_id is None:
        return after_sequence
    value = last_event_id.strip()
    if not value.isdigit():
        raise Invalid(
            "Last-Event-ID must be a non-negative integer sequence",
            details=[{"key": "Last-Event-ID", "source": "header", "message": f"got {last_event_id!r}"}],
        )
    return int(value)


def sse_response(services: Services, stream: StreamRef, after_sequence: int) -> Stream:
    settings = services.settings
    frames = stream_frames(
        services.hub,
        stream,
        after_sequence,
        keepalive_s=settings.sse_keepalive_s,
        retry_ms=settings.sse_retry_ms,
        page_events=settings.replay_page_events,
    )
    return Stream(frames, media_type="text/event-stream", headers=SSE_HEADERS, status_code=200)


def events_response(
    services: Services,
    stream: StreamRef,
    *,
    as_stream: bool,
    after_sequence: int,
    limit: int,
    format: EventsFormat,
) -> Response[EventsPage] | Stream:
    if as_stream:
        return sse_response(services, stream, after_sequence)
    path = stream.log_path
    offset = eventlog.offset_after(path, after_sequence)
    if format == "ndjson":
        return Stream(_ndjson(path, offset, limit), media_type="application/x-ndjson")
    page = eventlog.read_lines(path, offset, limit)
    items = [EVENT_DECODER.decode(line) for line in page.lines]
    next_after = items[-1].sequence if items else after_sequence
    return Response(EventsPage(items=items, next_after_sequence=next_after))


def _ndjson(path: Path, offset: int, limit: int) -> Iterator[bytes]:
    remaining = limit
    while remaining > 0:
        page = eventlog.read_lines(path, offset, min(remaining, 1000))
        if not page.lines:
            return
        yield b"".join(line + b"\n" for line in page.lines)
        remaining -= len(page.lines)
        offset = page.next_offset
