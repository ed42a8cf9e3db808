"""Runners (README "Runners"): `ade runner` processes that reach the API over HTTP and nothing else execute
the runs whose configuration has `runs_on`, with the workers' engine; the API sequences what they report.

Each runner here is a real `ade runner` subprocess with an empty private directory and an environment with
no `ADE_*` variable at all (no Redis URL, no data directory); the system is real (Redis, API, worker)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from ulid import ULID

from tests.api import configuration, console_lines, events_to_end, run, workspace
from tests.images.busybox import build_image
from tests.system import AdeSystem, another_api, assert_none_survive, processes_running, running

pytestmark = pytest.mark.anyio

SECRET = "runner-secret-value-417"


def _event_id() -> str:
    return f"evt_{ULID()}"


async def register(client: httpx.AsyncClient, ws: str, labels: list[str], name: str = "r1") -> str:
    response = await client.post(f"/workspaces/{ws}/runners", json={"name": name, "labels": labels})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@contextlib.contextmanager
def runner_process(
    system: AdeSystem, token: str, directory: Path, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`ade runner` with nothing but the API's URL and its token: no ADE_* variable, an empty directory."""
    directory.mkdir(parents=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("ADE_")}
    env["ADE_KILL_GRACE_S"] = "1"
    log = open(directory.parent / f"{directory.name}.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ade.cli",
            "runner",
            "--url",
            system.base_url,
            "--token",
            token,
            "--dir",
            str(directory),
            *args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _runner_client(system: AdeSystem, token: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=f"{system.base_url}/api/v1", headers=headers, timeout=60.0)


def _shape(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """What a run's stream says, without who wrote it or when: types, steps, statuses, console lines."""
    shaped: list[tuple[str, Any]] = []
    for event in events:
        payload = event["payload"]
        if event["type"] == "console.line":
            shaped.append(("console.line", (payload.get("step"), payload["message"])))
        elif event["type"].startswith("run.step"):
            shaped.append((event["type"], (payload["step"], payload.get("status"), payload.get("exit_code"))))
        elif event["type"] == "run.completed":
            shaped.append((event["type"], payload["status"]))
        else:
            shaped.append((event["type"], None))
    return shaped


def _steps(image: str | None) -> list[dict[str, Any]]:
    boxed = {"image": image} if image else {}
    return [
        {"name": "prepare", "script": "echo preparing; echo built > artifact.txt; echo $TOKEN"},
        {
            "name": "check",
            "script": "cat artifact.txt; echo in-image; echo report > $ADE_OUTPUT_DIR/report.txt",
            "depends_on": ["prepare"],
            **boxed,
        },
        {"name": "last", "script": "echo done", "depends_on": ["check"], "output_paths": ["artifact.txt"]},
    ]


async def test_a_runner_with_nothing_but_http_executes_a_multi_step_run_like_a_worker(
    client: httpx.AsyncClient, system: AdeSystem, tmp_path: Path
) -> None:
    image = build_image("podman")
    ws = await workspace(client, "runner-a")
    if image is not None:
        body = {"slug": "runner-busybox", "image_url": image, "public": False}
        assert (await client.post(f"/workspaces/{ws}/docker-images", json=body)).status_code == 201
    environment = {"TOKEN": {"value": SECRET, "secret": True}}
    slug = "runner-busybox" if image else None
    by_worker = await configuration(client, ws, _steps(slug), environment=environment)
    by_runner = await configuration(client, ws, _steps(slug), environment=environment, runs_on=["linux"])
    token = await register(client, ws, ["linux", "x86"])

    worker_run = (await run(client, by_worker))["id"]
    worker_events = await events_to_end(client, worker_run)
    with runner_process(system, token, tmp_path / "runner"):
        runner_run = (await run(client, by_runner))["id"]
        runner_events = await events_to_end(client, runner_run)

    assert [e["sequence"] for e in runner_events] == list(range(1, len(runner_events) + 1))
    assert _shape(runner_events) == _shape(worker_events)
    assert {e["source"] for e in runner_events if e["type"] != "run.queued"} == {"runner"}
    assert "***" in console_lines(runner_events) and SECRET not in json.dumps(runner_events)
    resource = (await client.get(f"/runs/{runner_run}")).json()
    assert resource["status"] == "succeeded"
    assert resource["runner_id"].startswith("rnr_")
    outputs = (await client.get(f"/runs/{runner_run}/outputs")).json()
    listed = {item["path"] for item in outputs["items"]}
    assert listed == {"report.txt", "artifact.txt"}
    download = await client.get(f"/runs/{runner_run}/outputs/artifact.txt")
    assert download.status_code == 200 and download.text == "built\n"
    kept = [path for path in (tmp_path / "runner").rglob("*") if path.name != "answered"]
    assert not [path for path in kept if path.is_file() or runner_run in path.name], kept


async def _offered_run(client: httpx.AsyncClient, ws: str, script: str = "echo hi") -> str:
    cfg = await configuration(client, ws, [{"name": "only", "script": script}], runs_on=["manual"])
    return str((await run(client, cfg))["id"])


def _report(type_: str, **payload: Any) -> dict[str, Any]:
    return {"id": _event_id(), "type": type_, "payload": payload}


async def _log_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/runs/{run_id}/events", params={"after_sequence": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    return list(body["items"] if isinstance(body, dict) else body)


async def test_a_chunk_sent_again_is_applied_once_and_a_gap_is_refused(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws = await workspace(client, "chunks")
    token = await register(client, ws, ["manual"])
    run_id = await _offered_run(client, ws)
    async with _runner_client(system, token) as http:
        claimed = await http.post("/runner/claim", json={"wait_s": 5})
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["run"]["id"] == run_id
        first = [_report("run.started"), _report("console.line", scope="run", stream="stdout", message="one")]
        second = [_report("console.line", scope="run", stream="stdout", message="two")]
        url = f"/runner/runs/{run_id}/chunks"
        for _ in range(2):  # a retry of the same chunk
            answer = await http.post(url, json={"offset": 0, "reports": first})
            assert answer.status_code == 200 and answer.json()["applied"] == 2, answer.text
        gap = await http.post(url, json={"offset": 5, "reports": second})
        assert gap.status_code == 409 and gap.json()["code"] == "chunk_gap"
        assert gap.json()["details"] == [{"applied": 2}]
        assert (await http.post(url, json={"offset": 2, "reports": second})).json()["applied"] == 3
        late = await http.post(url, json={"offset": 0, "reports": first})  # a late duplicate
        assert late.json()["applied"] == 3
        forged = await http.post(url, json={"offset": 3, "reports": [_report("run.queued")]})
        assert forged.status_code == 400 and forged.json()["code"] == "report_not_allowed"
        bad_id = {**_report("console.line", scope="run", stream="stdout", message="x"), "id": "evt_../../x"}
        assert (await http.post(url, json={"offset": 3, "reports": [bad_id]})).json()["code"] == "bad_report"
        for junk in (b"not json", b"[" * 100_000, b'{"offset": -1, "reports": []}'):
            refused = await http.post(url, content=junk, headers={"content-type": "application/json"})
            assert refused.status_code == 400 and refused.json()["code"] in ("bad_chunk", "too_deep"), junk[
                :20
            ]
        deep: Any = "x"
        for _ in range(40):
            deep = {"d": deep}
        nested = {"id": _event_id(), "type": "engine.deep", "payload": deep, "source": "engine"}
        assert (await http.post(url, json={"offset": 3, "reports": [nested]})).json()["code"] == "too_deep"
    events = await _log_of(client, run_id)
    assert [e["type"] for e in events] == ["run.queued", "run.started", "console.line", "console.line"]
    assert [e["payload"].get("message") for e in events[2:]] == ["one", "two"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert events[2]["event_id"] == first[1]["id"], "a report's id is its event's id"


async def test_a_runner_of_another_workspace_never_receives_sees_or_reports_its_runs(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws_a = await workspace(client, "tenant-a")
    ws_b = await workspace(client, "tenant-b")
    token_a = await register(client, ws_a, ["manual"], "runner-a")
    token_b = await register(client, ws_b, ["manual"], "runner-b")
    run_a = await _offered_run(client, ws_a)
    async with _runner_client(system, token_b) as stranger:
        assert (await stranger.post("/runner/claim", json={"wait_s": 0.5})).status_code == 204
        beat = (await stranger.post("/runner/heartbeat", json={"runs": [run_a]})).json()
        assert beat == {"cancel": [], "unknown": [run_a]}
        chunk = {"offset": 0, "reports": [_report("run.started")]}
        assert (await stranger.post(f"/runner/runs/{run_a}/chunks", json=chunk)).status_code == 404
        assert (await stranger.put(f"/runner/runs/{run_a}/outputs/x.txt", content=b"x")).status_code == 404
        assert (await stranger.get(f"/runner/runs/{run_a}/inputs/0")).status_code == 404
        assert (await stranger.get(f"/runs/{run_a}")).status_code == 403
        assert (await stranger.get(f"/workspaces/{ws_a}/runs")).status_code == 403
    async with _runner_client(system, token_a) as own:
        claimed = await own.post("/runner/claim", json={"wait_s": 5})
        assert claimed.status_code == 200 and claimed.json()["run"]["id"] == run_a
        hostile = await own.put(f"/runner/runs/{run_a}/outputs/../../escape.txt", content=b"x")
        assert hostile.status_code in (400, 404)
        assert (await own.post("/runner/claim", json={"labels": ["gpu"], "wait_s": 0})).status_code == 403
    assert (await client.get(f"/runs/{run_a}")).json()["status"] == "queued"
    assert not list(system.data_dir.rglob("escape.txt"))


async def test_runs_on_and_a_build_cannot_be_combined(client: httpx.AsyncClient) -> None:
    ws = await workspace(client, "runs-on-build")
    body = {
        "name": "both",
        "steps": [{"name": "s", "script": "true"}],
        "runs_on": ["linux"],
        "build": {"constructor": "shell", "steps": [{"name": "b", "script": "true"}]},
    }
    response = await client.post(f"/workspaces/{ws}/configurations", json=body)
    assert response.status_code == 400 and response.json()["code"] == "runs_on_with_build"
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == []


async def _follow_until(client: httpx.AsyncClient, run_id: str, wanted: str) -> None:
    """Follow the run's stream until an event of type `wanted` arrives."""
    from httpx_sse import aconnect_sse

    async with aconnect_sse(client, "GET", f"/runs/{run_id}/events", params={"stream": "true"}) as source:
        async for sse in source.aiter_sse():
            if sse.event == "ade.event" and json.loads(sse.data)["type"] == wanted:
                return
            if sse.event == "end":
                raise AssertionError(f"the run ended before {wanted}")


async def test_a_killed_runner_fails_its_run_runner_lost(tmp_path: Path) -> None:
    async with (
        running(tmp_path / "system", ADE_RUNNER_LOST_AFTER_S="2") as system,
        system.api_client() as client,
    ):
        ws = await workspace(client, "lost")
        token = await register(client, ws, ["manual"])
        run_id = await _offered_run(client, ws, "echo started; sleep 4311")
        with runner_process(system, token, tmp_path / "runner") as runner:
            await _follow_until(client, run_id, "run.step.started")
            runner.send_signal(signal.SIGKILL)
            runner.wait()
            started = time.monotonic()
            events = await events_to_end(client, run_id)
            lost_after_s = time.monotonic() - started
        ended = events[-1]["payload"]
        assert ended["status"] == "failed" and ended["failure"]["code"] == "runner_lost"
        assert lost_after_s < 15, lost_after_s
        await assert_none_survive("sleep 4311")


async def test_cancel_reaches_a_runner_and_ends_its_steps(
    client: httpx.AsyncClient, system: AdeSystem, tmp_path: Path
) -> None:
    ws = await workspace(client, "cancel")
    token = await register(client, ws, ["manual"])
    run_id = await _offered_run(client, ws, "echo started; sleep 4312")
    with runner_process(system, token, tmp_path / "runner"):
        await _follow_until(client, run_id, "run.step.started")
        asked = time.monotonic()
        assert (await client.post(f"/runs/{run_id}/cancel")).status_code in (200, 202)
        events = await events_to_end(client, run_id)
        took_s = time.monotonic() - asked
    assert events[-1]["payload"]["status"] == "cancelled"
    step_end = next(e for e in events if e["type"] == "run.step.completed")
    assert step_end["payload"]["status"] == "cancelled"
    assert "run.cancel_requested" in [e["type"] for e in events]
    assert took_s < 3.0, took_s  # heartbeat (0.5 s) + the step's stop; measured 0.6-0.9 s
    assert not processes_running("sleep 4312")


async def test_an_api_restart_while_chunks_are_in_flight_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines = 30_000
    async with running(tmp_path / "system") as system, system.api_client() as client:
        ws = await workspace(client, "restart")
        token = await register(client, ws, ["manual"])
        script = f"for i in $(seq 1 {lines}); do echo line-$i; [ $((i % 3000)) = 0 ] && sleep 0.2; done; true"
        run_id = await _offered_run(client, ws, script)
        with runner_process(system, token, tmp_path / "runner"):
            await _follow_until(client, run_id, "console.line")
            assert system.api is not None
            system.api.send_signal(signal.SIGKILL)  # mid-chunk, without warning
            system.api.wait()
            await anyio.to_thread.run_sync(system.start_api)
            await anyio.to_thread.run_sync(system.wait_ready)
            events = await events_to_end(client, run_id)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    assert console_lines(events) == [f"line-{i}" for i in range(1, lines + 1)]
    assert events[-1]["payload"]["status"] == "succeeded"
    assert len({e["event_id"] for e in events}) == len(events)


async def test_caches_and_inputs_of_a_runners_run_go_through_the_api(
    client: httpx.AsyncClient, system: AdeSystem, tmp_path: Path
) -> None:
    ws = await workspace(client, "runner-caches")
    upload = await client.post(
        f"/workspaces/{ws}/artifacts", content=b"from the API\n", params={"filename": "in.txt"}
    )
    assert upload.status_code == 201, upload.text
    step = {
        "name": "build",
        "cache_dirs": ["deps"],
        "script": "cat $ADE_INPUT_DIR/data/in.txt; ls deps 2>/dev/null || echo cold; mkdir -p deps; "
        "date +%s%N > deps/stamp",
    }
    cfg = await configuration(client, ws, [step], runs_on=["linux"])
    token = await register(client, ws, ["linux"])
    body = {"options": {"input_artifacts": [{"key": upload.json()["key"], "name": "data/in.txt"}]}}
    runs: list[list[dict[str, Any]]] = []
    with runner_process(system, token, tmp_path / "runner-1"):
        created = await client.post(f"/configurations/{cfg}/runs", json=body)
        assert created.status_code == 201, created.text
        runs.append(await events_to_end(client, created.json()["id"]))
    caches = (await client.get(f"/workspaces/{ws}/caches")).json()
    assert [entry["step"] for entry in caches["items"]] == ["build"], "the API keeps the runner's cache"
    with runner_process(system, token, tmp_path / "runner-2"):  # another machine: nothing local
        created = await client.post(f"/configurations/{cfg}/runs", json=body)
        runs.append(await events_to_end(client, created.json()["id"]))
    first, second = runs
    assert console_lines(first)[:2] == ["from the API", "cold"]
    assert console_lines(second)[:2] == ["from the API", "stamp"]
    restored = [
        e["payload"]["hit"] for run_events in runs for e in run_events if e["type"] == "run.cache.restored"
    ]
    saved = [
        e["payload"]["saved"] for run_events in runs for e in run_events if e["type"] == "run.cache.saved"
    ]
    assert restored == [False, True] and saved == [True, True]


async def test_a_registered_runner_may_execute_steps_in_step_mode_if_it_carries_the_labels(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws = await workspace(client, "step-mode-runner")
    other = await workspace(client, "step-mode-other")
    cfg = await configuration(client, ws, [{"name": "s", "script": "echo hi"}], runs_on=["bash"])
    run_id = (await run(client, cfg))["id"]
    fitting = await register(client, ws, ["bash"], "fits")
    unfit = await register(client, ws, ["gpu"], "lacks-the-label")
    stranger = await register(client, other, ["bash"], "other-workspace")
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as http:
        for token in (unfit, stranger):
            refused = await http.get(f"/api/runner/{run_id}.0", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 404, refused.text
        script = await http.get(f"/api/runner/{run_id}.0", headers={"Authorization": f"Bearer {fitting}"})
        assert script.status_code == 200 and "echo hi" in script.text


async def test_chunks_of_one_run_reaching_different_api_processes_form_one_dense_stream(
    client: httpx.AsyncClient, system: AdeSystem, tmp_path: Path
) -> None:
    with another_api(system, tmp_path / "api2.log") as second_port:
        ws = await workspace(client, "two-apis")
        token = await register(client, ws, ["manual"])
        run_id = await _offered_run(client, ws)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx.AsyncClient(base_url=f"{system.base_url}/api/v1", headers=headers, timeout=30) as one,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{second_port}/api/v1", headers=headers, timeout=30
            ) as two,
        ):
            for _ in range(100):  # the second process is up once it answers
                with contextlib.suppress(httpx.TransportError):
                    if (await two.post("/runner/heartbeat", json={"runs": []})).status_code == 200:
                        break
                await anyio.sleep(0.1)
            assert (await one.post("/runner/claim", json={"wait_s": 5})).json()["run"]["id"] == run_id
            line = lambda text: _report("console.line", scope="run", stream="stdout", message=text)  # noqa: E731
            chunks = [
                {"offset": 0, "reports": [_report("run.started"), line("a"), line("b")]},
                {"offset": 3, "reports": [line("c"), line("d")]},
            ]
            url = f"/runner/runs/{run_id}/chunks"
            assert (await one.post(url, json=chunks[0])).json()["applied"] == 3
            assert (await two.post(url, json=chunks[1])).json()["applied"] == 5
            assert (await two.post(url, json=chunks[0])).json()["applied"] == 5  # a late copy, elsewhere
            assert (await one.post(url, json=chunks[1])).json()["applied"] == 5
            end = {"offset": 5, "reports": [_report("run.completed", status="succeeded", exit_code=0)]}
            assert (await two.post(url, json=end)).json()["applied"] == 6
        events = await events_to_end(client, run_id)
        assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        assert [e["type"] for e in events[-2:]] == [
            "run.step.skipped",
            "run.completed",
        ]  # it never ran "only"
        assert console_lines(events) == ["a", "b", "c", "d"]
        assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
