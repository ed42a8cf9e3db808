"""`docker` builds: a source's Containerfile becomes an image (`podman build`, real podman, FROM the suite's
busybox image, never pulled) that steps with `image: build` run in; the build is reused like any other;
its failures carry the runtime's words; cancel, a lost worker and retention leave nothing of it behind;
and with `ADE_CONTAINER_PULL=missing` an image that cannot be pulled fails fast, `image_unavailable`."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

from ade.execution.container import image_build_dir
from tests.api import (
    ade_events,
    collect_sse,
    configuration,
    run,
    run_to_end,
    workspace,
)
from tests.images.busybox import build_image
from tests.integration.test_builds import build_events, create_build, tar_gz, upload
from tests.system import AdeSystem, assert_none_survive, running

pytestmark = pytest.mark.anyio

CONTAINERFILE = b"""\
FROM ade-test-busybox
ARG GREETING
COPY hello.txt /hello.txt
RUN echo "built with $GREETING" > /built.txt
"""


@pytest.fixture(scope="session")
def base_image() -> str:
    """The suite's busybox image in the runtime's store (what a Containerfile's FROM names)."""
    reference = build_image("podman")
    if reference is None:
        pytest.skip("no podman or no static busybox to build the test image")
    return reference


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=False)


def _image_exists(reference: str) -> bool:
    return _podman("image", "exists", reference).returncode == 0


def _containers_of(stream_id: str) -> list[str]:
    listed = _podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    return [name for name in listed if name.startswith(f"ade-{stream_id.lower()}-")]


def _image_of(build_id: str) -> str:
    return f"localhost/ade-{build_id.lower()}"


async def _until_line(client: httpx.AsyncClient, url: str, message: str) -> None:
    """Follow a stream until a console line says `message`."""
    params = {"stream": "true"}
    async with aconnect_sse(client, "GET", url, params=params) as source:
        async for sse in source.aiter_sse():
            assert sse.event != "end", f"{url} ended before {message!r}"
            if sse.event == "ade.event" and json.loads(sse.data)["payload"].get("message") == message:
                return


def _lines(events: list[dict[str, Any]], step: str | None = None) -> list[str]:
    return [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line" and (step is None or e["payload"].get("step") == step)
    ]


async def test_a_docker_build_makes_the_image_its_steps_run_in_and_is_reused(
    client: httpx.AsyncClient, base_image: str
) -> None:
    ws = await workspace(client)
    source = await upload(
        client, ws, tar_gz({"Containerfile": CONTAINERFILE, "hello.txt": b"hello, image\n"})
    )
    spec = {
        "constructor": "docker",
        "source": source,
        "environment": {"GREETING": "hi", "TOKEN": {"secret": True, "value": "s3cr3t-of-the-build"}},
    }
    script = (
        "cat /hello.txt /built.txt; echo dirs: $(ls /ade); echo cwd: $(pwd); echo uid: $(id -u); "
        "echo made > $ADE_OUTPUT_DIR/made.txt; "
        "test -r $ADE_BUILD_SOURCE_DIR/Containerfile && echo sees source"
    )
    steps = [{"name": "inside", "script": script, "image": "build"}]
    cfg = await configuration(client, ws, steps, build=spec)
    resource, events = await run_to_end(client, cfg)
    build_id = resource["build_id"]
    try:
        assert resource["status"] == "succeeded", resource
        lines = _lines(events, "inside")
        for expected in ("hello, image", "built with hi", "dirs: inputs outputs work", "cwd: /ade/work"):
            assert expected in lines, lines
        assert "uid: 65534" in lines and "sees source" in lines
        outputs = (await client.get(f"/runs/{resource['id']}/outputs")).json()
        assert "made.txt" in json.dumps(outputs)
        # The image phase: its own events, the runtime's output as its console lines.
        phases = [e["payload"]["phase"] for e in events if e["type"] == "build.phase.started"]
        assert phases == ["source", "image"]
        image_lines = _lines(events, "image")
        assert any(line.endswith(": FROM ade-test-busybox") for line in image_lines), image_lines
        assert "s3cr3t-of-the-build" not in json.dumps(events)  # a secret is no build arg
        assert _image_exists(_image_of(build_id))
        assert _containers_of(resource["id"]) == []  # --rm

        # The same spec elsewhere: the ready build (its image) is reused, nothing is built again.
        other = await configuration(client, ws, steps, build=spec)
        again, again_events = await run_to_end(client, other)
        assert again["status"] == "succeeded", again
        completed = next(e for e in again_events if e["type"] == "build.completed")
        assert completed["payload"]["reused"] is True and completed["payload"]["build_id"] == build_id
        assert not [e for e in again_events if e["type"] in ("build.started", "build.phase.started")]
        assert "built with hi" in _lines(again_events, "inside")
    finally:
        _podman("image", "rm", _image_of(build_id))


async def test_a_failing_docker_build_says_why_in_the_runtimes_words(
    client: httpx.AsyncClient, base_image: str
) -> None:
    ws = await workspace(client)
    cases = {
        "image_unavailable": b"FROM ade-test-no-such-image\nRUN true\n",
        "exit_nonzero": b"FROM ade-test-busybox\nRUN echo failing; exit 3\n",
        "unsafe_containerfile": b"FROM ade-test-busybox\nRUN --mount=type=bind,source=.,target=/h true\n",
    }
    for code, containerfile in cases.items():
        source = await upload(client, ws, tar_gz({"Containerfile": containerfile}))
        spec = {"constructor": "docker", "source": source}
        cfg = await configuration(client, ws, [{"name": "s", "script": "true", "image": "build"}], build=spec)
        build = await create_build(client, ws, cfg, wait=True)
        assert build["status"] == "failed" and build["failure"]["code"] == code, build
        message = build["failure"]["message"]
        if code == "image_unavailable":
            assert "ade-test-no-such-image" in message and "image not known" in message, message
        elif code == "exit_nonzero":
            assert "exit status 3" in message, message
            assert "failing" in [e["payload"].get("message") for e in await build_events(client, build["id"])]
        else:
            assert "--mount" in message
        assert not _image_exists(_image_of(build["id"]))
    no_file = await upload(client, ws, tar_gz({"README": b"no Containerfile here"}))
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "true"}], build={"constructor": "docker", "source": no_file}
    )
    build = await create_build(client, ws, cfg, wait=True)
    assert build["failure"]["code"] == "no_containerfile", build


async def test_image_build_needs_a_docker_build(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps = [{"name": "s", "script": "true", "image": "build"}]
    for build in (None, {"constructor": "shell"}, {"constructor": "python"}):
        extra = {} if build is None else {"build": build}
        response = await client.post(
            f"/workspaces/{ws}/configurations", json={"name": "c", "steps": steps, **extra}
        )
        assert response.status_code == 400 and response.json()["code"] == "unknown_image", response.text
        assert response.json()["details"][0]["key"] == "steps[0].image"


async def test_a_cancelled_docker_build_leaves_nothing_running(
    client: httpx.AsyncClient, base_image: str
) -> None:
    ws = await workspace(client)
    containerfile = b"FROM ade-test-busybox\nRUN echo building; sleep 4304\n"
    source = await upload(client, ws, tar_gz({"Containerfile": containerfile}))
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "true"}], build={"constructor": "docker", "source": source}
    )
    build = await create_build(client, ws, cfg)
    await _until_line(client, f"/builds/{build['id']}/events", "building")
    assert (await client.post(f"/builds/{build['id']}/cancel")).status_code == 202
    events = await build_events(client, build["id"])
    assert events[-1]["payload"]["status"] == "cancelled"
    await assert_none_survive("sleep 4304")  # the RUN's container, outside podman's process group
    assert not image_build_dir(build["id"]).exists()
    assert not _image_exists(_image_of(build["id"]))


async def test_a_killed_workers_container_and_image_build_are_removed_by_the_reaper(
    tmp_path: Path, base_image: str
) -> None:
    async with running(tmp_path, ADE_LEASE_TTL_S="1") as system, system.api_client() as api:
        ws = await workspace(api)
        image = {"slug": "busybox", "image_url": base_image}
        assert (await api.post(f"/workspaces/{ws}/docker-images", json=image)).status_code == 201
        step = {"name": "long", "script": "echo started; sleep 4302", "image": "busybox"}
        cfg = await configuration(api, ws, [step])
        run_id = (await run(api, cfg))["id"]
        containerfile = b"FROM ade-test-busybox\nRUN echo building; sleep 4303\n"
        source = await upload(api, ws, tar_gz({"Containerfile": containerfile}))
        build_cfg = await configuration(
            api, ws, [{"name": "s", "script": "true"}], build={"constructor": "docker", "source": source}
        )
        build = await create_build(api, ws, build_cfg)
        await _until_line(api, f"/runs/{run_id}/events", "started")
        await _until_line(api, f"/builds/{build['id']}/events", "building")
        assert _containers_of(run_id) != []

        _kill_worker(system)

        run_end = ade_events(await collect_sse(api, f"/runs/{run_id}/events", params={"stream": "true"}))
        assert json.loads(run_end[-1].data)["payload"]["failure"]["code"] == "worker_lost"
        assert _containers_of(run_id) == []  # removed before the run was ended
        await assert_none_survive("sleep 4302")
        build_end = await build_events(api, build["id"])
        assert build_end[-1]["payload"]["failure"]["code"] == "worker_lost"
        assert not image_build_dir(build["id"]).exists()
        await assert_none_survive("sleep 4303")


def _kill_worker(system: AdeSystem) -> None:
    system.workers[0].send_signal(signal.SIGKILL)
    system.workers[0].wait()
    system.start_worker()  # another worker notices the lapsed leases


async def test_with_pull_missing_an_unreachable_image_fails_fast_image_unavailable(
    tmp_path: Path, base_image: str
) -> None:
    """`.invalid` names no host anywhere: the pull fails without contacting any registry."""
    async with running(tmp_path, ADE_CONTAINER_PULL="missing") as system, system.api_client() as api:
        ws = await workspace(api)
        for slug, url in (("nowhere", "registry.invalid/ade/none:1"), ("busybox", base_image)):
            body = {"slug": slug, "image_url": url}
            assert (await api.post(f"/workspaces/{ws}/docker-images", json=body)).status_code == 201
        with anyio.fail_after(60):
            cfg = await configuration(api, ws, [{"name": "s", "script": "true", "image": "nowhere"}])
            resource, _ = await run_to_end(api, cfg)
            assert resource["failure"]["code"] == "image_unavailable", resource
            assert "registry.invalid" in resource["failure"]["message"]
            present = await configuration(api, ws, [{"name": "s", "script": "echo ok", "image": "busybox"}])
            resource, events = await run_to_end(api, present)  # an image the runtime has: no pull
            assert resource["status"] == "succeeded" and "ok" in _lines(events), resource
            source = await upload(api, ws, tar_gz({"Containerfile": b"FROM registry.invalid/ade/none:1\n"}))
            cfg = await configuration(
                api, ws, [{"name": "s", "script": "true"}], build={"constructor": "docker", "source": source}
            )
            build = await create_build(api, ws, cfg, wait=True)
            assert build["failure"]["code"] == "image_unavailable", build
            assert "registry.invalid" in build["failure"]["message"]


async def test_retention_removes_a_docker_builds_image(tmp_path: Path, base_image: str) -> None:
    settings = {
        "ADE_BUILD_LOG_RETENTION_S": "3",
        "ADE_BUILD_ENV_RETENTION_S": "3",
        "ADE_BUILD_SWEEP_INTERVAL_S": "0.2",
    }
    async with running(tmp_path, **settings) as system, system.api_client() as api:
        ws = await workspace(api)
        source = await upload(api, ws, tar_gz({"Containerfile": b"FROM ade-test-busybox\nRUN true\n"}))
        spec = {"constructor": "docker", "source": source}
        cfg = await configuration(api, ws, [{"name": "s", "script": "true"}], build=spec)
        build = await create_build(api, ws, cfg, wait=True)
        assert build["status"] == "ready" and _image_exists(_image_of(build["id"]))
        try:
            with anyio.fail_after(30):
                while (await api.get(f"/builds/{build['id']}")).json()["status"] != "expired":  # noqa: ASYNC110
                    await anyio.sleep(0.1)  # the sweep runs on its own schedule
            assert not _image_exists(_image_of(build["id"]))
        finally:
            _podman("image", "rm", _image_of(build["id"]))
