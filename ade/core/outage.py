"""Living through Redis outages (DESIGN.md §2 invariant 5): a process that loses Redis waits, retries with
backoff and carries on; it never exits because of it.

`REDIS` is this process's one view of whether Redis answers. Every loop that talks to Redis reports to
it: a failure through `lost()`, a call that really reached Redis through `reachable()`. It logs one line
when an outage starts and one when it ends, however many calls failed in between (a run printing ten
lines a second would otherwise log ten failed publishes a second).
"""

from __future__ import annotations

import asyncio
import logging
import time

from arq.connections import ArqRedis

log = logging.getLogger("ade.redis")


class RedisOutage:
    def __init__(self) -> None:
        self.down_since: float | None = None  # time.monotonic() of the first failure of this outage
        self.failed_calls = 0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def lost(self, exc: BaseException, doing: str) -> None:
        """A call to Redis failed: logs only when this starts an outage."""
        self.failed_calls += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("Redis unreachable (%s: %s); waiting and retrying, running steps go on", doing, exc)

    def reachable(self) -> None:
        """A call really reached Redis: logs only when this ends an outage."""
        if self.down_since is not None:
            log.warning(
                "Redis reachable again after %.1f s (%d failed calls meanwhile)",
                time.monotonic() - self.down_since,
                self.failed_calls,
            )
            self.down_since = None
            self.failed_calls = 0


REDIS = RedisOutage()


class Backoff:
    """Delays between retries: `first_s`, doubling up to `max_s`; `reset()` after a success."""

    def __init__(self, first_s: float = 0.1, max_s: float = 2.0) -> None:
        self._first_s, self._max_s = first_s, max_s
        self._next_s = first_s

    def reset(self) -> None:
        self._next_s = self._first_s

    def next_s(self) -> float:
        delay_s = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return delay_s

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_s())


def arq_pool(redis_url: str, *, queue_name: str, connect_timeout_s: float = 5.0) -> ArqRedis:
    """An arq client that connects on first use (arq's `create_pool` pings, and fails while Redis is down,
    which would stop a process from starting at all)."""
    pool: ArqRedis = ArqRedis.from_url(redis_url, socket_connect_timeout=connect_timeout_s)
    pool.default_queue_name = queue_name
    return pool
