"""A worker killed with SIGKILL: its run and its build end `failed` / `worker_lost` once their leases
lapse, the build is never reused, and the step's processes do not outlive it."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.api import ade_events, collect_sse, configuration, run, workspace
from tests.system import AdeSystem, assert_none_survive, processes_running, running

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fragile(tmp_path: Path) -> AsyncIterator[AdeSystem]:
    async with running(tmp_path, ADE_LEASE_TTL_S="1") as system:
        yield system


async def test_killed_worker_fails_its_run_and_build_as_worker_lost(fragile: AdeSystem) -> None:
    async with fragile.api_client() as api:
        ws = await workspace(api)
        script = "echo started; sleep 3301"
        steps = [{"name": "long", "script": script}, {"name": "after", "script": "echo never"}]
        cfg = await configuration(api, ws, steps)
        run_id = (await run(api, cfg))["id"]
        spec = {"constructor": "shell", "steps": [{"name": "slow", "script": "echo building; sleep 300"}]}
        build_cfg = await configuration(api, ws, [{"name": "s", "script": "true"}], build=spec)
        build = (await api.post(f"/workspaces/{ws}/configurations/{build_cfg}/builds", json={})).json()
        started = ade_events(
            await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"}, stop_after=4)
        )
        assert json.loads(started[-1].data)["payload"]["message"] == "started" and processes_running(
            "sleep 3301"
        )
        await collect_sse(api, f"/builds/{build['id']}/events", params={"stream": "true"}, stop_after=4)

        fragile.workers[0].send_signal(signal.SIGKILL)  # mid-step, mid-build
        fragile.workers[0].wait()
        fragile.start_worker()  # another worker notices the lapsed leases

        run_end = ade_events(
            await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true", "after_sequence": 4})
        )
        completed = json.loads(run_end[-1].data)
        assert (
            completed["type"] == "run.completed" and completed["payload"]["failure"]["code"] == "worker_lost"
        )
        assert (await api.get(f"/runs/{run_id}")).json()["status"] == "failed"
        ended = [json.loads(frame.data) for frame in run_end]
        assert [(e["type"], e["payload"]["step"]) for e in ended[:-1]] == [
            ("run.step.completed", "long"),
            ("run.step.skipped", "after"),
        ]  # the run's unfinished steps end before it does
        assert ended[0]["payload"]["status"] == "failed"
        assert ended[0]["payload"]["failure"]["code"] == "worker_lost"
        views = [(await api.get(f"/runs/{run_id}/summary")).json(), (await api.get(f"/runs/{run_id}")).json()]
        for view in views:  # no view shows a running step in a finished run
            assert [(s["name"], s["status"]) for s in view["steps"]] == [
                ("long", "failed"),
                ("after", "skipped"),
            ]
        build_end = ade_events(
            await collect_sse(api, f"/builds/{build['id']}/events", params={"stream": "true"})
        )
        assert json.loads(build_end[-1].data)["payload"]["failure"]["code"] == "worker_lost"
        assert not (fragile.data_dir / "builds" / build["id"] / "READY").exists()
        again = (await api.post(f"/workspaces/{ws}/configurations/{build_cfg}/builds", json={})).json()
        assert again["id"] != build["id"] and again["reused_from"] is None  # a lost build is never reused
        await assert_none_survive("sleep 3301")  # the orphaned step was killed
        await api.post(f"/builds/{again['id']}/cancel")
