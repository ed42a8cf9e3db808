"""Caches between runs (README "Caches"): a step's `cache_dirs` restored before it and saved after it
succeeds, keyed by workspace, configuration, step and `cache_key` (with hashFiles); saves atomic even when
the worker is killed half-way or two runs save at once; size limits with least-recently-used eviction; the
list and delete endpoints; links never followed. Real runs on a real system, synchronised on events."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from httpx_sse import aconnect_sse

from ade.events.payloads import CATALOG
from tests.api import configuration, console_lines, events_to_end, run, workspace
from tests.system import AdeSystem, running

pytestmark = pytest.mark.anyio

Event = dict[str, Any]


async def run_to_end(client: httpx.AsyncClient, cfg: str) -> tuple[str, list[Event]]:
    run_id = (await run(client, cfg))["id"]
    return run_id, await events_to_end(client, run_id)


def one(events: list[Event], kind: str, step: str | None = None) -> dict[str, Any]:
    [found] = [e for e in events if e["type"] == kind and (step is None or e["payload"]["step"] == step)]
    payload: dict[str, Any] = found["payload"]
    return payload


def status(events: list[Event]) -> str:
    return str(events[-1]["payload"]["status"])


async def events_until(client: httpx.AsyncClient, run_id: str, message: str) -> None:
    """Follow the run's stream until a console line says `message`."""
    async with aconnect_sse(client, "GET", f"/runs/{run_id}/events", params={"stream": "true"}) as source:
        async for sse in source.aiter_sse():
            if sse.event == "ade.event":
                event = json.loads(sse.data)
                if event["type"] == "console.line" and event["payload"]["message"] == message:
                    return
    raise AssertionError(f"run {run_id} ended without printing {message!r}")


# Restore and save -----------------------------------------------------------------------------------

STAMP = {
    "name": "deps",
    "cache_dirs": ["deps", "out/bin"],
    "script": (
        'if [ -f deps/stamp ]; then echo "found $(cat deps/stamp) $(cat out/bin/tool)"; '
        "[ -w deps/stamp ] && [ -w deps ] && echo writable; else echo miss; fi; "
        'mkdir -p deps/sub out/bin; echo "$ADE_RUN_ID" > deps/stamp; echo tool > out/bin/tool; '
        "echo lib > deps/sub/lib"
    ),
}


async def test_a_cache_saved_by_one_run_is_restored_in_the_next_and_not_in_another_workspace(
    client: httpx.AsyncClient,
) -> None:
    ws, other_ws = await workspace(client), await workspace(client)
    cfg = await configuration(client, ws, [STAMP])
    first, events = await run_to_end(client, cfg)
    assert status(events) == "succeeded" and console_lines(events) == ["miss"]
    restored = one(events, "run.cache.restored")
    assert restored["hit"] is False and restored["key"] == "default" and restored["error"] is None
    saved = one(events, "run.cache.saved")
    expected_bytes = len(first) + 1 + len("tool\n") + len("lib\n")
    assert saved["saved"] is True and saved["bytes"] == expected_bytes and saved["files"] == 3
    assert saved["paths"] == ["deps", "out/bin"] and saved["reason"] is None
    for event in [e for e in events if e["type"].startswith("run.cache.")]:  # exactly the catalog's structs
        payload = event["payload"]
        assert msgspec.to_builtins(msgspec.convert(payload, CATALOG[event["type"]])) == payload
    kinds = [(e["type"], e["payload"].get("step")) for e in events if e["type"] != "console.line"]
    assert kinds.index(("run.step.started", "deps")) < kinds.index(("run.cache.restored", "deps"))
    assert kinds.index(("run.cache.saved", "deps")) < kinds.index(("run.step.completed", "deps"))

    second, events = await run_to_end(client, cfg)
    assert status(events) == "succeeded" and console_lines(events) == [f"found {first} tool", "writable"]
    restored = one(events, "run.cache.restored")
    assert restored["hit"] is True and restored["bytes"] == expected_bytes and restored["files"] == 3
    assert isinstance(restored["duration_ms"], int)

    # The same configuration in another workspace has caches of its own.
    other_cfg = await configuration(client, other_ws, [STAMP])
    _, events = await run_to_end(client, other_cfg)
    assert console_lines(events) == ["miss"] and one(events, "run.cache.restored")["hit"] is False
    [mine] = (await client.get(f"/workspaces/{ws}/caches")).json()["items"]
    assert [mine[k] for k in ("configuration_id", "step", "key", "run_id")] == [
        cfg,
        "deps",
        "default",
        second,
    ]


async def test_hash_files_changes_the_key_when_a_file_changes(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps = [
        {"name": "lock", "script": 'echo "$VERSION" > deps.lock'},
        {
            "name": "install",
            "cache_dirs": ["vendor"],
            "cache_key": "vendor-{{ hashFiles('*.lock', '!ignored.lock') }}",
            "script": "cat vendor/v 2>/dev/null || echo none; mkdir -p vendor; cp deps.lock vendor/v",
        },
    ]
    cfg = await configuration(client, ws, steps, environment={"VERSION": "1"})

    def expected(version: str) -> str:
        content = hashlib.sha256(f"{version}\n".encode()).digest()
        return "vendor-" + hashlib.sha256(b"deps.lock\0" + content).hexdigest()

    _, events = await run_to_end(client, cfg)
    assert one(events, "run.cache.restored")["key"] == expected("1") and console_lines(events) == ["none"]
    _, events = await run_to_end(client, cfg)
    assert one(events, "run.cache.restored")["hit"] is True and console_lines(events) == ["1"]
    body = {"name": "cfg", "steps": steps, "environment": {"VERSION": "2"}}
    assert (await client.put(f"/configurations/{cfg}", json=body)).status_code == 200
    _, events = await run_to_end(client, cfg)
    restored = one(events, "run.cache.restored")
    assert restored["key"] == expected("2") and restored["hit"] is False and console_lines(events) == ["none"]
    keys = {item["key"] for item in (await client.get(f"/workspaces/{ws}/caches")).json()["items"]}
    assert keys == {expected("1"), expected("2")}

    # A key that cannot be evaluated: the step runs without a cache, and both events say why.
    bad = [{"name": "s", "cache_dirs": ["c"], "cache_key": "{{ env.HOME }}", "script": "mkdir c"}]
    _, events = await run_to_end(client, await configuration(client, ws, bad))
    assert status(events) == "succeeded"
    assert "unsupported expression" in one(events, "run.cache.restored")["error"]
    assert one(events, "run.cache.saved")["saved"] is False


async def test_a_symlink_in_a_cache_dir_is_saved_as_a_link_and_never_followed(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    script = (
        'if [ -L c/passwd ]; then echo "link to $(readlink c/passwd)"; cat c/file; else echo miss; fi; '
        "mkdir -p c; ln -sf /etc/passwd c/passwd; ln -sfn / c/root; echo data > c/file; ln -sfn /etc linked"
    )
    step = {"name": "s", "cache_dirs": ["c", "linked"], "script": script}
    cfg = await configuration(client, ws, [step])
    _, events = await run_to_end(client, cfg)
    saved = one(events, "run.cache.saved")
    assert saved["saved"] is True and saved["files"] == 3
    assert saved["bytes"] == len("data\n") + len("/etc/passwd") + len("/")  # the links' texts, not targets
    _, events = await run_to_end(client, cfg)
    assert console_lines(events) == ["link to /etc/passwd", "data"]
    stored = regular_files(data_dir / "caches" / ws)
    assert stored and not [p for p in stored if HOST_PASSWD in p.read_bytes()]


HOST_PASSWD = Path("/etc/passwd").read_bytes()


def regular_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


# Atomicity ------------------------------------------------------------------------------------------

BLOB_BYTES = 600 * 1024 * 1024  # sparse in the work directory, copied whole: a save that takes seconds
BIG_THEN = (
    'if [ -f c/version ]; then echo "restored $(cat c/version) files=$(find c -type f | wc -l)"; '
    f"truncate -s {BLOB_BYTES} c/blob; echo v2 > c/version; else mkdir -p c; echo v1 > c/version; fi; "
    "echo written"
)


def wait_for_a_live_save(staging: Path, timeout_s: float = 60.0) -> None:
    """Until a save is being written in `staging` (its directory marked live)."""
    deadline = time.monotonic() + timeout_s
    while not [name for name in os.listdir(staging) if (staging / name / "LIVE").exists()]:
        assert time.monotonic() < deadline, "no save started"
        time.sleep(0.002)


@pytest.fixture
async def fragile(tmp_path: Path) -> AsyncIterator[AdeSystem]:
    async with running(tmp_path, ADE_LEASE_TTL_S="1") as system:
        yield system


async def test_a_worker_killed_while_saving_leaves_the_previous_cache_whole(fragile: AdeSystem) -> None:
    async with fragile.api_client() as api:
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "s", "cache_dirs": ["c"], "script": BIG_THEN}])
        _, events = await run_to_end(api, cfg)
        assert one(events, "run.cache.saved")["saved"] is True  # v1, one file
        staging = fragile.data_dir / "caches" / ws / ".tmp"
        assert os.listdir(staging) == []

        second = (await run(api, cfg))["id"]
        await events_until(api, second, "written")
        await anyio.to_thread.run_sync(wait_for_a_live_save, staging)
        fragile.workers[0].send_signal(signal.SIGKILL)  # mid-save
        fragile.workers[0].wait()
        [left] = os.listdir(staging)
        fragile.start_worker()

        events = await events_to_end(api, second)
        assert events[-1]["payload"]["failure"]["code"] == "worker_lost"
        assert not [e for e in events if e["type"] == "run.cache.saved"]  # it died before publishing

        _, events = await run_to_end(api, cfg)
        assert console_lines(events)[0] == "restored v1 files=1"  # the previous cache, whole
        saved = one(events, "run.cache.saved")
        assert saved["files"] == 2 and saved["bytes"] == BLOB_BYTES + 3
        assert left not in os.listdir(staging)  # the dead save was swept
        [item] = (await api.get(f"/workspaces/{ws}/caches")).json()["items"]
        assert item["bytes"] == BLOB_BYTES + 3
        assert (await api.delete(f"/workspaces/{ws}/caches")).status_code == 204  # 600 MB: not left behind


HALF_A_SECOND_OF_COPY = 100 * 1024 * 1024  # a sparse file, copied whole


async def test_two_runs_saving_at_once_leave_one_whole_cache(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    script = (
        "mkdir -p c; for i in $(seq 300); do echo $ADE_RUN_ID; done > ids; "
        "(cd c && split -l 1 -a 3 ../ids f); "
        f"truncate -s {HALF_A_SECOND_OF_COPY} c/blob; echo ready; while [ ! -e go ]; do sleep 0.01; done"
    )
    cfg = await configuration(client, ws, [{"name": "s", "cache_dirs": ["c"], "script": script}])
    runs = [(await run(client, cfg))["id"] for _ in range(2)]
    for run_id in runs:
        await events_until(client, run_id, "ready")
    for run_id in runs:  # both steps end together, so their saves overlap
        (data_dir / "runs" / run_id / "work" / "go").touch()
    ended = [await events_to_end(client, run_id) for run_id in runs]
    saves = [one(events, "run.cache.saved") for events in ended]
    assert all(save["saved"] and save["files"] == 301 for save in saves)
    spans = [saved_span(events) for events in ended]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans  # they did overlap
    [item] = (await client.get(f"/workspaces/{ws}/caches")).json()["items"]
    assert item["run_id"] in runs

    count = "cat c/f* | sort | uniq -c | awk '{print $1, $2}'"
    body = {"name": "cfg", "steps": [{"name": "s", "cache_dirs": ["c"], "script": count}]}
    assert (await client.put(f"/configurations/{cfg}", json=body)).status_code == 200
    _, events = await run_to_end(client, cfg)
    assert console_lines(events) == [f"300 {item['run_id']}"]  # every file from the one save that won
    assert (await client.delete(f"/workspaces/{ws}/caches")).status_code == 204


def saved_span(events: list[Event]) -> tuple[float, float]:
    """When a run's cache save started and ended (s): its event's time, less its duration."""
    [event] = [e for e in events if e["type"] == "run.cache.saved"]
    end = datetime.fromisoformat(event["created_at"]).timestamp()
    return end - event["payload"]["duration_ms"] / 1000, end


# Limits ---------------------------------------------------------------------------------------------

LIMITED = {"ADE_MAX_CACHE_BYTES": "100000", "ADE_MAX_WORKSPACE_CACHE_BYTES": "250000"}


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[AdeSystem]:
    async with running(tmp_path, **LIMITED) as system:
        yield system


def writes(kilobytes: int, *, fail_on_hit: bool = False) -> dict[str, Any]:
    hit = "exit 1" if fail_on_hit else "echo hit"
    script = f"if [ -f d/x ]; then {hit}; fi; mkdir -p d; head -c {kilobytes * 1000} /dev/zero > d/x"
    return {"name": "s", "cache_dirs": ["d"], "script": script}


async def test_size_limits_skip_a_large_save_and_evict_the_least_recently_used(limited: AdeSystem) -> None:
    async with limited.api_client() as api:
        ws = await workspace(api)
        big = await configuration(api, ws, [writes(101)])
        _, events = await run_to_end(api, big)
        saved = one(events, "run.cache.saved")
        assert status(events) == "succeeded" and saved["saved"] is False
        assert "ADE_MAX_CACHE_BYTES" in saved["reason"]
        assert (await api.get(f"/workspaces/{ws}/caches")).json()["items"] == []

        a, b, c = [await configuration(api, ws, [writes(90, fail_on_hit=True)]) for _ in range(3)]
        for cfg in (a, b):
            _, events = await run_to_end(api, cfg)
            assert one(events, "run.cache.saved")["saved"] is True
        _, events = await run_to_end(api, a)  # a restore is a use: now b is the least recently used
        assert one(events, "run.cache.restored")["hit"] is True and status(events) == "failed"
        _, events = await run_to_end(api, c)  # 270,000 bytes > 250,000: one goes
        assert one(events, "run.cache.saved")["evicted"] == 1
        listed = (await api.get(f"/workspaces/{ws}/caches")).json()
        assert {item["configuration_id"] for item in listed["items"]} == {a, c}
        assert listed["total_bytes"] == 180_000 and listed["max_workspace_bytes"] == 250_000
        _, events = await run_to_end(api, b)
        assert one(events, "run.cache.restored")["hit"] is False


# Endpoints ------------------------------------------------------------------------------------------


async def test_list_and_delete_caches_stay_within_the_workspace(client: httpx.AsyncClient) -> None:
    ws, other = await workspace(client), await workspace(client)
    steps = [
        {"name": "a", "cache_dirs": ["a"], "cache_key": "ka", "script": "mkdir -p a; echo 1 > a/f"},
        {"name": "b", "cache_dirs": ["b"], "script": "mkdir -p b; echo 22 > b/f"},
    ]
    cfg, other_cfg = await configuration(client, ws, steps), await configuration(client, other, steps)
    run_id, _ = await run_to_end(client, cfg)
    await run_to_end(client, other_cfg)
    listed = (await client.get(f"/workspaces/{ws}/caches")).json()
    items = sorted(listed["items"], key=lambda item: item["step"])
    assert [(i["configuration_id"], i["step"], i["key"], i["bytes"], i["run_id"]) for i in items] == [
        (cfg, "a", "ka", 2, run_id),
        (cfg, "b", "default", 3, run_id),
    ]
    assert all(i["created_at"] and i["last_used_at"] and i["paths"] for i in items)
    assert listed["total_bytes"] == 5

    for params in ({"step": "a", "key": "other"}, {"configuration_id": other_cfg}):
        response = await client.delete(f"/workspaces/{ws}/caches", params=params)
        assert response.status_code == 204
    assert len((await client.get(f"/workspaces/{ws}/caches")).json()["items"]) == 2  # nothing matched
    assert (await client.delete(f"/workspaces/{ws}/caches", params={"step": "a"})).status_code == 204
    assert [i["step"] for i in (await client.get(f"/workspaces/{ws}/caches")).json()["items"]] == ["b"]
    assert (await client.delete(f"/workspaces/{ws}/caches")).status_code == 204
    assert (await client.get(f"/workspaces/{ws}/caches")).json()["items"] == []
    _, events = await run_to_end(client, cfg)
    assert [one(events, "run.cache.restored", s)["hit"] for s in ("a", "b")] == [False, False]
    assert len((await client.get(f"/workspaces/{other}/caches")).json()["items"]) == 2  # untouched
    audit = (await client.get("/audit-logs", params={"workspace_id": ws, "action": "cache.delete"})).json()
    assert len(audit["audit_logs"]) == 4
