"""Reliability under faults injected for real: idempotent creates, Redis down at request time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.api import configuration, wait_for_end, workspace
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

pytestmark = pytest.mark.anyio


async def test_idempotency_key_returns_the_same_run_and_refuses_another_body(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}])
    url = f"/configurations/{cfg}/runs"
    results: list[httpx.Response] = []

    async def post() -> None:
        results.append(
            await client.post(url, json={"commit": {"branch": "main"}}, headers={"Idempotency-Key": "k1"})
        )

    async with anyio.create_task_group() as tg:  # concurrent retries of one request
        for _ in range(4):
            tg.start_soon(post)
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    other_body = await client.post(url, json={"commit": {"branch": "dev"}}, headers={"Idempotency-Key": "k1"})
    assert other_body.status_code == 409 and other_body.json()["code"] == "idempotency_key_reused"
    other_key = await client.post(url, json={"commit": {"branch": "main"}}, headers={"Idempotency-Key": "k2"})
    assert other_key.json()["id"] != results[0].json()["id"]
    listed = (await client.get(f"/configurations/{cfg}/runs")).json()["items"]
    assert len(listed) == 2
    for item in listed:
        await wait_for_end(client, item["id"])


async def test_idempotency_key_on_builds(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    spec = {"constructor": "shell", "steps": [{"name": "b", "script": "true"}]}
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}], build=spec)
    url = f"/workspaces/{ws}/configurations/{cfg}/builds"
    first = await client.post(url, json={"options": {"force": True}}, headers={"Idempotency-Key": "b1"})
    again = await client.post(url, json={"options": {"force": True}}, headers={"Idempotency-Key": "b1"})
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    refused = await client.post(url, json={"options": {"force": False}}, headers={"Idempotency-Key": "b1"})
    assert refused.status_code == 409 and refused.json()["code"] == "idempotency_key_reused"
    assert len((await client.get(f"/configurations/{cfg}/builds")).json()) == 1


@pytest.fixture
async def own_system(tmp_path: Path) -> AsyncIterator[AdeSystem]:
    system = AdeSystem(tmp_path)
    await anyio.to_thread.run_sync(system.start)
    try:
        yield system
    finally:
        await anyio.to_thread.run_sync(system.stop)


async def test_redis_down_answers_503_creates_nothing_and_disk_reads_still_work(
    own_system: AdeSystem,
) -> None:
    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    async with httpx.AsyncClient(
        base_url=f"{own_system.base_url}/api/v1", headers=headers, timeout=30
    ) as api:
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "s", "script": "seq 1 5"}])
        done = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        await wait_for_end(api, done)
        runs_dir = own_system.data_dir / "runs"
        before = sorted(p.name for p in runs_dir.iterdir())

        await anyio.to_thread.run_sync(own_system.redis.stop)
        refused = await api.post(f"/configurations/{cfg}/runs", json={})
        assert refused.status_code == 503 and refused.json()["code"] == "redis_unavailable"
        new_cfg = await api.post(
            f"/workspaces/{ws}/configurations", json={"name": "x", "steps": [{"name": "s", "script": "true"}]}
        )
        assert new_cfg.status_code == 503
        assert sorted(p.name for p in runs_dir.iterdir()) == before  # nothing half-created
        assert sorted(p.name for p in (own_system.data_dir / "configurations").iterdir()) == [f"{cfg}.json"]
        # What only needs the disk keeps working: the run and its log.
        assert (await api.get(f"/runs/{done}")).json()["status"] == "succeeded"
        page = (await api.get(f"/runs/{done}/events")).json()
        assert page["items"][-1]["type"] == "run.completed"
        async with httpx.AsyncClient(base_url=own_system.base_url) as root:
            ready = await root.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")

        await anyio.to_thread.run_sync(own_system.redis.start)  # same port, data back from the AOF
        with anyio.fail_after(20):
            while (await api.post(f"/configurations/{cfg}/runs", json={})).status_code != 201:  # noqa: ASYNC110
                await anyio.sleep(0.1)  # the API reconnects on its own schedule
