"""Hub and SSE against a real Redis: a stalled reader stays bounded and then catches up exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.events import hub as hub_module
from ade.events.envelope import EventHead, StreamRef
from ade.events.follow import stream_frames
from ade.events.hub import Hub, Recent, Subscription
from ade.events.payloads import RunCompleted
from ade.events.writer import Identity, StreamWriter

pytestmark = pytest.mark.anyio


def test_recent_events_are_bounded_dense_and_shared() -> None:
    recent = Recent(capacity=8)
    for n in range(1, 101):
        recent.append(EventHead(n, "console.line"), b"x%d" % n)
    assert 8 <= len(recent.heads) <= recent.max_events == 10 and recent.last_sequence == 100
    assert recent.after(50) is None  # no longer held: the reader reads the log
    live = recent.after(97)
    assert live is not None and [head.sequence for head in live.heads] == [98, 99, 100]
    assert live.lines == [b"x98", b"x99", b"x100"]
    assert live.frames[0] == b"id: 98\nevent: ade.event\ndata: x98\n\n"
    assert recent.after(100) == ([], [], []) and recent.after(120) == ([], [], [])  # nothing new yet
    recent.append(EventHead(99, "console.line"), b"again")  # published twice: the first one counts
    assert recent.after(98) == (
        [EventHead(99, "console.line"), EventHead(100, "console.line")],
        [b"x99", b"x100"],
        live.frames[1:],
    )
    recent.append(EventHead(105, "console.line"), b"x105")  # 101..104 went by unseen: it starts afresh
    assert recent.after(100) is None
    live = recent.after(104)
    assert live is not None and live.lines == [b"x105"]


def test_readers_take_from_one_recent_after_their_own_sequence() -> None:
    recent = Recent(capacity=8)
    slow, fast = Subscription(recent), Subscription(recent)
    for n in range(1, 6):
        recent.append(EventHead(n, "console.line"), b"x")
    assert [h.sequence for h in fast.take(0).heads] == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
    assert [h.sequence for h in slow.take(3).heads] == [4, 5]  # type: ignore[union-attr]
    assert fast.queued_events == 5 and slow.queued_events == 2  # until each takes again


@pytest.fixture
async def hub(redis_server: RedisServer) -> AsyncIterator[Hub]:
    hub = Hub(Redis.from_url(redis_server.url), subscriber_queue_events=16)
    await hub.start()
    yield hub
    await hub.stop()


def ids_in(chunk: bytes) -> list[int]:
    return [int(line[4:]) for line in chunk.split(b"\n") if line.startswith(b"id: ")]


async def test_stalled_reader_stays_bounded_then_catches_up_exactly(
    hub: Hub, redis_server: RedisServer, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_slow")
    redis = Redis.from_url(redis_server.url)
    frames = stream_frames(hub, stream, 0, keepalive_s=5, retry_ms=2000, page_events=100)
    assert await frames.__anext__() == b"retry: 2000\n\n"
    received: list[int] = []
    largest_backlog = 0
    async with StreamWriter(
        redis, stream, Identity(workspace_id="ws", run_id="run_slow"), lease_ttl_s=5
    ) as w:
        await w.emit_many([("run.queued", {}, "worker")])
        received += ids_in(await frames.__anext__())  # the reader is now live, then stalls
        for batch in range(50):
            await w.emit_many([("console.line", {"n": batch * 100 + i}, "worker") for i in range(100)])
            largest_backlog = max(largest_backlog, hub.largest_backlog)
        await w.emit(RunCompleted(status="succeeded"))
    with anyio.fail_after(30):
        async for chunk in frames:  # the reader resumes
            received += ids_in(chunk)
            if chunk.endswith(b"event: end\ndata: {}\n\n"):
                break
    assert received == list(range(1, 5003))
    assert 0 < largest_backlog <= 16 * 5 // 4  # the hub's Recent: 16 events, trimmed past a quarter more
    await redis.aclose()


async def test_reader_that_attaches_after_the_end_gets_replay_then_end(
    hub: Hub, redis_server: RedisServer, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_done")
    redis = Redis.from_url(redis_server.url)
    async with StreamWriter(
        redis, stream, Identity(workspace_id="ws", run_id="run_done"), lease_ttl_s=5
    ) as w:
        await w.emit_many([("console.line", {"n": i}, "worker") for i in range(2500)])
        await w.emit(RunCompleted(status="succeeded"))
    chunks = [
        chunk async for chunk in stream_frames(hub, stream, 1200, keepalive_s=5, retry_ms=1, page_events=1000)
    ]
    assert [i for chunk in chunks for i in ids_in(chunk)] == list(range(1201, 2502))
    assert chunks[-1] == b"event: end\ndata: {}\n\n"
    await redis.aclose()


async def test_idle_stream_sends_keepalive_comments(hub: Hub, tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_idle")
    frames = stream_frames(hub, stream, 0, keepalive_s=0.05, retry_ms=2000, page_events=10)
    assert await frames.__anext__() == b"retry: 2000\n\n"
    with anyio.fail_after(5):
        assert await frames.__anext__() == b": keepalive\n\n"
        assert await frames.__anext__() == b": keepalive\n\n"
    await frames.aclose()


async def test_stream_ends_when_its_record_ended_but_the_log_could_not_say_so(
    hub: Hub, tmp_path: Path
) -> None:
    stream = StreamRef.for_run(tmp_path, "run_disk_full")
    stream.log_path.parent.mkdir(parents=True)
    stream.log_path.write_bytes(b'{"type":"run.queued","sequence":1}\n')
    record_ended = False

    async def ended() -> bool:
        return record_ended

    frames = stream_frames(hub, stream, 0, keepalive_s=0.05, retry_ms=1, page_events=10, ended=ended)
    assert await frames.__anext__() == b"retry: 1\n\n"
    assert ids_in(await frames.__anext__()) == [1]
    assert await frames.__anext__() == b": keepalive\n\n"  # still running: the stream stays open
    record_ended = True  # the worker recorded `failed` but could not append run.completed
    with anyio.fail_after(5):
        rest = [chunk async for chunk in frames]
    assert rest[-1] == b"event: end\ndata: {}\n\n"
    assert all(not ids_in(chunk) for chunk in rest)  # no event was invented


@pytest.mark.parametrize("refuse_every", [0, 3])
async def test_frames_written_from_the_hub_flush_and_by_the_reader_are_exact(
    hub: Hub, redis_server: RedisServer, tmp_path: Path, refuse_every: int
) -> None:
    """Live frames go out through `direct` from the hub's flush while the reader waits; whatever `direct`
    refuses (a client that does not keep up) the reader sends itself: together, every id once, in order."""
    stream = StreamRef.for_run(tmp_path, "run_direct")
    redis = Redis.from_url(redis_server.url)
    sent: list[bytes] = []
    calls = written_directly = 0

    def direct(data: bytes) -> bool:
        nonlocal calls, written_directly
        calls += 1
        if refuse_every and calls % refuse_every == 0:
            return False
        sent.append(data)
        written_directly += 1
        return True

    frames = stream_frames(hub, stream, 0, keepalive_s=5, retry_ms=1, page_events=100, direct=direct)
    assert await frames.__anext__() == b"retry: 1\n\n"
    async with StreamWriter(
        redis, stream, Identity(workspace_id="ws", run_id="run_direct"), lease_ttl_s=5
    ) as w:
        await w.emit_many([("run.queued", {}, "worker")])
        sent.append(await frames.__anext__())  # the reader is live and waits now
        reader = asyncio.create_task(_rest(frames, sent))
        for batch in range(20):
            await w.emit_many([("console.line", {"n": batch * 10 + i}, "worker") for i in range(10)])
            await asyncio.sleep(0.005)
        await w.emit(RunCompleted(status="succeeded"))
    with anyio.fail_after(10):
        await reader
    assert [i for chunk in sent for i in ids_in(chunk)] == list(range(1, 203))
    assert sent[-1].endswith(b"event: end\ndata: {}\n\n") and written_directly > 0
    await redis.aclose()


async def _rest(frames: AsyncIterator[bytes], sent: list[bytes]) -> None:
    async for chunk in frames:
        if chunk != b": keepalive\n\n":
            sent.append(chunk)


def test_a_send_that_would_wait_is_closed_unwritten() -> None:
    from ade.api.streams import DirectWrites

    written: list[bytes] = []
    waiting = False

    class Drain:
        def __await__(self) -> Generator[None, None, None]:
            yield  # uvicorn: waiting for a slow client's socket to drain, before it writes anything

    async def send(message: Any) -> None:
        if waiting:
            await Drain()
        written.append(message["body"])

    direct = DirectWrites()
    assert not direct(b"a")  # no response yet
    direct.send = send
    assert direct(b"b") and written == [b"b"]
    waiting = True
    assert not direct(b"c") and written == [b"b"]  # the stream's task sends it instead


async def test_a_coalescing_window_runs_from_the_last_flush_not_from_the_next_event(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a quiet spell a live event wakes its readers at once; the ones right behind it wait for the
    end of the window that this flush opened. (A window counted from the first event after a flush would
    hold every event of a quiet stream for a whole window, and add a window of idling after a long flush.)"""
    monkeypatch.setattr(hub_module, "COALESCE_PER_SUBSCRIBER_S", 2.0)  # one subscriber: a 2 s window
    hub = Hub(Redis.from_url(redis_server.url), subscriber_queue_events=16, coalesce_max_s=2.0)
    await hub.start()
    redis = Redis.from_url(redis_server.url)
    stream = StreamRef.for_run(tmp_path, "run_window")
    loop = asyncio.get_running_loop()
    try:
        async with (
            hub.subscribe(stream.channel) as sub,
            StreamWriter(redis, stream, Identity(workspace_id="ws", run_id="run_window"), lease_ttl_s=5) as w,
        ):
            assert sub.take(0) == ([], [], [])  # (the subscription's confirmation woke it)
            began = loop.time()
            await w.emit_many([("console.line", {"n": 1}, "worker")])
            assert await sub.wait(10)
            first_s = loop.time() - began
            assert [head.sequence for head in sub.take(0).heads] == [1]  # type: ignore[union-attr]
            await w.emit_many([("console.line", {"n": 2}, "worker")])
            assert await sub.wait(10)
            second_s = loop.time() - began
            assert [head.sequence for head in sub.take(1).heads] == [2]  # type: ignore[union-attr]
    finally:
        await hub.stop()
        await redis.aclose()
    assert first_s < 1.0 <= second_s, (first_s, second_s)
