"""Stream slots: an API key's concurrent long-lived streams (ADE_MAX_STREAMS_PER_KEY), counted across API
processes in one Redis sorted set per key, each slot scored by when it lapses.

A slot is taken alone (a Lua script: drop the lapsed ones, count, add) and given back alone, but kept
together: every TTL/3 one pipeline renews every slot this process holds and the sets' own expiry. 10,000
open streams cost one round trip per TTL/3, not 10,000 timers and commands; a crashed process's slots
lapse by themselves within the TTL. The renewal writes every held slot whether or not Redis still has it,
so slots lost with Redis's data (a restart, an outage longer than the TTL) are counted again; a slot given
back is never written again: its `ZREM` waits for a renewal under way, and later ones no longer hold it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ade.core import keys
from ade.core.errors import TooManyRequests
from ade.records.scripts import scripts_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Slot:
    key: str  # the actor's sorted set
    member: str


class StreamSlots:
    """This process's stream slots; `keep_forever` (started with the API) renews them all."""

    def __init__(self, redis: Redis, limit: int, *, ttl_s: float = keys.SSE_SLOT_TTL_S) -> None:
        self._redis = redis
        self._take = scripts_for(redis).take_stream_slot
        self._limit = limit
        self._ttl_ms = int(ttl_s * 1000)
        self._held: dict[str, set[str]] = {}  # sorted-set key -> this process's members in it
        self._renewal: asyncio.Future[list[Any]] | None = None  # the renewal under way

    async def take(self, actor: str) -> Slot:
        """One of `actor`'s slots, or TooManyRequests (too_many_streams) when all are taken."""
        slot = Slot(keys.sse_slots(actor), secrets.token_hex(8))
        now_ms = int(time.time() * 1000)
        taken = await self._take(
            keys=[slot.key], args=[now_ms, self._limit, now_ms + self._ttl_ms, slot.member]
        )
        if not taken:
            raise TooManyRequests(
                f"this key already has {self._limit} open event streams (ADE_MAX_STREAMS_PER_KEY)",
                code="too_many_streams",
            )
        self._held.setdefault(slot.key, set()).add(slot.member)
        return slot

    async def release(self, slot: Slot) -> None:
        members = self._held.get(slot.key)
        if members is not None:
            members.discard(slot.member)
            if not members:
                del self._held[slot.key]
        with contextlib.suppress(RedisError, OSError):  # else the slot lapses by itself
            await asyncio.shield(self._give_back(slot))

    async def _give_back(self, slot: Slot) -> None:
        if self._renewal is not None:  # it may hold this slot: it lands first (however it ends)
            await asyncio.wait([self._renewal])
        await self._redis.zrem(slot.key, slot.member)

    @property
    def held(self) -> int:
        return sum(len(members) for members in self._held.values())

    async def renew(self) -> None:
        """Push back the lapse of every slot this process holds, and of the sets holding them."""
        if not self._held:
            return
        expiry_ms = int(time.time() * 1000) + self._ttl_ms
        pipe = self._redis.pipeline(transaction=False)
        for key, members in self._held.items():
            pipe.zadd(key, dict.fromkeys(members, expiry_ms))  # lost with Redis's data: counted again
            pipe.pexpire(key, self._ttl_ms)
        self._renewal = renewal = asyncio.ensure_future(pipe.execute())  # no await since the snapshot
        try:
            await renewal
        finally:
            if self._renewal is renewal:
                self._renewal = None

    async def keep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:  # an outage must not cut the streams; try again later
                log.warning("could not renew %d stream slots (%s)", self.held, exc)
