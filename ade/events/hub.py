"""Per-process fan-out: one Redis pub/sub connection; each channel's recent events kept once for its readers.

The hub subscribes to a stream's channel when its first local subscriber arrives and unsubscribes when
the last one leaves. Every SUBSCRIBE confirmation (the first one, or the automatic re-subscribe after a
Redis reconnect) marks that channel's subscribers for a resync from the log, so anything published
while the hub was not listening is repaired from the log (DESIGN.md invariant 3).

Through a Redis outage the hub retries with backoff, for as long as it takes. While it is cut off its
subscribers count as unconfirmed, so readers poll the log meanwhile; once it reconnects it subscribes
again to every channel its subscribers want (including ones whose SUBSCRIBE failed during the outage)
and drops the ones nobody wants any more. A channel's live events are kept once, in a bounded `Recent`
that all its local subscribers take from; a reader that falls further behind than it holds reads the log
(invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ade.core import keys
from ade.core.outage import REDIS, Backoff
from ade.events.envelope import HEAD_DECODER, EventHead

log = logging.getLogger(__name__)

COALESCE_PER_SUBSCRIBER_S = 0.00005  # a live event's wait for company grows by this per local subscriber


class _Stamp(msgspec.Struct):
    created_at: datetime


_STAMP_DECODER = msgspec.json.Decoder(_Stamp)


def event_frame(sequence: int, line: bytes) -> bytes:
    """One event as an SSE frame (its id is its sequence: what `Last-Event-ID` resumes from)."""
    return b"id: %d\nevent: ade.event\ndata: %s\n\n" % (sequence, line)


class Live(NamedTuple):
    """Consecutive live events (sequence `heads[0].sequence + i`), their lines and their SSE frames."""

    heads: list[EventHead]
    lines: list[bytes]
    frames: list[bytes]


class Recent:
    """A channel's latest live events, kept once for all of this process's subscribers to it — each takes
    the part after its own last sequence, so an event costs one entry and one SSE frame however many read
    it. Always dense: an event that does not continue it starts it afresh (a reader that needs what was
    missed reads the log); one it already holds is ignored. Bounded: it keeps the newest `capacity` events,
    and a reader whose next event is no longer here reads the log instead (DESIGN.md invariant 4)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.max_events = capacity + capacity // 4  # it trims itself back to `capacity` past this
        self.first_sequence = 1  # the sequence of heads[0]
        self.heads: list[EventHead] = []
        self.lines: list[bytes] = []
        self.frames: list[bytes] = []

    @property
    def last_sequence(self) -> int:
        return self.first_sequence + len(self.heads) - 1

    def append(self, head: EventHead, line: bytes) -> None:
        if self.heads and head.sequence <= self.last_sequence:
            return  # published twice (a writer's retry): the first one counts
        if not self.heads or head.sequence != self.last_sequence + 1:
            self.heads.clear()
            self.lines.clear()
            self.frames.clear()
            self.first_sequence = head.sequence
        self.heads.append(head)
        self.lines.append(line)
        self.frames.append(event_frame(head.sequence, line))
        if len(self.heads) > self.max_events:
            cut = len(self.heads) - self._capacity
            del self.heads[:cut], self.lines[:cut], self.frames[:cut]
            self.first_sequence += cut

    def after(self, sequence: int) -> Live | None:
        """The events after `sequence` (empty: none yet), or None when the next one is no longer here."""
        start = sequence + 1 - self.first_sequence
        if start < 0:
            return None
        return Live(self.heads[start:], self.lines[start:], self.frames[start:])


class Subscription:
    """What one reader (an SSE response) sees of a stream's live events: a wake-up when its channel got
    some (once per coalescing window), and the channel's `Recent` to take them from."""

    def __init__(self, recent: Recent) -> None:
        self._recent = recent
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self.confirmed = False  # the hub's SUBSCRIBE for this channel has been acknowledged
        self.resync = False  # the hub may have missed messages: read the log
        self.taken_sequence = 0  # the last sequence this reader has (what it asked `take` after)
        # Set while its reader waits: the hub's flush hands it the wake-up first, and wakes the reader only
        # if it returns False (see `follow`: it writes live frames without waking the reader's task).
        self.sink: Callable[[Subscription], bool] | None = None

    def wake(self) -> None:
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def mark_unconfirmed(self) -> None:
        """The hub lost Redis: wake the reader so it polls the log until the channel is confirmed again."""
        self.confirmed = False
        self.wake()

    def mark_resync(self) -> None:
        self.confirmed = True
        self.resync = True
        self.wake()

    async def wait(self, timeout_s: float) -> bool:
        """Wait until woken (True) or the timeout passed (False). One future and one timer: no task."""
        if self._woken:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._woken

    def take(self, after_sequence: int) -> Live | None:
        """The live events after `after_sequence` (see `Recent.after`); clears the wake-up."""
        self._woken = False
        return self.peek(after_sequence)

    def peek(self, after_sequence: int) -> Live | None:
        """The live events after `after_sequence`, leaving the wake-up as it is."""
        self.taken_sequence = after_sequence
        return self._recent.after(after_sequence)

    @property
    def queued_events(self) -> int:
        """Live events held for this reader that it has not taken yet."""
        return min(len(self._recent.heads), max(0, self._recent.last_sequence - self.taken_sequence))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(eq=False)
class _Channel:
    recent: Recent
    subscribers: set[Subscription] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(
        self,
        redis: Redis,
        *,
        subscriber_queue_events: int,
        confirm_timeout_s: float = 5.0,
        coalesce_max_s: float = 0.05,
    ) -> None:
        self._redis = redis
        self._queue_events = subscriber_queue_events
        self._confirm_timeout_s = confirm_timeout_s
        self._pubsub: PubSub | None = None
        self._channels: dict[str, _Channel] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reconcile = True  # the reader must (re)subscribe: at start, after an outage or a failure
        self.connected = False
        self.lag_s = 0.0  # age of the newest event received, when it arrived
        self.draining = False  # shutting down: streams end without `end`, so clients resume elsewhere
        self._coalesce_max_s = coalesce_max_s
        self._to_wake: set[_Channel] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._flushed_at = 0.0  # when the last flush started (the event loop's clock)

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        try:
            await self._pubsub.subscribe(keys.HUB_CONTROL_CHANNEL)
            self._reconcile = False
        except (RedisError, OSError) as exc:
            REDIS.lost(exc, "the hub subscribing")  # the reader keeps trying
        self._reader = asyncio.create_task(self._read_forever(), name="hub-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def drain(self) -> None:
        """Wake every subscriber so its stream ends now (the process is shutting down)."""
        self.draining = True
        for channel in self._channels.values():
            for sub in channel.subscribers:
                sub.mark_resync()

    def _wake_soon(self, channel: _Channel) -> None:
        """Wake `channel`'s subscribers at the end of the current coalescing window: each reader then sends
        everything that arrived meanwhile as one write. The window grows with the subscribers of this
        process (COALESCE_PER_SUBSCRIBER_S each, at most ADE_SSE_COALESCE_MAX_MS): a lone viewer gets each
        event at once; a thousand viewers get twenty writes a second each instead of one per event.

        A window runs from the start of the last flush, not from the first event after it: a flush that
        itself took longer than the window (10,000 writes) is followed by the next one at once, instead of
        by a window of idling on top."""
        self._to_wake.add(channel)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            window_s = min(self._coalesce_max_s, COALESCE_PER_SUBSCRIBER_S * self.subscriber_count)
            self._flush = loop.call_at(self._flushed_at + window_s, self._wake_all)

    def _wake_all(self) -> None:
        self._flush = None
        self._flushed_at = asyncio.get_running_loop().time()
        woken, self._to_wake = self._to_wake, set()
        for channel in woken:
            for sub in channel.subscribers:
                if sub.sink is None or not sub.sink(sub):
                    sub.wake()

    @property
    def subscriber_count(self) -> int:
        return sum(len(channel.subscribers) for channel in self._channels.values())

    @property
    def largest_backlog(self) -> int:
        """Events queued for the slowest local subscriber (bounded by `subscriber_queue_events`)."""
        return max((s.queued_events for c in self._channels.values() for s in c.subscribers), default=0)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel_name: str) -> AsyncIterator[Subscription]:
        """Register a subscriber and wait (bounded) until the channel is subscribed in Redis.

        If Redis does not confirm in time the subscription is still returned, with `confirmed` False:
        the reader then polls the log until a confirmation (a resync) arrives.
        """
        assert self._pubsub is not None, "Hub.start() was not called"
        channel = self._channels.get(channel_name)
        confirmable = True  # else nothing confirms it before the reader reconnects: poll the log meanwhile
        if channel is None:
            channel = self._channels[channel_name] = _Channel(Recent(self._queue_events))
            try:
                await self._pubsub.subscribe(channel_name)
            except (RedisError, OSError):
                confirmable = False
                self._reconcile = True  # the reader subscribes it once Redis answers
        elif not channel.confirmed.is_set() and not self.connected:
            confirmable = False  # cut off: the reader re-subscribes it once Redis answers
        sub = Subscription(channel.recent)
        channel.subscribers.add(sub)
        try:
            if confirmable and not channel.confirmed.is_set():  # (wait_for costs a task even then)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.confirmed.wait(), self._confirm_timeout_s)
            sub.confirmed = channel.confirmed.is_set()
            sub.resync = False
            yield sub
        finally:
            channel.subscribers.discard(sub)
            if not channel.subscribers and self._channels.get(channel_name) is channel:
                del self._channels[channel_name]
                try:
                    await asyncio.shield(self._pubsub.unsubscribe(channel_name))
                except (RedisError, OSError):
                    self._reconcile = True  # the reader drops it once Redis answers

    async def _read_forever(self) -> None:
        assert self._pubsub is not None
        backoff = Backoff()
        while True:
            try:
                if self._reconcile:
                    self._reconcile = False
                    await self._resubscribe()
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                self._reconcile = True
                if self.connected:
                    self._cut_off()
                REDIS.lost(exc, "the hub reading pub/sub")
                await backoff.sleep()
                continue
            self.connected = True
            REDIS.reachable()
            backoff.reset()
            if message is not None:
                self._handle(message)
                await asyncio.sleep(0)  # a burst of messages must not starve the API's other work

    async def _resubscribe(self) -> None:
        """Make the pub/sub connection's channels the ones local subscribers want (plus the control one)."""
        assert self._pubsub is not None
        wanted = {keys.HUB_CONTROL_CHANNEL, *self._channels}
        held = {name.decode() if isinstance(name, bytes) else str(name) for name in self._pubsub.channels}
        if missing := wanted - held:
            await self._pubsub.subscribe(*missing)
        if unwanted := held - wanted:
            await self._pubsub.unsubscribe(*unwanted)

    def _cut_off(self) -> None:
        """Redis is gone: nothing live arrives until the re-subscribe confirms each channel again."""
        self.connected = False
        for channel in self._channels.values():
            channel.confirmed.clear()
            for sub in channel.subscribers:
                sub.mark_unconfirmed()

    def _handle(self, message: dict[str, object]) -> None:
        kind = message["type"]
        raw_name = message["channel"]
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        channel = self._channels.get(name)
        if channel is None:
            return
        if kind == "message":
            data = message["data"]
            assert isinstance(data, bytes)
            try:
                stamp = _STAMP_DECODER.decode(data.split(b"\n", 1)[0])
                self.lag_s = max(0.0, time.time() - stamp.created_at.timestamp())
            except msgspec.DecodeError:
                pass
            for line in data.split(b"\n"):  # a message carries a slice of events, one per line
                try:
                    head = HEAD_DECODER.decode(line)
                except msgspec.DecodeError:
                    log.error("dropping an undecodable message on %s", name)
                    break
                channel.recent.append(head, line)
            self._wake_soon(channel)
        elif kind == "subscribe":
            channel.confirmed.set()
            for sub in channel.subscribers:
                sub.mark_resync()
