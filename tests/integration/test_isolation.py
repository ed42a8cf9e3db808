"""A step is a tenant's code, and is contained (DESIGN §2, invariant 8): an attack matrix over the executors
this machine has (the bubblewrap sandbox, podman containers), through real runs on the suite's system.

Each attack prints `LEAK …` only if it succeeds; the tests assert no such line, that workspace A's data is
unchanged, and that nothing a step started outlives it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ade.core.settings import Settings
from ade.execution.sandbox import probe_sandbox
from tests.api import (
    ade_events,
    collect_sse,
    configuration,
    console_lines,
    events_to_end,
    run,
    run_to_end,
    wait_for_end,
    workspace,
)
from tests.images.busybox import build_image
from tests.system import BOOTSTRAP_TOKEN, AdeSystem, assert_none_survive, running

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-of-workspace-a"


@functools.cache
def _sandbox_works() -> bool:
    if shutil.which("bwrap") is None:
        return False
    with ThreadPoolExecutor(1) as pool:  # the tests' own event loop is running in this thread
        return pool.submit(lambda: asyncio.run(probe_sandbox(Settings()))).result() is None


IMAGE_SLUG = "ade-test-busybox"


@pytest.fixture(scope="session")
def busybox_image(system: AdeSystem) -> str | None:
    """The test image, built here and registered as a public image: its slug, or None without podman."""
    reference = build_image("podman")
    if reference is None:
        return None
    headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    with httpx.Client(base_url=f"{system.base_url}/api/v1", headers=headers) as http:
        ws = http.post("/workspaces", json={"name": "images"}).json()["id"]
        body = {"slug": IMAGE_SLUG, "image_url": reference, "public": True}
        response = http.post(f"/workspaces/{ws}/docker-images", json=body)
        assert response.status_code == 201, response.text
    return IMAGE_SLUG


def _executors() -> Iterator[Any]:
    yield pytest.param("sandbox", id="sandbox")
    yield pytest.param("container", id="container")


@pytest.fixture(params=list(_executors()))
def executor(request: pytest.FixtureRequest, busybox_image: str | None) -> str:
    name: str = request.param
    if name == "sandbox" and not _sandbox_works():
        pytest.skip("bubblewrap does not work on this machine")
    if name == "container" and busybox_image is None:
        pytest.skip("no podman or no static busybox to build the test image")
    return name


def _step(executor: str, name: str, script: str, **extra: Any) -> dict[str, Any]:
    step = {"name": name, "script": script, **extra}
    if executor == "container":
        step["image"] = IMAGE_SLUG
    return step


async def _run_to_end(client: httpx.AsyncClient, cfg: str) -> tuple[dict[str, Any], list[str]]:
    """Run a configuration to its end: (the run resource, its console lines)."""
    resource, events = await run_to_end(client, cfg)
    return resource, console_lines(events)


def _fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root` with a digest of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def _workspace_a(client: httpx.AsyncClient, data_dir: Path) -> tuple[str, str, dict[str, str]]:
    """Workspace A: a configuration with a secret, a finished run with work and output files."""
    ws = await workspace(client, "victim")
    script = "echo precious > mine.txt; echo result > $ADE_OUTPUT_DIR/result.txt"
    secret = {"TOKEN": {"secret": True, "value": SECRET}}
    cfg = await configuration(client, ws, [{"name": "a", "script": script}], environment=secret)
    resource, _ = await _run_to_end(client, cfg)
    assert resource["status"] == "succeeded", resource
    run_a = resource["id"]
    return cfg, run_a, _state_of_a(data_dir, cfg, run_a)


def _state_of_a(data_dir: Path, cfg: str, run_a: str) -> dict[str, str]:
    record = data_dir / "configurations" / f"{cfg}.json"
    return {
        **_fingerprint(data_dir / "runs" / run_a),
        "configuration": hashlib.sha256(record.read_bytes()).hexdigest(),
    }


def _attacks(executor: str, data_dir: Path, run_a: str, worker_pid: int, port: int) -> list[dict[str, Any]]:
    reach_redis = (
        f"(exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'PING\\r\\n' >&3 && head -c 7 <&3 && echo LEAK redis)"
        if executor == "sandbox"
        else f"printf 'PING\\r\\n' | nc -w 2 127.0.0.1 {port} | grep -q PONG && echo LEAK redis"
    )
    scripts = {
        "files": (
            # by relative path (work → run → runs → data dir) and by absolute path
            f"cat ../../../secret.key && echo LEAK relative secret.key; "
            f"cat {data_dir}/secret.key && echo LEAK absolute secret.key; "
            f"cat {data_dir}/configurations/*.json && echo LEAK configurations; "
            f"ls {data_dir} && echo LEAK data dir listing; "
            "cat ../run.json && echo LEAK own run.json; ls ../logs && echo LEAK own logs; "
            f"ls {data_dir}/runs/{run_a} && echo LEAK other run; "
            f"for d in redis builds api_keys audit artifacts; do ls {data_dir}/$d && echo LEAK $d; done; "
            "true"
        ),
        "processes": (
            f"cat /proc/{worker_pid}/environ | tr '\\0' '\\n' | grep ADE_ && echo LEAK worker environ; "
            "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q 'ade[.]cli' "
            "&& echo LEAK worker process; "
            "echo processes: $(ls /proc | grep -c '^[0-9]')"
        ),
        "network": f"{reach_redis}; true",
        "write": (
            f"echo pwned > {data_dir}/runs/{run_a}/work/mine.txt && echo LEAK absolute write; "
            f"echo pwned > ../../{run_a}/work/mine.txt && echo LEAK relative write; "
            f"echo pwned > {data_dir}/runs/{run_a}/outputs/result.txt && echo LEAK output write; "
            "true"
        ),
    }
    return [_step(executor, name, script) for name, script in scripts.items()]


async def test_a_step_cannot_reach_the_service_or_other_workspaces(
    client: httpx.AsyncClient, system: AdeSystem, executor: str
) -> None:
    data_dir = system.data_dir
    cfg_a, run_a, state = await _workspace_a(client, data_dir)
    assert (data_dir / "secret.key").exists()  # what the attacks aim at is there
    ws_b = await workspace(client, "attacker")
    steps = _attacks(executor, data_dir, run_a, system.workers[0].pid, system.redis.port)
    cfg_b = await configuration(client, ws_b, steps)
    resource, lines = await _run_to_end(client, cfg_b)
    assert resource["status"] == "succeeded", resource
    assert [line for line in lines if "LEAK" in line] == []
    assert not any(SECRET in line for line in lines)
    key = (data_dir / "secret.key").read_bytes().hex()
    assert not any(key[:16] in line for line in lines)
    (count,) = [int(line.split()[1]) for line in lines if line.startswith("processes:")]
    assert count < 10  # only its own few processes: not the worker's, not the host's
    assert _state_of_a(data_dir, cfg_a, run_a) == state


async def test_nothing_a_step_starts_outlives_it(client: httpx.AsyncClient, executor: str) -> None:
    seconds = {"sandbox": 1231, "container": 1232}[executor]
    ws = await workspace(client)
    script = (
        f"setsid sleep {seconds} & (sleep {seconds + 10} &) ; "
        f"nohup sh -c 'sleep {seconds + 20}' >/dev/null 2>&1 & "
        "kill -0 $! && echo started"
    )
    cfg = await configuration(client, ws, [_step(executor, "daemon", script)])
    resource, lines = await _run_to_end(client, cfg)
    assert resource["status"] == "succeeded" and "started" in lines
    for marker in (f"sleep {seconds}", f"sleep {seconds + 10}", f"sleep {seconds + 20}"):
        await assert_none_survive(marker)


async def test_a_fork_bomb_fails_resource_limit(
    client: httpx.AsyncClient, system: AdeSystem, executor: str
) -> None:
    ws = await workspace(client)
    bomb = (
        "python3 -c 'import os, time\nfor _ in range(500):\n"
        "    if os.fork() == 0:\n        time.sleep(4210)\n        os._exit(0)'"
        if executor == "sandbox"
        else "for i in $(seq 500); do sleep 4211 & done; wait"
    )
    cfg = await configuration(client, ws, [_step(executor, "bomb", bomb, max_processes=32)])
    resource, _ = await _run_to_end(client, cfg)
    assert resource["status"] == "failed"
    assert resource["failure"]["code"] == "resource_limit", resource["failure"]
    assert "process limit of 32" in resource["failure"]["message"]
    assert system.workers[0].poll() is None  # the host, and the worker, survived
    await assert_none_survive("sleep 4211")
    await assert_none_survive("sleep(4210)")


async def test_a_memory_hog_fails_resource_limit(client: httpx.AsyncClient, executor: str) -> None:
    ws = await workspace(client)
    hog = (
        "python3 -c 'x = bytearray(1024 * 1024 * 1024); print(len(x))'"
        if executor == "sandbox"
        else "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}"
    )
    cfg = await configuration(client, ws, [_step(executor, "hog", hog, memory_mb=128)])
    resource, _ = await _run_to_end(client, cfg)
    assert resource["status"] == "failed"
    assert resource["failure"]["code"] == "resource_limit", resource["failure"]
    assert "memory limit of 128 MB" in resource["failure"]["message"]


async def test_steps_see_only_their_run_directories_and_events_fd_works(
    client: httpx.AsyncClient, executor: str
) -> None:
    ws = await workspace(client)
    script = (
        "echo dirs: $(ls /ade); echo cwd: $(pwd); echo in: $ADE_INPUT_DIR out: $ADE_OUTPUT_DIR; "
        "echo uid: $(id -u); touch /ade/inputs/x 2>/dev/null && echo LEAK inputs writable; "
        'echo \'{"type": "hello", "n": 1}\' >&$ADE_EVENTS_FD; echo done > $ADE_OUTPUT_DIR/o.txt'
    )
    cfg = await configuration(client, ws, [_step(executor, "look", script)])
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    lines = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert events[-1]["payload"]["status"] == "succeeded", events[-1]
    assert "dirs: inputs outputs work" in lines
    assert "cwd: /ade/work" in lines and "in: /ade/inputs out: /ade/outputs" in lines
    assert "uid: 65534" in lines and not [line for line in lines if "LEAK" in line]
    assert any(e["type"] == "engine.hello" for e in events)
    outputs = (await client.get(f"/runs/{run_id}/outputs")).json()
    assert "o.txt" in json.dumps(outputs)


# Containers ----------------------------------------------------------------------------------------


def _containers_of(run_id: str) -> list[str]:
    listed = subprocess.run(
        ["podman", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True
    )
    return [name for name in listed.stdout.split() if name.startswith(f"ade-{run_id.lower()}-")]


@pytest.fixture
def image(busybox_image: str | None) -> str:
    if busybox_image is None:
        pytest.skip("no podman or no static busybox to build the test image")
    return busybox_image


async def test_a_container_step_sees_its_image_not_the_host(client: httpx.AsyncClient, image: str) -> None:
    ws = await workspace(client)
    script = (
        "test -x /bin/busybox && echo has busybox; test -e /usr/bin/python3 && echo LEAK host python; "
        "echo dirs: $(ls /ade)"
    )
    cfg = await configuration(client, ws, [{"name": "look", "script": script, "image": image}])
    resource, lines = await _run_to_end(client, cfg)
    assert resource["status"] == "succeeded", resource
    assert "has busybox" in lines and "dirs: inputs outputs work" in lines
    assert not [line for line in lines if "LEAK" in line]
    assert _containers_of(resource["id"]) == []


async def test_a_container_step_timeout_leaves_no_container(client: httpx.AsyncClient, image: str) -> None:
    ws = await workspace(client)
    step = {"name": "stuck", "script": "trap '' TERM; sleep 4300", "image": image, "timeout_s": 1}
    cfg = await configuration(client, ws, [step])
    resource, _ = await _run_to_end(client, cfg)
    assert resource["failure"]["code"] == "timeout"
    assert _containers_of(resource["id"]) == []
    await assert_none_survive("sleep 4300")


async def test_a_cancelled_container_step_leaves_no_container(client: httpx.AsyncClient, image: str) -> None:
    ws = await workspace(client)
    step = {"name": "long", "script": "echo ready; sleep 4301", "image": image}
    cfg = await configuration(client, ws, [step])
    run_id = (await run(client, cfg))["id"]
    url = f"/runs/{run_id}/events"
    frames = ade_events(await collect_sse(client, url, params={"stream": "true"}, stop_after=4))
    assert any('"ready"' in frame.data for frame in frames)  # the container runs
    assert _containers_of(run_id) != []
    assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
    await wait_for_end(client, run_id)
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "cancelled"
    assert _containers_of(run_id) == []
    await assert_none_survive("sleep 4301")


async def test_a_missing_image_fails_image_unavailable(client: httpx.AsyncClient, image: str) -> None:
    ws = await workspace(client)  # the slug is registered, but the runtime has no such image
    body = {"slug": "ghost", "image_url": "ade-test-no-such-image"}
    assert (await client.post(f"/workspaces/{ws}/docker-images", json=body)).status_code == 201
    step = {"name": "s", "script": "true", "image": "ghost"}
    cfg = await configuration(client, ws, [step])
    resource, _ = await _run_to_end(client, cfg)
    assert resource["status"] == "failed"
    assert resource["failure"]["code"] == "image_unavailable"
    assert "ade-test-no-such-image" in resource["failure"]["message"]
    assert "image not known" in resource["failure"]["message"]  # the runtime's own words


# Network ---------------------------------------------------------------------------------------------


async def test_network_true_shares_the_host_network(client: httpx.AsyncClient, system: AdeSystem) -> None:
    if not _sandbox_works():
        pytest.skip("bubblewrap does not work on this machine")
    ws = await workspace(client)
    port = system.redis.port
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'PING\\r\\n' >&3; head -c 7 <&3"
    cfg = await configuration(client, ws, [{"name": "net", "script": script}], network=True)
    resource, lines = await _run_to_end(client, cfg)
    assert resource["status"] == "succeeded", (resource, lines)
    assert any("PONG" in line or "NOAUTH" in line for line in lines)  # reachable: its password protects it


# The host executor ------------------------------------------------------------------------------------


async def test_the_host_executor_is_explicit_and_loud(tmp_path: Path) -> None:
    async with running(tmp_path, ADE_EXECUTOR="host") as system, system.api_client() as api:
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "s", "script": "echo in=$ADE_INPUT_DIR"}])
        resource, lines = await _run_to_end(api, cfg)
        assert resource["status"] == "succeeded"
        assert f"in={system.data_dir}/runs/{resource['id']}/inputs" in lines  # the host's own paths
        log = (tmp_path / "worker0.log").read_text()
        assert "tenants are NOT isolated" in log
