"""The stream lease through Redis trouble: an expired lease nobody took is taken again, one another writer
holds is lost, and the Lua scripts survive Redis forgetting them (a restart empties its script cache)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.core.errors import LeaseLost
from ade.events.envelope import StreamRef
from ade.events.writer import Identity, StreamWriter

pytestmark = pytest.mark.anyio
TTL_S = 0.3  # renewed every 0.1 s


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def writer(redis: Redis, stream: StreamRef) -> StreamWriter:
    return StreamWriter(redis, stream, Identity(workspace_id="ws", run_id=stream.id), lease_ttl_s=TTL_S)


async def wait_for(condition: object, timeout_s: float = 3.0) -> None:
    with anyio.fail_after(timeout_s):
        while not await condition():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_lease_that_expired_with_no_other_holder_is_taken_again(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_expired")
    async with writer(redis, stream) as w:
        await w.emit_many([("console.line", {"n": 1}, "worker")])
        token = await redis.get(stream.lease_key)
        await redis.delete(stream.lease_key)  # as if it expired while Redis was down

        async def held_again() -> bool:
            return bool(await redis.get(stream.lease_key) == token)

        await wait_for(held_again)
        assert (await w.emit_many([("console.line", {"n": 2}, "worker")]))[
            0
        ].sequence == 2  # still the writer
    assert await redis.exists(stream.lease_key) == 0  # and it released the lease at the end


async def test_a_lease_another_writer_holds_is_lost(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_taken")
    async with writer(redis, stream) as w:
        await redis.set(stream.lease_key, b"someone-else", px=5000)
        with anyio.fail_after(3):
            while True:
                try:
                    await w.emit_many([("console.line", {}, "worker")])
                except LeaseLost:
                    break
                await anyio.sleep(0.02)
    assert await redis.get(stream.lease_key) == b"someone-else"  # not released: it is not ours
    await redis.delete(stream.lease_key)


async def test_an_expired_lease_is_not_taken_again_after_another_writer_wrote(
    redis: Redis, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_overtaken")
    async with writer(redis, stream) as w:
        await w.emit_many([("console.line", {"n": 1}, "worker")])
        with stream.log_path.open("ab") as log:  # someone else held the stream meanwhile and wrote,
            log.write(b'{"type":"run.completed","sequence":2}\n')
        await redis.delete(stream.lease_key)  # then their lease lapsed too
        await anyio.sleep(TTL_S)  # a few renewals: the lease is free, but the log is not ours alone
        with pytest.raises(LeaseLost):
            await w.emit_many([("console.line", {}, "worker")])
        assert await redis.exists(stream.lease_key) == 0  # what it took back, it gave back


async def test_renewal_survives_redis_forgetting_its_scripts(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_noscript")
    async with writer(redis, stream) as w:
        for _ in range(3):
            await redis.script_flush()  # what a restart does: the next EVALSHA answers NOSCRIPT
            await anyio.sleep(TTL_S)  # renewals happened meanwhile, or the lease lapsed
            assert await redis.pttl(stream.lease_key) > 0
        await w.emit_many([("console.line", {}, "worker")])
