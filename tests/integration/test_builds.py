"""Builds: real virtualenvs, fingerprint reuse and force, shared concurrent builds, runs that wait for
their build, failures, replay, cancel, retention, and unsafe archives — real HTTP, real worker."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.api import ade_events, collect_sse, configuration, events_to_end, run, workspace
from tests.system import running

pytestmark = pytest.mark.anyio


def tiny_wheel(name: str = "adetiny", value: str = "42") -> tuple[str, bytes]:
    """A minimal pure-Python wheel, made here so the build installs it with no network."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": f"VALUE = {value!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: ade-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return f"{name}-1.0-py3-none-any.whl", buffer.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def upload(client: httpx.AsyncClient, ws: str, data: bytes) -> str:
    response = await client.post(f"/workspaces/{ws}/artifacts", content=data)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


async def create_build(client: httpx.AsyncClient, ws: str, cfg: str, **options: Any) -> dict[str, Any]:
    response = await client.post(f"/workspaces/{ws}/configurations/{cfg}/builds", json={"options": options})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def build_events(client: httpx.AsyncClient, build_id: str, **params: Any) -> list[dict[str, Any]]:
    frames = await collect_sse(client, f"/builds/{build_id}/events", params={"stream": "true", **params})
    assert frames[-1].event == "end"
    return [json.loads(frame.data) for frame in ade_events(frames)]


async def run_events(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    return await events_to_end(client, run_id)


async def test_python_build_installs_a_local_wheel_and_runs_use_its_interpreter(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    wheel_name, wheel = tiny_wheel()
    source = await upload(client, ws, tar_gz({f"wheels/{wheel_name}": wheel, "setup.txt": b"from source\n"}))
    build = {
        "constructor": "python", "source": source, "requirements": ["adetiny"], "find_links": ["wheels"],
        "no_index": True, "steps": [{"name": "prep", "script": "cat setup.txt > prepared.txt"}],
        "environment": {"BUILD_ONLY": "b"},
    }  # fmt: skip
    script = (
        'python -c "import adetiny, sys; print(adetiny.VALUE, sys.prefix)"; '
        'echo "${BUILD_ONLY:-unset}"; cat "$ADE_BUILD_SOURCE_DIR/prepared.txt"'
    )
    cfg = await configuration(client, ws, [{"name": "use", "script": script}], build=build)
    run_id = (await run(client, cfg))["id"]
    events = await run_events(client, run_id)
    types = [e["type"] for e in events]
    assert types[:3] == ["run.queued", "run.waiting_for_build", "build.queued"]
    assert types.index("build.completed") < types.index("run.started")
    phases = [e["payload"]["phase"] for e in events if e["type"] == "build.phase.completed"]
    assert phases == ["source", "environment", "requirements", "step:prep"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))  # the run's own sequences
    build_id = next(e["payload"]["build_id"] for e in events if e["type"] == "build.completed")
    lines = [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line" and e["payload"]["scope"] == "run"
    ]
    env = data_dir / "builds" / build_id / "env"
    assert lines == [
        f"42 {env}",
        "unset",
        "from source",
    ]  # the venv's interpreter; build-only env stays in the build
    assert events[-1]["payload"]["status"] == "succeeded"
    resource = (await client.get(f"/builds/{build_id}")).json()
    assert resource["status"] == "ready"
    # The build's own stream has its own sequences and the same phases.
    own = await build_events(client, build_id)
    assert [e["sequence"] for e in own] == list(range(1, len(own) + 1))
    assert own[-1]["type"] == "build.completed" and own[-1]["payload"]["status"] == "ready"
    inspect = (await client.get(f"/builds/{build_id[:-4]}/inspect")).json()  # a unique prefix works too
    assert inspect["constructor"] == "python" and inspect["owner"] == "bootstrap"
    assert inspect["fingerprint"] == resource["fingerprint"] and inspect["flags"] == {
        "force": False,
        "reused": False,
    }


async def test_ready_builds_are_reused_and_force_rebuilds(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client,
        ws,
        [{"name": "s", "script": "true"}],
        build={"constructor": "shell", "steps": [{"name": "b", "script": "echo building"}]},
    )
    first = await create_build(client, ws, cfg, wait=True)
    assert first["status"] == "ready" and first["reused_from"] is None
    again = await create_build(client, ws, cfg, wait=True)
    assert again["id"] != first["id"] and again["reused_from"] == first["id"] and again["status"] == "ready"
    reused_events = await build_events(client, again["id"])
    assert reused_events[-1]["payload"] == {
        "status": "ready",
        "build_id": again["id"],
        "reused": True,
        "reused_from": first["id"],
        "duration_ms": 0,
        "failure": None,
        "cancelled_by": None,
    }
    forced = await create_build(client, ws, cfg, force=True, wait=True)
    assert forced["reused_from"] is None and forced["fingerprint"] == first["fingerprint"]
    assert "building" in [e["payload"].get("message") for e in await build_events(client, forced["id"])]
    # A run now reuses the newest ready build: the run's stream says so and no build runs.
    run_id = (await run(client, cfg))["id"]
    events = await run_events(client, run_id)
    reuse = next(e for e in events if e["type"] == "build.completed")
    assert reuse["payload"] == {
        "status": "ready",
        "reused": True,
        "build_id": forced["id"],
        "reused_from": None,
        "duration_ms": None,
        "failure": None,
        "cancelled_by": None,
    }
    assert "build.started" not in [e["type"] for e in events]
    listed = (await client.get(f"/configurations/{cfg}/builds")).json()
    assert [b["id"] for b in listed] == [forced["id"], again["id"], first["id"]]


async def test_concurrent_requests_share_one_build(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    spec = {"constructor": "shell", "steps": [{"name": "slow", "script": "sleep 1; echo once"}]}
    cfg = await configuration(client, ws, [{"name": "s", "script": "echo run"}], build=spec)
    results: list[dict[str, Any]] = []

    async def request_build() -> None:
        results.append(await create_build(client, ws, cfg))

    async def request_run() -> None:
        results.append(await run(client, cfg))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(request_build)
            tg.start_soon(request_run)
    build_ids = {r["id"] for r in results if r["id"].startswith("build_")} | {
        r["build_id"] for r in results if r["id"].startswith("run_")
    }
    assert len(build_ids) == 1, build_ids
    build_id = build_ids.pop()
    events = await build_events(client, build_id)
    assert [e["type"] for e in events].count("build.started") == 1  # one execution
    assert [e["payload"].get("message") for e in events].count("once") == 1
    for r in results:
        if r["id"].startswith("run_"):
            assert (await run_events(client, r["id"]))[-1]["payload"]["status"] == "succeeded"


async def test_failing_build_fails_its_run_and_is_never_reused(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    spec = {"constructor": "python", "steps": [{"name": "broken", "script": "echo half-done; exit 3"}]}
    cfg = await configuration(client, ws, [{"name": "s", "script": "echo never"}], build=spec)
    run_id = (await run(client, cfg))["id"]
    events = await run_events(client, run_id)
    failure = events[-1]["payload"]["failure"]
    assert events[-1]["payload"]["status"] == "failed" and failure["code"] == "build_failed"
    assert "run.started" not in [e["type"] for e in events]
    build_id = (await client.get(f"/runs/{run_id}")).json()["build_id"]
    build = (await client.get(f"/builds/{build_id}")).json()
    assert build["status"] == "failed" and build["failure"]["code"] == "exit_nonzero"
    assert not (data_dir / "builds" / build_id / "READY").exists()
    assert not (data_dir / "builds" / build_id / "env").exists()
    second = (await run(client, cfg))["id"]
    assert (await client.get(f"/runs/{second}")).json()["build_id"] != build_id  # a new attempt, not reuse
    await run_events(client, second)


async def test_build_stream_replays_and_resumes_with_last_event_id(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    spec = {
        "constructor": "shell",
        "steps": [{"name": "b", "script": "for i in $(seq 1 40); do echo $i; sleep 0.01; done"}],
    }
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}], build=spec)
    build = await create_build(client, ws, cfg)
    url = f"/builds/{build['id']}/events"
    first = ade_events(await collect_sse(client, url, params={"stream": "true"}, stop_after=10))
    assert [f.id for f in first] == list(range(1, 11))
    rest = await collect_sse(client, url, params={"stream": "true"}, headers={"Last-Event-ID": "10"})
    ids = [f.id for f in ade_events(rest)]
    assert ids[0] == 11 and ids == list(range(11, 11 + len(ids))) and rest[-1].event == "end"
    page = (await client.get(url, params={"after_sequence": 3, "limit": 2})).json()
    assert [e["sequence"] for e in page["items"]] == [4, 5]
    text = await client.get(f"/builds/{build['id']}/logs")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.splitlines() == [str(i) for i in range(1, 41)]


async def test_cancel_a_build(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    spec = {"constructor": "shell", "steps": [{"name": "b", "script": "echo started; sleep 60"}]}
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}], build=spec)
    build = await create_build(client, ws, cfg)
    await collect_sse(client, f"/builds/{build['id']}/events", params={"stream": "true"}, stop_after=4)
    assert (await client.post(f"/builds/{build['id']}/cancel")).status_code == 202
    events = await build_events(client, build["id"])
    assert "build.cancel_requested" in [e["type"] for e in events]
    assert events[-1]["payload"]["status"] == "cancelled"
    assert (await client.get(f"/builds/{build['id']}")).json()["status"] == "cancelled"
    conflict = await client.post(f"/builds/{build['id']}/cancel")
    assert conflict.status_code == 409 and conflict.json()["code"] == "build_finished"


async def test_archive_member_escaping_the_source_is_rejected(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    source = await upload(client, ws, tar_gz({"ok.txt": b"fine", "../escape.txt": b"evil"}))
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "true"}], build={"constructor": "shell", "source": source}
    )
    build = await create_build(client, ws, cfg, wait=True)
    assert build["status"] == "failed" and build["failure"]["code"] == "unsafe_archive"
    assert "../escape.txt" in build["failure"]["message"]
    assert not (data_dir / "builds" / build["id"] / "escape.txt").exists()
    assert not (data_dir / "builds" / "escape.txt").exists()


async def test_retention_expires_old_builds_logs_204_events_410(tmp_path: Path) -> None:
    async with (
        running(
            tmp_path,
            ADE_BUILD_LOG_RETENTION_S="1",
            ADE_BUILD_ENV_RETENTION_S="1",
            ADE_BUILD_SWEEP_INTERVAL_S="0.2",
        ) as system,
        system.api_client(timeout_s=30) as api,
    ):
        ws = await workspace(api)
        spec = {"constructor": "shell", "steps": [{"name": "b", "script": "echo hi"}]}
        cfg = await configuration(api, ws, [{"name": "s", "script": "true"}], build=spec)
        build = await create_build(api, ws, cfg, wait=True)
        assert build["status"] == "ready"
        with anyio.fail_after(20):
            while (await api.get(f"/builds/{build['id']}")).json()["status"] != "expired":  # noqa: ASYNC110
                await anyio.sleep(0.1)  # the sweep runs on its own schedule
        logs = await api.get(f"/builds/{build['id']}/logs")
        assert logs.status_code == 204 and logs.content == b""
        gone = await api.get(f"/builds/{build['id']}/events")
        assert gone.status_code == 410 and gone.json()["code"] == "build_expired"
        assert not (system.data_dir / "builds" / build["id"] / "logs").exists()
        # The next request builds afresh: an expired build is never reused.
        fresh = await create_build(api, ws, cfg, wait=True)
        assert fresh["reused_from"] is None and fresh["id"] != build["id"]
