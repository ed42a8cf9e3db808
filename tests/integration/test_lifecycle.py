"""Every status change goes through one place: runs that wait too long fail `queue_timeout` without
starting, lost jobs are enqueued again, a queued run says what it waits for, cancelling a queued run does
the same bookkeeping as any other end, and every lifecycle event is exactly its typed catalog struct."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from redis.asyncio import Redis

from ade.events.payloads import CATALOG
from ade.lifecycle.queue import job_id
from tests.api import configuration, events_to_end, run, wait_for_end, workspace
from tests.system import AdeSystem, running

pytestmark = pytest.mark.anyio


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[AdeSystem]:
    """One worker slot, a short lease (the reaper looks every second) and a 3 s queue timeout."""
    env = {"ADE_WORKER_CONCURRENCY": "1", "ADE_LEASE_TTL_S": "2", "ADE_QUEUE_TIMEOUT_S": "3"}
    async with running(tmp_path, **env) as system:
        yield system


async def _blocker(api: httpx.AsyncClient, ws: str) -> str:
    """A run holding the only worker slot until cancelled."""
    cfg = await configuration(api, ws, [{"name": "hold", "script": "sleep 300"}])
    run_id = str((await run(api, cfg))["id"])
    async with api.stream("GET", f"/runs/{run_id}/events", params={"stream": "true"}) as response:
        async for line in response.aiter_lines():
            if '"run.step.started"' in line:
                break
    return run_id


async def test_a_run_queued_past_the_queue_timeout_fails_without_starting(one_slot: AdeSystem) -> None:
    async with one_slot.api_client() as api:
        ws = await workspace(api)
        blocker = await _blocker(api, ws)
        cfg = await configuration(api, ws, [{"name": "never", "script": "echo ran"}])
        waiting = (await run(api, cfg))["id"]
        events = await events_to_end(api, waiting)
        assert [e["type"] for e in events] == ["run.queued", "run.step.skipped", "run.completed"]
        completed = events[-1]["payload"]
        assert completed["status"] == "failed" and completed["failure"]["code"] == "queue_timeout"
        resource = (await api.get(f"/runs/{waiting}")).json()
        assert resource["started_at"] is None and resource["steps"][0]["status"] == "skipped"
        await api.post(f"/runs/{blocker}/cancel")


async def test_a_queued_run_says_what_it_waits_for(tmp_path: Path) -> None:
    async with running(tmp_path, ADE_WORKER_CONCURRENCY="1") as system, system.api_client() as api:
        ws = await workspace(api)
        blocker = await _blocker(api, ws)
        cfg = await configuration(api, ws, [{"name": "s", "script": "true"}])
        first, second = (await run(api, cfg))["id"], (await run(api, cfg))["id"]
        views = [(await api.get(f"/runs/{run_id}")).json()["waiting"] for run_id in (first, second)]
        assert [(v["reason"], v["queue_position"]) for v in views] == [("queue", 1), ("queue", 2)]
        assert "next in the queue" in views[0]["message"]
        assert (await api.get(f"/runs/{blocker}")).json()["waiting"] is None  # running: waits for nothing
        await api.post(f"/runs/{blocker}/cancel")
        for run_id in (first, second):
            assert json.loads((await wait_for_end(api, run_id))[-1].data)["payload"]["status"] == "succeeded"


async def test_a_queued_run_whose_job_was_lost_is_enqueued_again(tmp_path: Path) -> None:
    env = {"ADE_WORKER_CONCURRENCY": "1", "ADE_LEASE_TTL_S": "2"}
    async with running(tmp_path, **env) as system, system.api_client() as api:
        ws = await workspace(api)
        blocker = await _blocker(api, ws)
        cfg = await configuration(api, ws, [{"name": "s", "script": "echo picked up"}])
        lost = (await run(api, cfg))["id"]
        redis = Redis.from_url(system.redis.url)
        try:  # the job disappears as if it had expired or Redis had lost it
            assert await redis.delete(f"arq:job:{job_id(lost)}") == 1
            assert await redis.zrem("ade:queue", job_id(lost)) == 1
        finally:
            await redis.aclose()
        await api.post(f"/runs/{blocker}/cancel")
        events = await events_to_end(api, lost)
        assert events[-1]["payload"]["status"] == "succeeded"
        assert any(e["type"] == "console.line" and e["payload"]["message"] == "picked up" for e in events)


async def test_cancelling_a_queued_run_does_every_ends_bookkeeping(tmp_path: Path) -> None:
    async with running(tmp_path, ADE_WORKER_CONCURRENCY="1") as system, system.api_client() as api:
        ws = await workspace(api)
        blocker = await _blocker(api, ws)
        spec = {"constructor": "shell", "steps": [{"name": "b", "script": "true"}]}
        cfg = await configuration(api, ws, [{"name": "s", "script": "true"}], build=spec)
        queued = await run(api, cfg)
        redis = Redis.from_url(system.redis.url)
        try:
            users = f"ade:build:{queued['build_id']}:users"
            assert await redis.sismember(users, queued["id"])
            before = int(await redis.hget("ade:metrics:runs_finished", "cancelled") or 0)
            assert (await api.post(f"/runs/{queued['id']}/cancel")).json()["status"] == "cancelled"
            assert not await redis.sismember(users, queued["id"])  # retention may expire that build now
            assert int(await redis.hget("ade:metrics:runs_finished", "cancelled") or 0) == before + 1
            assert not await redis.zscore("ade:active", queued["id"])
        finally:
            await redis.aclose()
        steps = (await api.get(f"/runs/{queued['id']}/summary")).json()["steps"]
        assert [(s["name"], s["status"]) for s in steps] == [("s", "skipped")]
        await api.post(f"/runs/{blocker}/cancel")


async def test_every_lifecycle_event_is_exactly_its_catalog_struct(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps = [
        {"name": "ok", "script": 'echo fine; echo \'{"type":"progress","current":1}\' >&$ADE_EVENTS_FD'},
        {"name": "bad", "script": "echo oops >&2; exit 3"},
        {"name": "unreached", "script": "true"},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    events = await events_to_end(client, run_id)
    seen = set()
    for event in events:
        if event["type"].startswith("engine."):
            continue
        struct = msgspec.convert(event["payload"], CATALOG[event["type"]])  # every field known and typed
        assert msgspec.to_builtins(struct) == event["payload"], event  # nothing more, nothing less
        seen.add(event["type"])
    assert seen == {
        "run.queued", "run.started", "run.step.started", "console.line", "run.step.completed",
        "run.step.skipped", "run.completed",
    }  # fmt: skip
