"""Reliability under faults injected for real: idempotent creates, Redis down at request time."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from tests.api import ade_events, collect_sse, configuration, wait_for_end, workspace
from tests.system import AdeSystem, running

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
    async with running(tmp_path) as system:
        yield system


async def test_redis_down_answers_503_creates_nothing_and_disk_reads_still_work(
    own_system: AdeSystem,
) -> None:
    async with own_system.api_client(timeout_s=30) as api:
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


async def test_redis_restart_mid_stream_loses_no_event(own_system: AdeSystem) -> None:
    async with own_system.api_client() as api:
        ws = await workspace(api)
        script = "for i in $(seq 1 400); do echo line$i; sleep 0.005; done"
        cfg = await configuration(api, ws, [{"name": "s", "script": script}])
        run_id = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        queued = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        received: list[int] = []

        async def subscriber() -> None:
            frames = await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"})
            assert frames[-1].event == "end"
            received.extend(f.id for f in ade_events(frames) if f.id is not None)

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber)
            await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"}, stop_after=60)
            await anyio.to_thread.run_sync(own_system.redis.restart)  # AOF on: same data, same port
        log = (own_system.data_dir / "runs" / run_id / "logs" / "events.ndjson").read_bytes().splitlines()
        assert received == list(range(1, len(log) + 1))  # every sequence exactly once
        assert len([1 for line in log if b'"console.line"' in line]) == 400
        assert (await api.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
        # The run queued before the restart survived it (AOF) and still runs.
        assert (await wait_for_end(api, queued))[-1].data.count('"status":"succeeded"') == 1


async def test_api_restart_mid_stream_resumes_exactly_with_last_event_id(own_system: AdeSystem) -> None:
    async with own_system.api_client() as api:
        ws = await workspace(api)
        cfg = await configuration(
            api, ws, [{"name": "s", "script": "for i in $(seq 1 200); do echo $i; sleep 0.01; done"}]
        )
        run_id = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        first: list[int] = []
        with anyio.fail_after(15):  # SIGTERM ends the stream at once, without `end`
            async with api.stream("GET", f"/runs/{run_id}/events", params={"stream": "true"}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        first.append(int(line[4:]))
                        if len(first) == 30:
                            assert own_system.api is not None
                            own_system.api.terminate()
                    assert line != "event: end"
        assert own_system.api is not None and own_system.api.wait(15) in (0, -15)  # uvicorn re-raises SIGTERM
        own_system.start_api()
        await anyio.to_thread.run_sync(own_system.wait_ready)
        rest = await collect_sse(
            api,
            f"/runs/{run_id}/events",
            params={"stream": "true"},
            headers={"Last-Event-ID": str(first[-1])},
        )
        ids = first + [f.id for f in ade_events(rest) if f.id is not None]
        assert ids == list(range(1, len(ids) + 1)) and rest[-1].event == "end"


async def test_worker_sigterm_lets_short_steps_finish_and_fails_long_ones(tmp_path: Path) -> None:
    async with running(tmp_path, ADE_WORKER_SHUTDOWN_GRACE_S="2") as system, system.api_client() as api:
        ws = await workspace(api)
        short = await configuration(api, ws, [{"name": "s", "script": "echo go; sleep 0.5; echo done"}])
        long = await configuration(api, ws, [{"name": "l", "script": "echo go; sleep 60"}])
        short_run = (await api.post(f"/configurations/{short}/runs", json={})).json()["id"]
        long_run = (await api.post(f"/configurations/{long}/runs", json={})).json()["id"]
        for run_id in (short_run, long_run):
            await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"}, stop_after=4)
        system.workers[0].terminate()  # SIGTERM
        assert await anyio.to_thread.run_sync(system.workers[0].wait, 20) is not None
        short_end = (await api.get(f"/runs/{short_run}")).json()
        long_end = (await api.get(f"/runs/{long_run}")).json()
        assert short_end["status"] == "succeeded"  # finished within the grace period
        assert long_end["status"] == "failed" and long_end["failure"]["code"] == "worker_lost"
        assert "shut down" in long_end["failure"]["message"]


async def test_reindex_rebuilds_everything_after_flushall(own_system: AdeSystem) -> None:
    async with own_system.api_client() as api:
        ws = await workspace(api)
        key = (await api.post(f"/workspaces/{ws}/api-keys", json={"name": "k", "role": "admin"})).json()
        artifact = (await api.post(f"/workspaces/{ws}/artifacts", content=b"input")).json()["key"]
        spec = {"constructor": "shell", "steps": [{"name": "b", "script": "echo built"}]}
        cfg = await configuration(
            api, ws, [{"name": "s", "script": "cat $ADE_INPUT_DIR/in; exit 2"}], build=spec
        )
        body = {"options": {"input_artifacts": [{"key": artifact, "name": "in"}]}}
        first = (await api.post(f"/configurations/{cfg}/runs", json=body)).json()["id"]
        await wait_for_end(api, first)
        second = (await api.post(f"/runs/{first}/rerun")).json()["id"]
        await wait_for_end(api, second)

        async def snapshot() -> dict[str, object]:
            return {
                "runs": (await api.get(f"/workspaces/{ws}/runs")).json(),
                "run": (await api.get(f"/runs/{first}")).json(),
                "events": (await api.get(f"/runs/{first}/events")).json(),
                "cfg": (await api.get(f"/configurations/{cfg}")).json(),
                "cfg_runs": (await api.get(f"/configurations/{cfg}/runs")).json(),
                "builds": (await api.get(f"/configurations/{cfg}/builds")).json(),
                "keys": (await api.get(f"/workspaces/{ws}/api-keys")).json(),
                "audit": (await api.get("/audit-logs", params={"workspace_id": ws})).json(),
                "artifact": (await api.get(f"/artifacts/{artifact}", params={"workspace_id": ws})).content,
                "prefix": (await api.get(f"/runs/{first[:-4]}")).json()["id"],
            }

        before = await snapshot()
        redis = Redis.from_url(own_system.redis.url)
        await redis.flushall()
        await redis.aclose()
        assert (await api.get(f"/workspaces/{ws}/runs")).status_code == 404  # Redis lost it all
        env = {**own_system.env(), "ADE_LOG_LEVEL": "WARNING"}
        done = await anyio.run_process([sys.executable, "-m", "ade.cli", "reindex"], env=env)
        assert b"reindexed 1 workspaces, 1 configurations, 1 API keys, 2 runs, 1 builds" in done.stdout
        assert await snapshot() == before
        async with httpx.AsyncClient(base_url=f"{own_system.base_url}/api/v1", timeout=30) as as_key:
            me = await as_key.get("/whoami", headers={"Authorization": f"Bearer {key['secret']}"})
            assert me.status_code == 200  # the key works again
        third = (await api.post(f"/configurations/{cfg}/runs", json=body)).json()["id"]
        events = [json.loads(f.data) for f in await wait_for_end(api, third)]
        reuse = next(e for e in events if e["type"] == "build.completed")
        assert reuse["payload"]["reused"] is True  # the ready build is found again
        assert (await api.post(f"/runs/{third}/rerun")).json()["attempt"] == 2


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_stalled_subscriber_stays_bounded_and_does_not_delay_others(own_system: AdeSystem) -> None:
    assert own_system.api is not None
    async with own_system.api_client(timeout_s=120) as api:
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "s", "script": "sleep 0.5; seq 1 200000"}])
        run_id = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        rss_before = rss_bytes(own_system.api.pid)
        url = f"/runs/{run_id}/events"
        async with api.stream("GET", url, params={"stream": "true"}) as stalled:  # reads nothing for now
            assert stalled.status_code == 200
            fast = await collect_sse(api, url, params={"stream": "true"})  # a reader that keeps up
            fast_ids = [f.id for f in ade_events(fast)]
            assert fast_ids == list(range(1, len(fast_ids) + 1)) and fast[-1].event == "end"
            rss_peak = rss_bytes(own_system.api.pid)
            # ~80 MB of events went by; the stalled reader holds a bounded queue, not a copy of them.
            print(f"API RSS before {rss_before / 2**20:.1f} MiB, stalled reader: {rss_peak / 2**20:.1f} MiB")
            assert rss_peak - rss_before < 40 * 1024 * 1024, (rss_before, rss_peak)
            stalled_ids = []
            async for line in stalled.aiter_lines():  # it reads again: catches up from the log, exactly
                if line.startswith("id: "):
                    stalled_ids.append(int(line[4:]))
            assert stalled_ids == fast_ids


async def test_log_write_failure_fails_the_run_cleanly(tmp_path: Path) -> None:
    """A worker whose files may not grow past 300 kB (RLIMIT_FSIZE: writes fail with EFBIG, as on a full
    disk): the run fails `internal_error` with the OS's message, the API stays up, the log holds only
    events that were written, and a subscriber's stream still ends."""
    system = AdeSystem(tmp_path, extra_env={"ADE_SSE_KEEPALIVE_S": "0.5"})
    await anyio.to_thread.run_sync(system.start)
    limited: subprocess.Popen[bytes] | None = None
    try:
        system.workers[0].terminate()
        system.workers[0].wait(20)

        def small_files() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

        limited = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on in a thread
            [sys.executable, "-m", "ade.cli", "worker"], env=system.env(), preexec_fn=small_files
        )
        async with system.api_client() as api:
            ws = await workspace(api)
            cfg = await configuration(api, ws, [{"name": "s", "script": "seq 1 20000"}])
            run_id = (await api.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
            frames = await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"})
            assert frames[-1].event == "end"
            resource_ = (await api.get(f"/runs/{run_id}")).json()
            assert resource_["status"] == "failed" and resource_["failure"]["code"] == "internal_error"
            assert (
                "event log" in resource_["failure"]["message"] and "large" in resource_["failure"]["message"]
            )
            log = (system.data_dir / "runs" / run_id / "logs" / "events.ndjson").read_bytes()
            lines = log.splitlines()
            assert log.endswith(b"\n")  # only complete events: the failed write was cut back
            last = json.loads(lines[-1])  # once room was freed, the (small) end could still be written
            if last["type"] == "run.completed":
                assert last["payload"]["failure"]["code"] == "internal_error"
            assert [json.loads(line)["sequence"] for line in lines] == list(range(1, len(lines) + 1))
            assert [f.id for f in ade_events(frames)] == list(range(1, len(lines) + 1))
            async with httpx.AsyncClient(base_url=system.base_url) as root:
                assert (await root.get("/healthz")).status_code == 200
    finally:
        if limited is not None:
            limited.terminate()
            limited.wait(20)
        await anyio.to_thread.run_sync(system.stop)
