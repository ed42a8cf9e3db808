"""Event streams: the bookkeeping that makes them exact, shared by both clients, which only do the I/O.

A consumer's `Resume` says what to ask for (`Last-Event-ID` = the last sequence yielded), which SSE messages
to yield (each event once, in order; a duplicate is dropped, a jump raises `Gap`) and how long to wait
before reconnecting (`failed`), or when to give up with `AdeStreamError`. Also here: the console lines among
events, and text split into lines, for the clients' `logs` and `build_logs`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec
from httpx_sse import ServerSentEvent, SSEError

from ade.client.calls import ConsoleStream
from ade.client.errors import AdeStreamError, api_error
from ade.events.envelope import Event
from ade.records.summary import ConsoleLine, console_line

_EVENT_DECODER = msgspec.json.Decoder(Event)
_FIRST_RETRY_S = 0.05
_MAX_GAPS = 10


class Gap(Exception):
    """The server sent a sequence after a hole: reconnect from the last yielded event."""


class Retry(Exception):
    """A 5xx answer or a stream that closed before `event: end`: reconnect."""


RECONNECT = (httpx.TransportError, Retry, Gap)


class Resume:
    """Where a stream consumer stands: the last sequence yielded, whether the stream ended, and the
    reconnect policy (backoff capped by the server's `retry:`; give up after `timeout_s` unreachable)."""

    def __init__(self, after_sequence: int, timeout_s: float) -> None:
        self.last = after_sequence
        self.ended = False
        self.timeout_s = timeout_s
        self.retry_s = 2.0
        self.failures = 0
        self.gaps = 0
        self.down_since: float | None = None

    def request(self) -> tuple[dict[str, str | int], dict[str, str]]:
        params: dict[str, str | int] = {"stream": "true", "after_sequence": self.last}
        headers = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
            "Last-Event-ID": str(self.last),
        }
        return params, headers

    def connected(self, response: httpx.Response) -> None:
        """Raise for an answer that is not a stream: `AdeApiError` for 4xx, `Retry` for 5xx."""
        if response.status_code >= 500:
            raise Retry(f"HTTP {response.status_code}")
        if response.status_code >= 300:
            raise api_error(response)
        self.down_since = None

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to yield for this SSE message, if any; raises `Gap` on a jump."""
        if sse.retry is not None:
            self.retry_s = max(sse.retry / 1000, _FIRST_RETRY_S)
        if sse.event == "end":
            self.ended = True
            return None
        if sse.event != "ade.event":
            return None
        try:
            event = _EVENT_DECODER.decode(sse.data)
        except msgspec.MsgspecError as exc:
            raise AdeStreamError(f"a malformed event after sequence {self.last}: {exc}") from exc
        if event.sequence <= self.last:
            return None  # already yielded
        if event.sequence != self.last + 1:
            raise Gap(f"sequence {event.sequence} after {self.last}")
        self.last = event.sequence
        self.failures = self.gaps = 0
        return event

    def failed(self, exc: Exception) -> float:
        """Seconds to wait before reconnecting; raises `AdeStreamError` when it is time to give up."""
        now = time.monotonic()
        if isinstance(exc, Gap):
            self.gaps += 1
            if self.gaps > _MAX_GAPS:
                raise AdeStreamError(f"the server keeps skipping events: {exc}") from exc
            return 0.0
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
        elif now - self.down_since > self.timeout_s:
            raise AdeStreamError(
                f"the event stream was lost after sequence {self.last} and could not be resumed "
                f"for {self.timeout_s:g} s: {exc!r}"
            ) from exc
        return float(min(self.retry_s, _FIRST_RETRY_S * 2 ** (self.failures - 1)))


def sse_error(exc: SSEError) -> AdeStreamError:
    return AdeStreamError(f"the answer is not an event stream: {exc}")


# Console lines --------------------------------------------------------------------------------------


def _console_record(event: Event, stream: ConsoleStream | None) -> ConsoleLine | None:
    line = console_line(event)
    return line if line is not None and (stream is None or line.stream == stream) else None


def console_records(events: Iterator[Event], stream: ConsoleStream | None = None) -> Iterator[ConsoleLine]:
    """The console lines among a run's or a build's events, with their sequence, time, stream and step."""
    for event in events:
        if (line := _console_record(event, stream)) is not None:
            yield line


async def aconsole_records(
    events: AsyncIterator[Event], stream: ConsoleStream | None = None
) -> AsyncIterator[ConsoleLine]:
    """`console_records` of an async iterator."""
    async for event in events:
        if (line := _console_record(event, stream)) is not None:
            yield line


def console_lines(events: Iterator[Event], stream: ConsoleStream | None = None) -> Iterator[str]:
    """The console lines' messages among a run's or a build's events (for the `follow=True` logs)."""
    for line in console_records(events, stream):
        yield line.message


async def aconsole_lines(
    events: AsyncIterator[Event], stream: ConsoleStream | None = None
) -> AsyncIterator[str]:
    """`console_lines` of an async iterator."""
    async for line in aconsole_records(events, stream):
        yield line.message


class Lines:
    """Text split at `\\n` only (a console line may hold a `\\r`, which `iter_lines` would split at)."""

    def __init__(self) -> None:
        self._rest = ""

    def feed(self, text: str) -> list[str]:
        *lines, self._rest = (self._rest + text).split("\n")
        return lines

    def end(self) -> list[str]:
        return [self._rest] if self._rest else []
