"""Stream slots (ADE_MAX_STREAMS_PER_KEY) against a real Redis: kept together by one renewal for the whole
process, given back one by one, and lapsing by themselves when their process stops renewing them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest
from redis.asyncio import Redis

from ade.api.stream_slots import StreamSlots
from ade.api.streams import EventStream
from ade.cli.redis_server import RedisServer
from ade.core import keys
from ade.core.errors import TooManyRequests
from ade.events.follow import Stop

pytestmark = pytest.mark.anyio
TTL_S = 0.6  # renewed every 0.2 s
LIMIT = 3


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_slots_outlive_their_ttl_while_renewed_and_the_limit_holds(redis: Redis) -> None:
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    taken = [await slots.take("key_renewed") for _ in range(LIMIT)]
    keeper = asyncio.ensure_future(slots.keep_forever())
    try:
        first_expiry = await redis.zscore(keys.sse_slots("key_renewed"), taken[0].member)
        assert first_expiry is not None
        with anyio.fail_after(5):  # the renewal pushes every slot's lapse back (Redis state: polled)
            while (await redis.zscore(keys.sse_slots("key_renewed"), taken[0].member) or 0) <= first_expiry:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        await anyio.sleep(TTL_S * 2)  # well past the TTL the slots were taken with
        with pytest.raises(TooManyRequests):
            await slots.take("key_renewed")
        assert await redis.zcard(keys.sse_slots("key_renewed")) == LIMIT
        assert await redis.pttl(keys.sse_slots("key_renewed")) > 0  # the set itself does not lapse either
    finally:
        keeper.cancel()


async def test_a_given_back_slot_is_free_at_once_and_is_not_renewed_back(redis: Redis) -> None:
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    taken = [await slots.take("key_back") for _ in range(LIMIT)]
    await slots.release(taken[0])
    assert slots.held == LIMIT - 1
    await slots.renew()
    members = {raw.decode() for raw in await redis.zrange(keys.sse_slots("key_back"), 0, -1)}
    assert members == {slot.member for slot in taken[1:]}
    await slots.take("key_back")  # the freed slot


async def test_slots_lost_with_redis_data_are_counted_again_at_the_next_renewal(redis: Redis) -> None:
    """Redis lost the set (a restart without persistence, an outage past the TTL): the streams are still
    open, so the next renewal counts their slots again and the limit holds for them."""
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    taken = [await slots.take("key_lost") for _ in range(LIMIT)]
    await redis.delete(keys.sse_slots("key_lost"))
    await slots.renew()
    members = {raw.decode() for raw in await redis.zrange(keys.sse_slots("key_lost"), 0, -1)}
    assert members == {slot.member for slot in taken}
    with pytest.raises(TooManyRequests):
        await StreamSlots(redis, LIMIT, ttl_s=TTL_S).take("key_lost")


async def test_a_slot_given_back_during_a_renewal_is_not_renewed_back(redis: Redis) -> None:
    """The renewal re-adds every slot it holds. A big one reaches Redis in pieces, and Redis serves other
    connections between them: a slot given back meanwhile must not be re-added by the rest of it."""
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    actors = [f"key_race_{n}" for n in range(3_000)]
    taken = [await slots.take(actor) for actor in actors]  # the last one is renewed last
    await asyncio.gather(*(redis.ping() for _ in range(2)))  # a connection for each, ready
    renewal = asyncio.ensure_future(slots.renew())
    await asyncio.sleep(0)  # the renewal has its snapshot (every slot) and is sending it
    await slots.release(taken[-1])
    await renewal
    assert await redis.zcard(keys.sse_slots(actors[-1])) == 0
    assert await redis.zcard(keys.sse_slots(actors[-2])) == 1


async def test_slots_lapse_by_themselves_when_their_process_stops_renewing(redis: Redis) -> None:
    crashed = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    for _ in range(LIMIT):
        await crashed.take("key_lapsed")
    other_process = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    with pytest.raises(TooManyRequests):
        await other_process.take("key_lapsed")
    with anyio.fail_after(5):  # nobody renews them: within the TTL they are free again
        while True:
            try:
                await other_process.take("key_lapsed")
                break
            except TooManyRequests:
                await anyio.sleep(0.05)


async def test_each_key_counts_its_own_slots(redis: Redis) -> None:
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    for _ in range(LIMIT):
        await slots.take("key_one")
    await slots.take("key_two")
    assert slots.held == LIMIT + 1


async def test_a_response_that_never_started_gives_its_slot_back_and_closes_its_stop(redis: Redis) -> None:
    """The client left before the response could start (its `send` fails at once): nothing keeps, and
    renews, a slot nobody uses, and the key watch forgets the stream."""
    slots = StreamSlots(redis, LIMIT, ttl_s=TTL_S)
    slot = await slots.take("key_gone")
    closed: list[bool] = []

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"

    stream = EventStream(
        frames(), slot=slot, slots=slots, stop=Stop(lambda: closed.append(True)), media_type="x"
    )
    response = stream.to_asgi_response(app=None, request=None)  # type: ignore[arg-type]

    async def receive() -> dict[str, object]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        raise OSError("the client is gone")

    with pytest.raises(OSError):
        await response({"type": "http", "method": "GET"}, receive, send)  # type: ignore[arg-type]
    assert slots.held == 0
    assert await redis.zcard(keys.sse_slots("key_gone")) == 0
    assert closed == [True]
