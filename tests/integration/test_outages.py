"""Redis outages for real (the suite's Redis stopped and started again, AOF on) while a run prints a line
every ~100 ms: no process exits, the run ends `succeeded`, a subscriber that stays attached gets every
event exactly once, mutations during the outage answer 503 and create nothing, and the worker logs the
outage once instead of once per failed call (DESIGN.md §2 invariant 5)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import SSEError, aconnect_sse

from tests.api import configuration, run, wait_for_end, workspace
from tests.system import AdeSystem, running

pytestmark = pytest.mark.anyio

# Prints a numbered line every ~100 ms until the test drops a `stop` file into the run's work directory
# (the step's working directory), so the test decides when the run ends, after the outage.
TICKER = "i=0; while [ ! -e stop ]; do i=$((i+1)); echo tick$i; sleep 0.1; done; echo stopped"
ERROR_SHAPE = {"error", "code", "details"}


class Follower:
    """An SSE subscriber that stays attached to a run through anything: when its stream breaks or is
    refused (503 while Redis is down) it reconnects with `Last-Event-ID`, like EventSource."""

    def __init__(self, api: httpx.AsyncClient, run_id: str) -> None:
        self._api, self._url = api, f"/runs/{run_id}/events"
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self.reconnects = 0

    async def follow(self) -> None:
        while True:
            headers = {"Last-Event-ID": str(self.events[-1]["sequence"])} if self.events else {}
            try:
                async with aconnect_sse(
                    self._api, "GET", self._url, params={"stream": "true"}, headers=headers
                ) as source:
                    if source.response.status_code == 200:
                        async for sse in source.aiter_sse():
                            if sse.event == "end":
                                self.ended = True
                                return
                            if sse.event == "ade.event":
                                event = json.loads(sse.data)
                                assert int(sse.id) == event["sequence"]
                                self.events.append(event)
            except (httpx.HTTPError, SSEError):
                pass
            self.reconnects += 1
            await anyio.sleep(0.2)

    @property
    def sequences(self) -> list[int]:
        return [event["sequence"] for event in self.events]

    def ticks(self) -> int:
        return sum(1 for event in self.events if event["type"] == "console.line")

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float) -> None:
        with anyio.fail_after(timeout_s):
            while not condition():  # noqa: ASYNC110 - condition on what the stream delivered
                await anyio.sleep(0.05)


def files_under(root: Path, *, skip: Path) -> list[str]:
    """Every file of the data dir outside `skip`, except content-addressed artifact bytes: a refused upload
    may leave its bytes there (`ArtifactStore.save` places them before it indexes them), unowned, as a
    later upload of the same bytes would (known, not changed here)."""
    blobs = root / "artifacts" / "sha256"
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and skip not in path.parents and blobs not in path.parents
    )


async def mutations_are_refused(api: httpx.AsyncClient, ws: str, cfg: str, done_run: str) -> None:
    """While Redis is down every kind of create answers 503 in the error shape."""
    new_cfg = {"name": "x", "steps": [{"name": "s", "script": "true"}]}
    attempts = [
        ("POST", f"/configurations/{cfg}/runs", {"json": {}}),
        ("POST", "/workspaces", {"json": {"name": "during-outage"}}),
        ("POST", f"/workspaces/{ws}/configurations", {"json": new_cfg}),
        ("POST", f"/workspaces/{ws}/api-keys", {"json": {"name": "k", "role": "viewer"}}),
        ("POST", f"/workspaces/{ws}/artifacts", {"content": b"an input"}),
        ("POST", f"/runs/{done_run}/rerun", {}),
    ]
    for method, url, kwargs in attempts:
        response = await api.request(method, url, **kwargs)
        assert response.status_code == 503, (url, response.status_code, response.text)
        assert set(response.json()) == ERROR_SHAPE and response.json()["code"] == "redis_unavailable"


async def survive_an_outage(root: Path, outage_s: float) -> None:
    async with running(root) as system, system.api_client(timeout_s=30) as api:
        worker = system.workers[0]
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "tick", "script": TICKER}])
        quick = await configuration(api, ws, [{"name": "s", "script": "echo hi"}])
        done_run = (await run(api, quick))["id"]
        await wait_for_end(api, done_run)
        run_id = (await run(api, cfg))["id"]
        follower = Follower(api, run_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(follower.follow)
            await follower.wait_until(lambda: follower.ticks() >= 3, 30)
            runs_before = await run_ids(api, ws)
            run_dir = system.data_dir / "runs" / run_id
            files_before = files_under(system.data_dir, skip=run_dir)
            log_lines_before = worker_log_lines(system)

            stopped_at = time.time()
            await anyio.to_thread.run_sync(system.redis.stop)
            if outage_s >= 10:
                await mutations_are_refused(api, ws, cfg, done_run)
            else:
                refused = await api.post(f"/configurations/{cfg}/runs", json={})
                assert refused.status_code == 503 and set(refused.json()) == ERROR_SHAPE
            await anyio.sleep(outage_s - (time.time() - stopped_at))
            await anyio.to_thread.run_sync(system.redis.start)  # same port, data back from the AOF
            restarted_at = time.time()

            # The step kept running (its lines went to the log during the outage) ...
            log_path = run_dir / "logs" / "events.ndjson"
            logged = [json.loads(line) for line in log_path.read_bytes().splitlines()]
            during = [e for e in logged if stopped_at + 0.5 < _ts(e) < restarted_at - 0.5]
            assert len(during) >= (outage_s - 1) * 5, len(during)  # ~10 a second while Redis was away
            # ... and the subscriber gets it all once Redis is back, then the run's newer lines live.
            ticks_now = follower.ticks()
            await follower.wait_until(lambda: follower.ticks() > ticks_now + 10, 30)
            assert worker.poll() is None and system.api is not None and system.api.poll() is None
            (run_dir / "work" / "stop").touch()
            await follower.wait_until(lambda: follower.ended, 30)
            tg.cancel_scope.cancel()

        logged_bytes = log_path.read_bytes().splitlines()
        assert follower.sequences == list(range(1, len(logged_bytes) + 1))  # every event exactly once
        assert follower.events[-1]["type"] == "run.completed"
        assert follower.events[-1]["payload"]["status"] == "succeeded"
        assert (await api.get(f"/runs/{run_id}")).json()["status"] == "succeeded"

        # The refused mutations created nothing, in Redis or on disk.
        assert await run_ids(api, ws) == runs_before
        files_after = files_under(system.data_dir, skip=run_dir)
        assert files_after == files_before, set(files_after) ^ set(files_before)

        # A run created now is picked up at once: the wake-up listener and arq's poll are back.
        created = await run(api, quick)
        with anyio.fail_after(30):
            await wait_for_end(api, created["id"])
        finished = (await api.get(f"/runs/{created['id']}")).json()
        pickup_s = _parse(finished["started_at"]) - _parse(finished["created_at"])
        assert finished["status"] == "succeeded" and pickup_s < 1.0, pickup_s

        assert worker.poll() is None  # the worker lived through it all
        outage_log = worker_log_lines(system)[len(log_lines_before) :]
        print(f"subscriber reconnected {follower.reconnects} times; pickup after the outage {pickup_s:.3f} s")
        print(f"worker log lines during and after a {outage_s:g} s outage:", *outage_log, sep="\n  ")
        assert len([line for line in outage_log if "Redis unreachable" in line]) == 1, outage_log
        assert len([line for line in outage_log if "Redis reachable again" in line]) == 1, outage_log
        assert len(outage_log) <= 4, outage_log  # lost, back, the lease taken again: not one per call
        if outage_s > 10:  # longer than the lease TTL: the lease expired inside Redis meanwhile
            assert any(f"lease of {run_id} expired while Redis was away" in line for line in outage_log)


async def run_ids(api: httpx.AsyncClient, ws: str) -> list[str]:
    return [item["id"] for item in (await api.get(f"/workspaces/{ws}/runs")).json()["items"]]


def worker_log_lines(system: AdeSystem) -> list[str]:
    return (system.root / "worker0.log").read_text(errors="replace").splitlines()


def _parse(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _ts(event: dict[str, Any]) -> float:
    return _parse(event["created_at"])


async def test_a_2s_redis_outage_mid_run_loses_nothing_and_kills_nothing(tmp_path: Path) -> None:
    await survive_an_outage(tmp_path, 2.0)


async def test_a_30s_redis_outage_mid_run_loses_nothing_and_kills_nothing(tmp_path: Path) -> None:
    """Long enough for the run's stream lease to expire inside Redis while it is down."""
    await survive_an_outage(tmp_path, 30.0)


async def test_api_and_worker_start_while_redis_is_down_and_wait_for_it(tmp_path: Path) -> None:
    system = AdeSystem(tmp_path)  # Redis not started yet
    try:
        system.start_api()
        worker = system.start_worker()
        async with httpx.AsyncClient(base_url=system.base_url, timeout=1) as root:
            with anyio.fail_after(30):  # both up, and both know Redis is missing
                while True:
                    try:
                        ready = await root.get("/readyz")
                        if "Redis unreachable" in "\n".join(worker_log_lines(system)):
                            break
                    except httpx.HTTPError:
                        pass
                    await anyio.sleep(0.1)
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("unreachable")
        await anyio.sleep(6)  # longer than arq's own connection retries (5 x 1 s): nobody gives up
        assert worker.poll() is None and system.api is not None and system.api.poll() is None

        await anyio.to_thread.run_sync(system.redis.start)
        await anyio.to_thread.run_sync(system.wait_ready)
        async with system.api_client() as api:
            ws = await workspace(api)
            cfg = await configuration(api, ws, [{"name": "s", "script": "echo hi"}])
            with anyio.fail_after(30):
                frames = await wait_for_end(api, (await run(api, cfg))["id"])
            assert json.loads(frames[-1].data)["payload"]["status"] == "succeeded"
        lines = worker_log_lines(system)
        assert len([line for line in lines if "Redis unreachable" in line]) == 1, lines
    finally:
        await anyio.to_thread.run_sync(system.stop)
