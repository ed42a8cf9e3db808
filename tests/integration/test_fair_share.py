"""Fair share (DESIGN.md invariant 9): one workspace cannot starve another. At most a workspace's cap of its
runs execute at once, across workers; its other runs wait without holding a worker slot, so another
workspace's run takes the slot; when one of its runs ends, its next one starts at once; the bootstrap token
changes the cap; a run whose worker was killed gives its slot back once the reaper ends it.

Each run here waits for a file `go` in its work directory, which the test creates: the test decides when a
run ends, and synchronises on the runs' events, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
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

# Waits for `go` in its work directory (at most a minute: a failed test leaves nothing spinning).
HOLD = [{"name": "hold", "script": "for i in $(seq 1200); do [ -e go ] && exit 0; sleep 0.05; done; exit 1"}]
WAIT_S = 60.0  # a test that is going wrong fails, it does not hang


@dataclass
class Scene:
    """A real system (its API with the bootstrap token, its Redis) and the runs the test made."""

    system: AdeSystem
    api: httpx.AsyncClient
    redis: Redis
    runs: list[str] = field(default_factory=list)

    async def submit(self, cfg: str) -> str:
        run_id = str((await run(self.api, cfg))["id"])
        self.runs.append(run_id)
        return run_id

    def release(self, run_id: str) -> None:
        """Let a run's step finish."""
        (paths.run_dir(self.system.data_dir, run_id).work / "go").touch()

    async def started(self, run_id: str) -> dict[str, Any]:
        """Follow a run's events until `run.started`; that event. (It comes before the record says so.)"""
        with anyio.fail_after(WAIT_S):
            url = f"/runs/{run_id}/events"
            async with aconnect_sse(self.api, "GET", url, params={"stream": "true"}) as source:
                async for sse in source.aiter_sse():
                    assert sse.event != "end", f"{run_id} ended without starting"
                    event: dict[str, Any] = json.loads(sse.data) if sse.event == "ade.event" else {}
                    if event.get("type") == "run.started":
                        return event
        raise AssertionError(f"{run_id}'s stream closed before it started")

    async def ended(self, run_id: str) -> dict[str, Any]:
        """Follow a run's events until it ends; its `run.completed`."""
        with anyio.fail_after(WAIT_S):
            completed: dict[str, Any] = json.loads((await wait_for_end(self.api, run_id))[-1].data)
            return completed

    async def record(self, run_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.api.get(f"/runs/{run_id}")).json()
        return body

    async def holders(self, ws: str) -> set[str]:
        """The runs holding one of the workspace's slots."""
        return await running_set(self.redis, ws)

    async def given_back(self, *run_ids: str) -> None:
        """Wait until these ended runs have given their workspace slots back. A run gives its slot back just
        after its `run.completed` (so nobody sees more of a workspace's runs running than its cap): its end
        event comes first. Awaited on Redis's own notice that the slot holders changed, never on a sleep."""
        await self.redis.config_set("notify-keyspace-events", "Khg")  # hash commands and deletions
        async with self.redis.pubsub() as notices:
            db = self.redis.connection_pool.connection_kwargs.get("db", 0)
            await notices.subscribe(f"__keyspace@{db}__:{keys.RUNNING_RUNS}")
            with anyio.fail_after(WAIT_S):
                while any(await self.redis.hmget(keys.RUNNING_RUNS, list(run_ids))):  # type: ignore[misc]
                    await notices.get_message(timeout=WAIT_S)


@contextlib.asynccontextmanager
async def scene(tmp_path: Path, **env: str) -> AsyncIterator[Scene]:
    async with running(tmp_path, **env) as system, system.api_client() as api:
        redis = Redis.from_url(system.redis.url)
        made = Scene(system, api, redis)
        try:
            yield made
        finally:
            for run_id in made.runs:  # whatever happened, nothing is left waiting when the system stops
                with contextlib.suppress(OSError):
                    made.release(run_id)
            await redis.aclose()


@pytest.fixture
async def redis_of() -> AsyncIterator[dict[str, Redis]]:
    clients: dict[str, Redis] = {}
    yield clients
    for client in clients.values():
        await client.aclose()


def at(body: dict[str, Any], field_name: str) -> datetime:
    return datetime.fromisoformat(body[field_name])


async def running_set(redis: Redis, ws: str) -> set[str]:
    return {raw.decode() for raw in await redis.smembers(keys.workspace_running(ws))}  # type: ignore[misc]


async def test_a_workspace_at_its_cap_does_not_starve_another(tmp_path: Path) -> None:
    async with scene(tmp_path, ADE_WORKER_CONCURRENCY="3", ADE_MAX_RUNNING_PER_WORKSPACE="1") as it:
        api = it.api
        a, b = await workspace(api, "a"), await workspace(api, "b")
        a_cfg, b_cfg = await configuration(api, a, HOLD), await configuration(api, b, HOLD)
        a_runs = [await it.submit(a_cfg) for _ in range(4)]
        b_run = await it.submit(b_cfg)

        await it.started(a_runs[0])
        # B's run, queued after A's four, starts while A's three others wait: they hold no worker slot (of
        # the 3, A's first holds one; A's three others would otherwise take the other two).
        b_started = await it.started(b_run)
        for run_id in a_runs[1:]:
            body = await it.record(run_id)
            assert body["status"] == "queued"
            assert body["waiting"]["reason"] == "workspace_cap"
            assert body["waiting"]["message"] == "1 of 1 runs of this workspace are running"
        assert await it.holders(a) == {a_runs[0]} and await it.holders(b) == {b_run}

        # A's running run ends: its next one starts at once, not at the park's safety net.
        it.release(a_runs[0])
        first_ended = await it.ended(a_runs[0])
        second_started = await it.started(a_runs[1])
        gap_s = (at(second_started, "created_at") - at(first_ended, "created_at")).total_seconds()
        assert 0 <= gap_s < 1.0 < PARK_S, gap_s  # and never two of A's runs at once
        assert at(b_started, "created_at") < at(second_started, "created_at")
        assert (await it.record(a_runs[2]))["waiting"]["reason"] == "workspace_cap"

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
        await it.started(a_runs[2])
        fourth = await it.record(a_runs[3])
        assert fourth["waiting"]["message"] == "2 of 2 runs of this workspace are running"
        assert await it.holders(a) == set(a_runs[1:3])

        # Every worker slot is busy (A's two, B's one), and B's next run queues behind A's fourth. B's run
        # ends: the free slot goes to B's next run, not to A's fourth, ahead of it but over A's cap.
        b_next = await it.submit(b_cfg)
        it.release(b_run)
        await it.started(b_next)
        fourth = await it.record(a_runs[3])
        assert fourth["status"] == "queued" and fourth["waiting"]["reason"] == "workspace_cap"

        it.release(a_runs[1])
        await it.started(a_runs[3])
        for run_id in [*a_runs[1:], b_run, b_next]:
            it.release(run_id)
            assert (await it.ended(run_id))["payload"]["status"] == "succeeded"
        await it.given_back(*a_runs, b_run, b_next)
        assert await it.holders(a) == set() and await it.holders(b) == set()
        assert await it.redis.hgetall(keys.RUNNING_RUNS) == {}  # type: ignore[misc]
        bodies = [await it.record(run_id) for run_id in a_runs]
        spans = [(at(body, "started_at"), at(body, "completed_at")) for body in bodies]
        for moment, _ in spans:  # never more of A's runs at once than its cap (2 from the raise on)
            assert sum(start <= moment < end for start, end in spans) <= 2
        assert spans[0][1] <= spans[1][0] and spans[2][0] < spans[1][1]  # one at a time, then two at once


async def test_a_lost_workers_run_gives_its_workspace_slot_back_once_reaped(tmp_path: Path) -> None:
    async with scene(tmp_path, ADE_LEASE_TTL_S="1", ADE_MAX_RUNNING_PER_WORKSPACE="1") as it:
        ws = await workspace(it.api)
        cfg = await configuration(it.api, ws, HOLD)
        first, second = [await it.submit(cfg) for _ in range(2)]
        await it.started(first)
        assert await it.holders(ws) == {first}

        it.system.workers[0].send_signal(signal.SIGKILL)  # mid-step, holding the workspace's only slot
        it.system.workers[0].wait()
        it.system.start_worker()  # its reaper ends the run, which gives the slot back

        ended = await it.ended(first)
        assert ended["type"] == "run.completed" and ended["payload"]["failure"]["code"] == "worker_lost"
        after = await it.started(second)
        assert at(ended, "created_at") <= at(after, "created_at")  # the cap held throughout
        assert await it.holders(ws) == {second}

        it.release(second)
        await it.ended(second)
        await it.given_back(second)
        assert await it.holders(ws) == set()


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
