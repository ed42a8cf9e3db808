"""The hub through a Redis outage: its subscribers fall back to the log while it is cut off, and once Redis
is back every channel is subscribed again — also one first asked for while Redis was down."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.events.hub import Hub

pytestmark = pytest.mark.anyio
EVENT = b'{"type":"console.line","sequence":7,"created_at":"2026-01-01T00:00:00Z"}'


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - state another task changes
            await anyio.sleep(0.02)


async def test_subscribers_resync_and_channels_return_after_an_outage(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    hub = Hub(Redis.from_url(server.url), subscriber_queue_events=16, confirm_timeout_s=1.0)
    publisher = Redis.from_url(server.url)
    await hub.start()
    try:
        async with hub.subscribe("ade:events:before") as before:
            assert before.confirmed
            await anyio.to_thread.run_sync(server.stop)
            await until(lambda: not hub.connected)
            assert not before.confirmed  # readers poll the log while the hub is cut off
            asked = time.monotonic()
            async with hub.subscribe("ade:events:before") as another:  # no wait for what cannot come
                assert not another.confirmed and time.monotonic() - asked < 0.5
            async with hub.subscribe("ade:events:during") as during:  # its SUBSCRIBE fails
                assert not during.confirmed
                await anyio.to_thread.run_sync(server.start)  # same port and password
                await until(lambda: before.confirmed and during.confirmed)
                assert before.resync and during.resync  # read the log: things went by meanwhile
                for channel, sub in (("ade:events:before", before), ("ade:events:during", during)):
                    sub.take(0)
                    assert await publisher.publish(channel, EVENT) == 1  # the hub listens again
                    assert await sub.wait(5)
                    live = sub.take(6)  # a reader that has 1..6
                    assert live is not None and [head.sequence for head in live.heads] == [7]
    finally:
        await hub.stop()
        await publisher.aclose()
        server.stop()
