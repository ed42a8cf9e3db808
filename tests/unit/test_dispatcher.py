"""The dispatcher against a real Redis: dense sequences, one writer, tail seeding, persist then publish."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.core.errors import Conflict
from ade.events import eventlog
from ade.events.envelope import HEAD_DECODER, StreamRef
from ade.events.writer import Identity, StreamWriter

pytestmark = pytest.mark.anyio
IDENTITY = Identity(workspace_id="ws_test", run_id="run_test")


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def writer(redis: Redis, stream: StreamRef, **kwargs: float) -> StreamWriter:
    return StreamWriter(
        redis,
        stream,
        IDENTITY,
        lease_ttl_s=kwargs.get("lease_ttl_s", 5.0),
        acquire_timeout_s=kwargs.get("acquire_timeout_s", 0.2),
    )


async def test_concurrent_emitters_get_dense_sequences_in_file_order(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_dense")

    async with writer(redis, stream) as w:

        async def emit_many(name: str) -> None:
            for i in range(200):
                if i % 3:
                    await w.emit_many([("console.line", {"who": name, "i": i}, "worker")])
                else:
                    await w.emit_many([("console.line", {"who": name, "i": i}, "worker")] * 3)

        async with anyio.create_task_group() as tg:
            for name in "abcd":
                tg.start_soon(emit_many, name)
    lines = stream.log_path.read_bytes().splitlines()
    assert [HEAD_DECODER.decode(line).sequence for line in lines] == list(range(1, len(lines) + 1))


async def test_only_one_writer_holds_a_stream(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_lease")
    async with writer(redis, stream):
        with pytest.raises(Conflict):
            async with writer(redis, stream):
                pass
    async with writer(redis, stream) as second:  # released: the next writer gets it
        await second.emit_many([("console.line", {}, "worker")])


async def test_a_new_writer_continues_from_the_log_tail(redis: Redis, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_seed")
    async with writer(redis, stream) as first:
        await first.emit_many([("console.line", {"n": n}, "worker") for n in range(5)])
    with stream.log_path.open("ab") as handle:
        handle.write(b'{"type":"console.li')  # torn by a crash
    async with writer(redis, stream) as second:
        assert second.last_sequence == 5
        event = (await second.emit_many([("console.line", {"n": 5}, "worker")]))[0]
    assert event.sequence == 6
    assert eventlog.tail(stream.log_path).sequence == 6  # type: ignore[union-attr]
    assert len(stream.log_path.read_bytes().splitlines()) == 6


async def test_every_published_event_is_already_in_the_log(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_persist")
    listener = Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(stream.channel)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    checked = 0
    async with writer(redis, stream) as w:
        for n in range(50):
            await w.emit_many([("console.line", {"n": n}, "worker")])
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2.0)
            assert message is not None
            sequence = HEAD_DECODER.decode(message["data"]).sequence
            lines = stream.log_path.read_bytes().splitlines()
            assert lines[sequence - 1] == message["data"]  # same bytes, written before publication
            checked += 1
    assert checked == 50
    await pubsub.aclose()
    await listener.aclose()


async def test_an_expired_lease_is_taken_over_and_the_old_writer_is_fenced(
    redis: Redis, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_fence")
    async with writer(redis, stream, lease_ttl_s=0.3) as old:
        await redis.delete(stream.lease_key)  # as if the lease expired while the old writer was stalled
        async with writer(redis, stream) as new:
            await new.emit_many([("console.line", {}, "worker")])
            with anyio.fail_after(2):
                while True:
                    try:
                        await old.emit_many([("console.line", {}, "worker")])
                    except Exception as exc:  # LeaseLost once renewal notices
                        assert type(exc).__name__ == "LeaseLost"
                        break
                    await anyio.sleep(0.05)
