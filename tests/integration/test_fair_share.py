"""Fair share (DESIGN.md invariant 9): one workspace cannot starve another. At most a workspace's cap of its
runs execute at once, across workers; its other runs wait without holding a worker slot, so another
workspace's run takes the slot; when one of its runs ends, its next one starts at once; the bootstrap token
changes the cap; a run whose worker was killed gives its slot back once the reaper ends it.

Each run here waits for a file `go` in its work directory, which the test creates: the test decides when a
run ends, and synchronises on the runs' events, never on sleeps."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from ade.cli.redis_server import RedisServer
from ade.core import keys, paths
from ade.core.models import Plan, Step, Workspace, utcnow
from ade.lifecycle import queue
from ade.lifecycle.queue import PARK_S
from ade.lifecycle.runs import new_run
from ade.records.store import Store
from tests.api import configuration, run, wait_for_end, workspace
from tests.system import AdeSystem, running

pytestmark = pytest.mark.anyio

HOLD = [{"name": "hold", "script": "until [ -e go ]; do sleep 0.02; done"}]


@pytest.fixture
async def redis_of() -> AsyncIterator[dict[str, Redis]]:
    clients: dict[str, Redis] = {}
    yield clients
    for client in clients.values():
        await client.aclose()


def release(system: AdeSystem, run_id: str) -> None:
    """Let a run's step finish."""
    (paths.run_dir(system.data_dir, run_id).work / "go").touch()


async def started(api: httpx.AsyncClient, run_id: str) -> None:
    """Follow a run's events until `run.started`."""
    async with aconnect_sse(api, "GET", f"/runs/{run_id}/events", params={"stream": "true"}) as source:
        async for sse in source.aiter_sse():
            assert sse.event != "end", f"{run_id} ended without starting"
            if sse.event == "ade.event" and json.loads(sse.data)["type"] == "run.started":
                return


async def record(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/runs/{run_id}")).json()
    return body


def at(body: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(body[field])


async def running_set(redis: Redis, ws: str) -> set[str]:
    return {raw.decode() for raw in await redis.smembers(keys.workspace_running(ws))}  # type: ignore[misc]


async def test_a_workspace_at_its_cap_does_not_starve_another(
    tmp_path: Path, redis_of: dict[str, Redis]
) -> None:
    async with (
        running(tmp_path, ADE_WORKER_CONCURRENCY="3", ADE_MAX_RUNNING_PER_WORKSPACE="1") as system,
        system.api_client() as api,
    ):
        redis = redis_of["r"] = Redis.from_url(system.redis.url)
        a, b = await workspace(api, "a"), await workspace(api, "b")
        a_cfg, b_cfg = await configuration(api, a, HOLD), await configuration(api, b, HOLD)
        a_runs = [(await run(api, a_cfg))["id"] for _ in range(4)]
        b_run = (await run(api, b_cfg))["id"]

        await started(api, a_runs[0])
        # B's run, queued after A's four, starts while A's three others wait: they hold no worker slot
        # (3 slots: A's second, third and fourth would otherwise fill the two that are free).
        await started(api, b_run)
        for run_id in a_runs[1:]:
            body = await record(api, run_id)
            assert body["status"] == "queued"
            assert body["waiting"]["reason"] == "workspace_cap"
            assert body["waiting"]["message"] == "1 of 1 runs of this workspace are running"
        assert await running_set(redis, a) == {a_runs[0]}
        assert await running_set(redis, b) == {b_run}

        # A's running run ends: its next one starts at once, not at the park's safety net.
        release(system, a_runs[0])
        await wait_for_end(api, a_runs[0])
        await started(api, a_runs[1])
        first, second = await record(api, a_runs[0]), await record(api, a_runs[1])
        gap_s = (at(second, "started_at") - at(first, "completed_at")).total_seconds()
        assert 0 <= gap_s < 1.0 < PARK_S, gap_s  # and never two of A's runs at once
        assert at(await record(api, b_run), "started_at") < at(second, "started_at")
        assert (await record(api, a_runs[2]))["waiting"]["reason"] == "workspace_cap"

        # Only the bootstrap token changes a workspace's cap.
        created = await api.post(f"/workspaces/{a}/api-keys", json={"name": "admin", "role": "admin"})
        headers = {"Authorization": f"Bearer {created.json()['secret']}"}
        async with httpx.AsyncClient(base_url=api.base_url, headers=headers) as as_a:
            refused = await as_a.patch(f"/workspaces/{a}", json={"max_running_runs": 5})
            assert refused.status_code == 403 and refused.json()["code"] == "bootstrap_only"
            assert (await as_a.get(f"/workspaces/{a}")).json()["max_running_runs"] is None
        raised = await api.patch(f"/workspaces/{a}", json={"max_running_runs": 2})
        assert raised.status_code == 200, raised.text
        assert (await api.get(f"/workspaces/{a}")).json()["max_running_runs"] == 2
        audit = (
            await api.get("/audit-logs", params={"workspace_id": a, "action": "workspace.update"})
        ).json()
        assert [(e["actor"], e["details"]["max_running_runs"]) for e in audit["audit_logs"]] == [
            ("bootstrap", 2)
        ]

        # Raised to 2: A's third run starts at once, beside its second; the fourth waits on the new cap.
        await started(api, a_runs[2])
        assert [(await record(api, r))["status"] for r in a_runs[1:3]] == ["running", "running"]
        fourth = await record(api, a_runs[3])
        assert fourth["waiting"]["message"] == "2 of 2 runs of this workspace are running"
        assert await running_set(redis, a) == set(a_runs[1:3])

        release(system, a_runs[1])
        await started(api, a_runs[3])
        for run_id in [*a_runs[1:], b_run]:
            release(system, run_id)
            assert json.loads((await wait_for_end(api, run_id))[-1].data)["payload"]["status"] == "succeeded"
        assert await running_set(redis, a) == set() and await running_set(redis, b) == set()
        assert await redis.hgetall(keys.RUNNING_RUNS) == {}
        bodies = [await record(api, run_id) for run_id in a_runs]
        spans = [(at(body, "started_at"), at(body, "completed_at")) for body in bodies]
        for moment, _ in spans:  # never more of A's runs at once than its cap (2 from the raise on)
            assert sum(start <= moment < end for start, end in spans) <= 2


async def test_a_lost_workers_run_gives_its_workspace_slot_back_once_reaped(
    tmp_path: Path, redis_of: dict[str, Redis]
) -> None:
    async with (
        running(tmp_path, ADE_LEASE_TTL_S="1", ADE_MAX_RUNNING_PER_WORKSPACE="1") as system,
        system.api_client() as api,
    ):
        redis = redis_of["r"] = Redis.from_url(system.redis.url)
        ws = await workspace(api)
        cfg = await configuration(api, ws, HOLD)
        first, second = [(await run(api, cfg))["id"] for _ in range(2)]
        await started(api, first)
        assert await running_set(redis, ws) == {first}

        system.workers[0].send_signal(signal.SIGKILL)  # mid-step, holding the workspace's only slot
        system.workers[0].wait()
        system.start_worker()  # its reaper ends the run, which gives the slot back

        ended = json.loads((await wait_for_end(api, first))[-1].data)
        assert ended["type"] == "run.completed" and ended["payload"]["failure"]["code"] == "worker_lost"
        await started(api, second)
        assert await running_set(redis, ws) == {second}
        lost, after = await record(api, first), await record(api, second)
        assert at(lost, "completed_at") <= at(after, "started_at")  # the cap held throughout

        release(system, second)
        await wait_for_end(api, second)
        assert await running_set(redis, ws) == set()


async def test_workers_racing_for_a_workspaces_slots_never_exceed_its_cap(
    tmp_path: Path, redis_server: RedisServer, redis_of: dict[str, Redis]
) -> None:
    """Eight workers (Redis clients) see the same twelve due runs of one workspace at once: exactly its cap
    of them take a slot, the others are parked out of the queue's due range; a slot given back makes the
    oldest parked run due at once."""
    url = redis_server.url.removesuffix("/0") + "/7"  # a database of its own: this test owns `ade:queue`
    stores = [Store(redis_of.setdefault(str(n), Redis.from_url(url)), tmp_path) for n in range(8)]
    await stores[0].redis.flushdb()
    ws = Workspace(id="ws_race", name="race", created_at=utcnow(), max_running_runs=3)
    await stores[0].put_workspace(ws)
    plan = Plan(
        configuration_id="cfg_race",
        name="race",
        steps=[Step(name="s", script="true")],
        environment={},
        timeout_s=None,
    )
    runs = [new_run(plan, workspace_id=ws.id, commit=None, input_artifacts=[]) for _ in range(12)]
    for each in runs:
        paths.run_dir(tmp_path, each.id).create()
        await stores[0].put_run(each)
        await queue.enqueue(stores[0].redis, each.id)

    async def worker(store: Store) -> None:
        for each in runs:
            await queue.admit(store, queue.job_id(each.id), default_cap=1)

    await asyncio.gather(*(worker(store) for store in stores))
    redis = stores[0].redis
    holders = await running_set(redis, ws.id)
    assert len(holders) == 3  # its own cap, not the default
    queued = {raw.decode() for raw in await redis.zrangebyscore(keys.QUEUE_NAME, "-inf", "+inf")}
    assert queued == {queue.job_id(r.id) for r in runs}  # every job is still in the queue...
    parked = sorted({r.id for r in runs} - holders)
    now_ms = utcnow().timestamp() * 1000
    for run_id in parked:  # ...but a parked one is not due (arq skips it) before the safety net
        assert (await redis.zscore(keys.QUEUE_NAME, queue.job_id(run_id)) or 0) > now_ms
    waiting = await queue.waiting_for(redis, next(r for r in runs if r.id == parked[0]))
    assert waiting is not None and waiting.reason == "workspace_cap"
    assert waiting.message == "3 of 3 runs of this workspace are running"

    async with redis.pubsub() as nudges:
        await nudges.subscribe(keys.QUEUE_WAKE_CHANNEL)
        await queue.give_back(redis, sorted(holders)[0], ws.id)
        await queue.give_back(redis, sorted(holders)[0], ws.id)  # again: a no-op, nothing more made due
        scores = [await redis.zscore(keys.QUEUE_NAME, queue.job_id(run_id)) or 0 for run_id in parked[:2]]
        now_ms = utcnow().timestamp() * 1000
        assert scores[0] <= now_ms < scores[1]  # the oldest parked run is due now, the next one is not
        assert len(await running_set(redis, ws.id)) == 2
        for _ in range(2):  # the first read may only consume the subscription's confirmation
            message = await nudges.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is not None:
                break
        assert message is not None and message["data"] == parked[0].encode()  # the workers are nudged
    assert await queue.admit(stores[1], queue.job_id(parked[0]), default_cap=1)
    assert await running_set(redis, ws.id) == {*sorted(holders)[1:], parked[0]}
