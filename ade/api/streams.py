"""Event endpoints for any stream, a run's or a build's: SSE, JSON pages and NDJSON, one code path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
from litestar import Request, Response
from litestar.enums import MediaType
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send

from ade.api.deps import API_PREFIX, Services
from ade.api.stream_slots import Slot, StreamSlots
from ade.core.errors import Invalid
from ade.core.models import TERMINAL_BUILD_STATUSES, TERMINAL_RUN_STATUSES, StreamToken
from ade.events import eventlog
from ade.events.envelope import EVENT_DECODER, HEAD_DECODER, Event, StreamRef
from ade.events.follow import Stop, follow, stream_frames
from ade.records.auth import Principal
from ade.records.summary import ConsolePage, console_line, console_page

KEY_GONE_FRAME = b": the key behind this stream was revoked or has expired\n\n"
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
    """`Last-Event-ID` (what EventSource sends on reconnect) wins over `after_sequence`. Only ASCII digits
    are a sequence (`str.isdigit` alone also accepts "²", which `int` refuses)."""
    if last_event_id is None:
        return after_sequence
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit()):
        raise Invalid(
            "Last-Event-ID must be a non-negative integer sequence",
            code="invalid_last_event_id",
            details=[{"key": "Last-Event-ID", "source": "header", "message": f"got {last_event_id!r}"}],
        )
    return int(value)


class DirectWrites:
    """How the hub's flush writes a live SSE stream's frames without waking its task (`follow`'s `direct`):
    the ASGI `send` is driven to completion on the spot. If it would have to wait — uvicorn waits for a
    client that does not keep up to drain *before* it writes anything — it is closed unfinished (nothing
    was written) and the stream's task sends those frames itself, waiting as long as it takes."""

    def __init__(self) -> None:
        self.send: Send | None = None  # set once the response has started

    def __call__(self, data: bytes) -> bool:
        if self.send is None:
            return False
        message: HTTPResponseBodyEvent = {"type": "http.response.body", "body": data, "more_body": True}
        writing = cast("Coroutine[Any, Any, None]", self.send(message))  # an ASGI server's is a coroutine
        try:
            writing.send(None)
        except StopIteration:
            return True
        except Exception:  # the stream's task meets it again and ends the stream
            return False
        writing.close()
        return False


class _ASGIEventStream(ASGIStreamingResponse):
    """Litestar's streaming response made lighter for the many long-lived streams of one process: chunks
    go straight to `send` from the request's own task (no task group, no cancel scope); one small task
    waits for the client to leave and then asks the stream to `stop`; the stream slot is given back when
    the response ends (`StreamSlots` keeps it meanwhile)."""

    __slots__ = ("direct", "slot", "slots", "stop")

    slots: StreamSlots
    slot: Slot
    stop: Stop
    direct: DirectWrites | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """However the response ends — the client gone before it started, a HEAD request — the slot goes
        back and the stream's stop is closed (else `StreamSlots` would keep renewing a slot nobody uses)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stop.close()
            await self.slots.release(self.slot)

    async def send_body(self, send: Send, receive: Receive) -> None:
        watch = asyncio.ensure_future(_watch(receive, self.stop))
        if self.direct is not None:
            self.direct.send = send
        try:
            async for chunk in self.iterator:
                await send({"type": "http.response.body", "body": _bytes(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watch.cancel()


def _bytes(chunk: str | bytes) -> bytes:
    return chunk if isinstance(chunk, bytes) else chunk.encode()


async def _watch(receive: Receive, stop: Stop) -> None:
    """Until the client leaves, then the stream stops."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stop.request()


class EventStream(Stream):
    """A long-lived stream (SSE, or followed text) that holds a stream slot and ends when `stop` is
    requested — by the client leaving, or by the key behind it being revoked."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        slot: Slot,
        slots: StreamSlots,
        stop: Stop,
        media_type: str,
        direct: DirectWrites | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=SSE_HEADERS, status_code=200)
        self._slot, self._slots, self._stop, self._direct = slot, slots, stop, direct

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Any = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIResponse:
        response = _ASGIEventStream(
            content_length=0,
            cookies=self.cookies,
            encoded_headers=encoded_headers,
            headers={**(headers or {}), **self.headers},
            is_head_response=is_head_response,
            iterator=cast("AsyncIterator[bytes]", self.iterator),
            media_type=str(self.media_type),
            status_code=self.status_code,
        )
        response.slot, response.slots = self._slot, self._slots
        response.stop, response.direct = self._stop, self._direct
        return response


async def sse_response(
    services: Services, principal: Principal, stream: StreamRef, after_sequence: int
) -> Stream:
    settings = services.settings
    slot = await services.stream_slots.take(principal.actor)
    stop = key_stop(services, principal)
    direct = DirectWrites()
    frames = stream_frames(
        services.hub,
        stream,
        after_sequence,
        keepalive_s=settings.sse_keepalive_s,
        retry_ms=settings.sse_retry_ms,
        page_events=settings.replay_page_events,
        ended=record_ended(services, stream),
        stop=stop,
        farewell=KEY_GONE_FRAME,
        direct=direct,
    )
    return EventStream(
        frames,
        slot=slot,
        slots=services.stream_slots,
        stop=stop,
        media_type="text/event-stream",
        direct=direct,
    )


async def events_response(
    services: Services,
    principal: Principal,
    stream: StreamRef,
    *,
    as_stream: bool,
    after_sequence: int,
    limit: int,
    format: EventsFormat,
) -> Response[EventsPage] | Stream:
    if as_stream:
        return await sse_response(services, principal, stream, after_sequence)
    path = stream.log_path
    page = eventlog.read_lines(path, eventlog.offset_after(path, after_sequence), limit)
    last = after_sequence
    if page.lines:
        last = HEAD_DECODER.decode(page.lines[-1]).sequence
        eventlog.note_page_end(path, last, page.next_offset)  # where the next page starts
    if format == "ndjson":
        body = b"\n".join(page.lines) + b"\n" if page.lines else b""
        return cast("Response[EventsPage]", Response(body, media_type="application/x-ndjson"))
    # An EventsPage made of the log's lines as they are (each already an Event's JSON): no decoding.
    body = b'{"items":[%s],"next_after_sequence":%d}' % (b",".join(page.lines), last)
    return cast("Response[EventsPage]", Response(body, media_type=MediaType.JSON))


async def logs_response(
    services: Services,
    principal: Principal,
    stream: StreamRef,
    *,
    after_sequence: int,
    limit: int,
    console_stream: str | None,
    as_text: bool,
    follow: bool,
) -> Response[ConsolePage] | Stream:
    """A stream's console lines: a JSON page, all of them as text, or text that follows the stream live."""
    if not as_text:
        return Response(console_page(stream.log_path, after_sequence, limit, console_stream))
    if not follow:
        return Stream(_text_lines(stream.log_path, after_sequence, console_stream), media_type="text/plain")
    slot = await services.stream_slots.take(principal.actor)
    stop = key_stop(services, principal)
    lines = _followed_text(services, stream, after_sequence, console_stream, stop)
    return EventStream(lines, slot=slot, slots=services.stream_slots, stop=stop, media_type="text/plain")


def _text_of(line: bytes, console_stream: str | None) -> bytes | None:
    item = console_line(EVENT_DECODER.decode(line)) if b'"type":"console.line"' in line[:40] else None
    if item is None or (console_stream is not None and item.stream != console_stream):
        return None
    return item.message.encode() + b"\n"


def _text_lines(path: Path, after_sequence: int, console_stream: str | None) -> Iterator[bytes]:
    offset = eventlog.offset_after(path, after_sequence)
    while (page := eventlog.read_lines(path, offset, 1000)).lines:
        yield b"".join(text for line in page.lines if (text := _text_of(line, console_stream)))
        offset = page.next_offset


async def _followed_text(
    services: Services, stream: StreamRef, after_sequence: int, console_stream: str | None, stop: Stop
) -> AsyncIterator[bytes]:
    settings = services.settings
    async for batch in follow(
        services.hub,
        stream,
        after_sequence,
        idle_s=settings.sse_keepalive_s,
        page_events=settings.replay_page_events,
        stop=stop,
    ):
        if chunk := b"".join(text for _, line in batch if (text := _text_of(line, console_stream))):
            yield chunk


def stream_token(
    services: Services, principal: Principal, workspace_id: str, stream: StreamRef
) -> StreamToken:
    """A short-lived token that opens one stream's read-only streaming endpoints (for EventSource)."""
    token, expires_at = services.stream_tokens.issue(principal, workspace_id, stream.id)
    events_url = f"{API_PREFIX}/{stream.kind}s/{stream.id}/events?stream=true&token={token}"
    return StreamToken(token=token, stream_id=stream.id, expires_at=expires_at, events_url=events_url)


def key_stop(services: Services, principal: Principal) -> Stop:
    """What ends a stream: its client leaving, or the key behind it being revoked or expiring
    (`ade.records.auth.KeyWatch`)."""
    return services.stream_tokens.watch.stop_for(principal.actor, services.store.find_api_key) or Stop()


_ENDED_CHECKS: dict[str, tuple[float, asyncio.Future[bool]]] = {}  # stream id: (until, its answer)
_ENDED_CHECK_S = 1.0


def record_ended(services: Services, stream: StreamRef) -> Callable[[], Awaitable[bool]]:
    """Whether a stream's run or build record is terminal (consulted only when its log has gone quiet).
    One check per stream and process answers all its readers for a second: a thousand idle readers of one
    run ask Redis once, not a thousand times at once."""

    async def check() -> bool:
        if stream.kind == "run":
            return (await services.store.get_run(stream.id)).status in TERMINAL_RUN_STATUSES
        return (await services.store.get_build(stream.id)).status in TERMINAL_BUILD_STATUSES

    async def ended() -> bool:
        now_s = time.monotonic()
        until_s, answer = _ENDED_CHECKS.get(stream.id, (0.0, None))
        if answer is None or until_s < now_s or (answer.done() and answer.exception() is not None):
            if len(_ENDED_CHECKS) > 4096:  # forget the stale ones
                for key in [k for k, (until, _) in _ENDED_CHECKS.items() if until < now_s]:
                    del _ENDED_CHECKS[key]
            answer = asyncio.ensure_future(check())
            _ENDED_CHECKS[stream.id] = (now_s + _ENDED_CHECK_S, answer)
        return await asyncio.shield(answer)

    return ended
