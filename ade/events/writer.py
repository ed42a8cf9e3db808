"""The sequencing dispatcher: one writer per stream gives each event the next sequence, appends it to the
stream's NDJSON log, then publishes the same bytes on the stream's pub/sub channel.

The log is the truth and pub/sub is the fast path: an event is persisted before it is published, a failed
publish is only logged (subscribers repair from the log), and a failed append fails the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self

import msgspec
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ade.core import ids, keys
from ade.core.errors import Conflict, LeaseLost
from ade.core.outage import REDIS, Backoff
from ade.events import eventlog
from ade.events.envelope import Event, Source, StreamRef, encode_event
from ade.events.eventlog import LogWriter
from ade.events.masking import Masker
from ade.events.payloads import Payload

log = logging.getLogger(__name__)

# Renew the lease if we still own it (1); take it again, with the same token, if nobody holds it (2: it
# expired, e.g. while Redis was down or restarted); 0 if another writer holds it.
_RENEW = """
local owner = redis.call('get', KEYS[1])
if owner == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not owner then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
_REACQUIRED = 2
# Release only our own lease.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True, slots=True)
class Identity:
    """The ids every event of a stream carries."""

    workspace_id: str
    configuration_id: str | None = None
    run_id: str | None = None
    build_id: str | None = None


# An event to emit: its type, its payload (a catalog struct, or an `engine.*` event's dict), its source.
EventSpec = tuple[str, Payload | dict[str, Any], Source]
MAX_SLICE_EVENTS = 512


class Emitter(Protocol):
    """Where the execution engine sends a stream's events: a `StreamWriter` in a worker, a runner's
    `ade.execution.remote.RemoteWriter` (which sends them to the API, whose writer sequences them)."""

    async def emit(self, payload: Payload, source: Source = "worker") -> object: ...

    async def emit_many(self, specs: Sequence[EventSpec]) -> object: ...

    def reveals(self, text: str) -> bool: ...


class StreamWriter:
    """Holds a stream's lease while open; `emit` is safe to call from concurrent tasks."""

    def __init__(
        self,
        redis: Redis,
        stream: StreamRef,
        identity: Identity,
        *,
        lease_ttl_s: float,
        fsync: bool = False,
        acquire_timeout_s: float = 5.0,
        redact: Sequence[str] = (),
    ) -> None:
        self.stream = stream
        self.identity = identity
        self._redis = redis
        # EVALSHA, loading the script again when Redis answers NOSCRIPT (e.g. after a restart).
        self._renew_script = redis.register_script(_RENEW)
        self._release_script = redis.register_script(_RELEASE)
        self._lease_ttl_ms = int(lease_ttl_s * 1000)
        self._acquire_timeout_s = acquire_timeout_s
        self._fsync = fsync
        self._masker = Masker(redact)  # secret values, masked in every event (`ade.events.masking`)
        self._token = secrets.token_hex(16)
        self._lock = asyncio.Lock()
        self._lease_lost = False
        self._renewer: asyncio.Task[None] | None = None
        self._log: LogWriter | None = None
        self._stamp: str | None = None

    async def __aenter__(self) -> Self:
        await self._acquire_lease()
        try:
            self._log = LogWriter(self.stream.log_path, fsync=self._fsync)
        except BaseException:
            await self._release_lease()
            raise
        self._renewer = asyncio.create_task(self._renew_forever(), name=f"lease:{self.stream.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._log is not None:
            self._log.close()
        await asyncio.shield(self._release_lease())

    @property
    def last_sequence(self) -> int:
        assert self._log is not None, "StreamWriter used outside `async with`"
        return self._log.last_sequence

    async def emit(self, payload: Payload, source: Source = "worker") -> Event:
        return (await self.emit_many([(payload.TYPE, payload, source)]))[0]

    async def emit_many(
        self, specs: Sequence[EventSpec], event_ids: Sequence[str] | None = None
    ) -> list[Event]:
        """Sequence, append, then publish events in order, in slices of at most MAX_SLICE_EVENTS: each slice
        is one write to the log and one PUBLISH, and the event loop gets a turn between slices.
        `event_ids`: the events' ids, chosen by the caller (a runner's reports); else new ones."""
        events: list[Event] = []
        for start in range(0, len(specs), MAX_SLICE_EVENTS):
            chosen = event_ids[start : start + MAX_SLICE_EVENTS] if event_ids is not None else None
            events += await self._emit_slice(specs[start : start + MAX_SLICE_EVENTS], chosen)
        return events

    @contextlib.contextmanager
    def stamping(self, event_id: str) -> Iterator[None]:
        """Within it, the last event of each emit carries `event_id`: the API applies a runner's report this
        way, so the log's tail tells whether a report was applied (`ade.lifecycle.remote`)."""
        self._stamp = event_id
        try:
            yield
        finally:
            self._stamp = None

    async def _emit_slice(self, specs: Sequence[EventSpec], chosen: Sequence[str] | None) -> list[Event]:
        async with self._lock:
            if self._lease_lost:
                raise LeaseLost(f"lost the writer lease of {self.stream.id}")
            log_writer = self._log
            assert log_writer is not None, "StreamWriter used outside `async with`"
            now = datetime.now(UTC)
            ident = self.identity
            events: list[Event] = []
            encoded: list[bytes] = []
            sequence = log_writer.last_sequence
            event_ids = list(chosen) if chosen is not None else ids.new_ids(ids.EVENT, len(specs))
            if self._stamp is not None:
                event_ids[-1] = self._stamp
            for event_id, (type_, payload, source) in zip(event_ids, specs, strict=True):
                sequence += 1
                if source == "engine" and self._masker:  # a step chose this name: it may hold a secret
                    type_ = self._masker.text(type_)
                event = Event(
                    type=type_,
                    sequence=sequence,
                    event_id=event_id,
                    created_at=now,
                    source=source,
                    workspace_id=ident.workspace_id,
                    configuration_id=ident.configuration_id,
                    run_id=ident.run_id,
                    build_id=ident.build_id,
                    payload=self._masked(msgspec.to_builtins(payload)) if self._masker else payload,
                )
                events.append(event)
                encoded.append(encode_event(event))
            log_writer.append(b"".join(line + b"\n" for line in encoded))  # persist ...
            log_writer.last_sequence = sequence
            await self._publish(encoded)  # ... then publish
            return events

    def _masked(self, value: Any) -> Any:
        """Secret values replaced by `***` in every string, object key and number of a payload."""
        return self._masker.value(value)

    def reveals(self, text: str) -> bool:
        """Whether `text` contains one of the secret values this writer masks."""
        return self._masker.reveals(text)

    async def _publish(self, encoded: list[bytes]) -> None:
        """One message per slice: its events' encoded lines joined by newlines (the hub splits them)."""
        channel = self.stream.channel
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.publish(channel, b"\n".join(encoded))
                pipe.hincrby(keys.METRICS_EVENTS, "dispatched", len(encoded))  # shown by /metrics
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The log already holds these events; subscribers repair gaps from it once Redis is back.
            REDIS.lost(exc, f"publishing to {channel}")
        else:
            REDIS.reachable()

    async def _acquire_lease(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout_s
        while True:
            if await self._redis.set(self.stream.lease_key, self._token, nx=True, px=self._lease_ttl_ms):
                return
            if loop.time() >= deadline:
                raise Conflict(f"another writer holds the stream {self.stream.id}", code="stream_busy")
            await asyncio.sleep(0.05)

    async def _renew_forever(self) -> None:
        """Renew every third of the TTL. Through a Redis outage keep trying (sooner, with backoff); if the
        lease expired meanwhile and nobody holds it, take it again. Only another holder means it is lost."""
        interval_s = self._lease_ttl_ms / 3000
        backoff = Backoff(max_s=min(interval_s, 2.0))
        delay_s = interval_s
        while True:
            await asyncio.sleep(delay_s)
            try:
                result = await self._eval(self._renew_script, self._token, str(self._lease_ttl_ms))
            except (RedisError, OSError) as exc:
                REDIS.lost(exc, f"renewing the lease of {self.stream.id}")
                delay_s = backoff.next_s()
                continue
            REDIS.reachable()
            backoff.reset()
            delay_s = interval_s
            if result == _REACQUIRED and await self._log_is_ours():
                log.warning("the lease of %s expired while Redis was away; took it again", self.stream.id)
            elif result != 1:
                log.error("lease of %s was taken over; this writer stops", self.stream.id)
                self._lease_lost = True
                if result == _REACQUIRED:
                    await self._release_lease()
                return

    async def _log_is_ours(self) -> bool:
        """Whether nobody wrote to the log while the lease was not ours (its tail is our last event)."""
        async with self._lock:
            if self._log is None:
                return False
            tail = await asyncio.to_thread(eventlog.tail, self.stream.log_path)
            return (tail.sequence if tail else 0) == self._log.last_sequence

    async def _eval(self, script: AsyncScript, *args: str) -> int:
        result = await script(keys=[self.stream.lease_key], args=args)
        return int(result)

    async def _release_lease(self) -> None:
        try:
            await self._eval(self._release_script, self._token)
        except (RedisError, OSError) as exc:
            REDIS.lost(exc, f"releasing the lease of {self.stream.id} (it expires by itself)")
