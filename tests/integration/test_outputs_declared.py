"""Declared outputs (`output_paths`, `output_when`), outputs as one archive, and re-running only what failed
(README "Outputs"), with real runs on a real system. Every test synchronises on the run's events."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from ade.client import AdeClient, AsyncAdeClient, ConflictError, NotFoundError
from tests.api import configuration, events_to_end, run, workspace
from tests.cli import header_run_id
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

Event = dict[str, Any]


async def finished(client: httpx.AsyncClient, run_id: str) -> list[Event]:
    return await events_to_end(client, run_id)


def completed(events: list[Event]) -> dict[str, dict[str, Any]]:
    """Each step's `run.step.completed` payload."""
    return {e["payload"]["step"]: e["payload"] for e in events if e["type"] == "run.step.completed"}


def started(events: list[Event]) -> list[str]:
    return [e["payload"]["step"] for e in events if e["type"] == "run.step.started"]


def notes(events: list[Event], step: str) -> list[str]:
    return [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line"
        and e["payload"].get("step") == step
        and e["payload"]["stream"] == "stderr"
    ]


async def listing(client: httpx.AsyncClient, run_id: str, **params: str) -> list[dict[str, Any]]:
    response = await client.get(f"/runs/{run_id}/outputs", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def contents(client: httpx.AsyncClient, run_id: str) -> dict[str, bytes]:
    """Every listed output, downloaded one by one."""
    found = {}
    for item in await listing(client, run_id):
        response = await client.get(f"/runs/{run_id}/outputs/{item['path']}")
        assert response.status_code == 200
        found[item["path"]] = response.content
    return found


BUILD = """
mkdir -p dist/lib reports
echo app > dist/app.bin; echo lib > dist/lib/x.so
echo '<unit/>' > reports/unit.xml
echo 'not an output' > notes.txt
echo direct > "$ADE_OUTPUT_DIR/direct.txt"
"""


@pytest.mark.anyio
async def test_output_paths_join_the_outputs_with_the_step_that_produced_them(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "build", "script": BUILD, "output_paths": ["dist", "reports/*.xml", "missing/*.log"]},
        {"name": "test", "script": "echo '<it/>' > reports/it.xml", "output_paths": ["reports/it.xml"]},
        {"name": "late", "script": "echo '<late/>' > reports/unit.xml", "output_paths": ["reports/unit.xml"]},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    events = await finished(client, run_id)
    assert events[-1]["payload"]["status"] == "succeeded"

    items = await listing(client, run_id)
    assert [(i["path"], i["size"], i["step"]) for i in items] == [
        ("direct.txt", 7, "build"),  # written to $ADE_OUTPUT_DIR while only `build` ran
        ("dist/app.bin", 4, "build"),
        ("dist/lib/x.so", 4, "build"),
        ("reports/it.xml", 6, "test"),
        ("reports/unit.xml", 8, "late"),  # the last writer wins
    ]
    assert (await contents(client, run_id))["reports/unit.xml"] == b"<late/>\n"
    by_step = await listing(client, run_id, step="build")
    assert [i["path"] for i in by_step] == ["direct.txt", "dist/app.bin", "dist/lib/x.so"]
    assert await listing(client, run_id, step="test") == [i for i in items if i["step"] == "test"]
    unknown = await client.get(f"/runs/{run_id}/outputs", params={"step": "nope"})
    assert unknown.status_code == 400 and unknown.json()["code"] == "unknown_step"

    payloads = completed(events)
    assert payloads["build"]["outputs"] == [
        {"path": "direct.txt", "size": 7, "source": "output_dir", "replaced": None},
        {"path": "dist/app.bin", "size": 4, "source": "output_paths", "replaced": None},
        {"path": "dist/lib/x.so", "size": 4, "source": "output_paths", "replaced": None},
        {"path": "reports/unit.xml", "size": 8, "source": "output_paths", "replaced": None},
    ]
    assert payloads["late"]["outputs"] == [
        {"path": "reports/unit.xml", "size": 8, "source": "output_paths", "replaced": "build"}
    ]
    assert notes(events, "build") == ["[ade] output_paths entry 'missing/*.log' matched no file"]
    assert notes(events, "late") == [
        "[ade] output 'reports/unit.xml' replaces step 'build''s output (the last writer wins)"
    ]
    record = (await client.get(f"/runs/{run_id}")).json()
    assert [len(s["outputs"]) for s in record["steps"]] == [4, 1, 1]
    summary = (await client.get(f"/runs/{run_id}/summary")).json()
    assert summary["outputs_count"] == 5 and [s["outputs_count"] for s in summary["steps"]] == [4, 1, 1]


@pytest.mark.anyio
async def test_output_when_always_collects_from_a_failed_step_and_the_default_does_not(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "a", "script": "echo a > a.log; exit 3", "output_paths": ["*.log"]},
        {
            "name": "b",
            "script": "echo b > b.log; exit 4",
            "output_paths": ["b.log"],
            "output_when": "always",
            "when": "always",
        },
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    events = await finished(client, run_id)
    payloads = completed(events)
    assert (payloads["a"]["status"], payloads["b"]["status"]) == ("failed", "failed")
    assert payloads["a"]["outputs"] == []
    assert [o["path"] for o in payloads["b"]["outputs"]] == ["b.log"]
    assert [(i["path"], i["step"]) for i in await listing(client, run_id)] == [("b.log", "b")]
    assert (await contents(client, run_id)) == {"b.log": b"b\n"}


@pytest.mark.anyio
async def test_links_matching_output_paths_are_never_followed_in_or_out(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    script = """
    ln -s /etc/passwd passwd.txt
    mkdir -p real conf
    ln -s /etc real/etc
    echo ok > real/ok.txt
    echo conf > conf/app.txt
    ln -s "$TARGET" "$ADE_OUTPUT_DIR/conf"
    """
    ws = await workspace(client)
    steps = [{"name": "s", "script": script, "output_paths": ["*.txt", "real", "conf/app.txt"]}]
    cfg = await configuration(client, ws, steps, environment={"TARGET": str(target)})
    run_id = (await run(client, cfg))["id"]
    events = await finished(client, run_id)
    assert events[-1]["payload"]["status"] == "succeeded"
    assert [i["path"] for i in await listing(client, run_id)] == ["real/ok.txt"]
    refused = "[ade] output 'conf/app.txt' not collected: 'conf' in the outputs is not a directory"
    assert notes(events, "s") == ["[ade] output_paths entry '*.txt' matched no file", refused]
    assert list(target.iterdir()) == []  # nothing was written through the planted link
    for name in ("passwd.txt", "real/etc/passwd", "conf/app.txt"):
        assert (await client.get(f"/runs/{run_id}/outputs/{name}")).status_code == 404


@pytest.mark.anyio
async def test_the_archives_hold_exactly_the_outputs(client: httpx.AsyncClient) -> None:
    script = """
    mkdir -p out/deep
    head -c 3000000 /dev/urandom > out/deep/big.bin
    echo small > out/small.txt
    : > out/empty.txt
    echo direct > "$ADE_OUTPUT_DIR/direct.txt"
    ln -s /etc/passwd "$ADE_OUTPUT_DIR/passwd"
    """
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "make", "script": script, "output_paths": ["out/**"]},
        {"name": "other", "script": "echo other > other.txt", "output_paths": ["other.txt"]},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    await finished(client, run_id)
    expected = await contents(client, run_id)
    assert sorted(expected) == [
        "direct.txt",
        "other.txt",
        "out/deep/big.bin",
        "out/empty.txt",
        "out/small.txt",
    ]
    for item in await listing(client, run_id):
        assert hashlib.sha256(expected[item["path"]]).hexdigest() == item["sha256"]

    tar_gz = await client.get(f"/runs/{run_id}/outputs.tar.gz")
    assert tar_gz.status_code == 200 and tar_gz.headers["content-type"] == "application/gzip"
    assert tar_gz.headers["content-disposition"] == f'attachment; filename="{run_id}-outputs.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(tar_gz.content), mode="r:gz") as archive:
        got = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
    assert got == expected

    zipped = await client.get(f"/runs/{run_id}/outputs.zip")
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    assert zipped.headers["content-disposition"] == f'attachment; filename="{run_id}-outputs.zip"'
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == expected

    only = await client.get(f"/runs/{run_id}/outputs.zip", params={"step": "other"})
    assert only.headers["content-disposition"] == f'attachment; filename="{run_id}-outputs-other.zip"'
    with zipfile.ZipFile(io.BytesIO(only.content)) as archive:
        assert archive.namelist() == ["other.txt"]
    missing = await client.get("/runs/run_01ZZZZZZZZZZZZZZZZZZZZZZZZ/outputs.tar.gz")
    assert missing.status_code == 404


# Step two fails in the run whose id step one wrote down, so only a run that kept step one's output (written
# in another run) gets past it: a re-run that ran step one again would fail the same way.
CHAIN: list[dict[str, Any]] = [
    {
        "name": "one",
        "script": 'echo "$ADE_RUN_ID" > first.txt; echo one > one.txt',
        "output_paths": ["*.txt"],
    },
    {
        "name": "two",
        "script": 'test "$(cat "$ADE_OUTPUT_DIR/first.txt")" != "$ADE_RUN_ID" && echo two > two.txt',
        "output_paths": ["two.txt"],
    },
    {"name": "three", "script": "echo three > three.txt", "output_paths": ["three.txt"]},
]


@pytest.mark.anyio
async def test_a_failed_only_rerun_keeps_what_succeeded_and_runs_the_rest(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    first = (await run(client, await configuration(client, ws, CHAIN)))["id"]
    events = await finished(client, first)
    assert events[-1]["payload"]["status"] == "failed"
    statuses = {name: p["status"] for name, p in completed(events).items()}
    assert statuses == {"one": "succeeded", "two": "failed"}

    response = await client.post(f"/runs/{first}/rerun", json={"failed_only": True})
    assert response.status_code == 201, response.text
    second = response.json()
    assert (second["attempt"], second["rerun_of"], second["failed_only"]) == (2, first, True)
    events = await finished(client, second["id"])
    assert events[-1]["payload"]["status"] == "succeeded"
    assert started(events) == ["two", "three"]  # step one never ran again
    kept = completed(events)["one"]
    assert (kept["status"], kept["reused_from"], kept["exit_code"], kept["duration_ms"]) == (
        "succeeded",
        first,
        0,
        None,
    )
    assert [(o["path"], o["size"]) for o in kept["outputs"]] == [("first.txt", 31), ("one.txt", 4)]
    assert completed(events)["two"]["reused_from"] is None
    types = [e["type"] for e in events]
    assert types.index("run.started") < types.index("run.step.completed")  # kept once the run started

    assert [(i["path"], i["step"]) for i in await listing(client, second["id"])] == [
        ("first.txt", "one"),
        ("one.txt", "one"),
        ("three.txt", "three"),
        ("two.txt", "two"),
    ]
    assert (await contents(client, second["id"]))["first.txt"] == f"{first}\n".encode()
    resource = (await client.get(f"/runs/{second['id']}")).json()
    assert [(s["status"], s["reused_from"]) for s in resource["steps"]] == [
        ("succeeded", first),
        ("succeeded", None),
        ("succeeded", None),
    ]
    summary = (await client.get(f"/runs/{second['id']}/summary")).json()
    assert [(s["status"], s["reused_from"]) for s in summary["steps"]] == [
        ("succeeded", first),
        ("succeeded", None),
        ("succeeded", None),
    ]

    refused = await client.post(f"/runs/{second['id']}/rerun", json={"failed_only": True})
    assert refused.status_code == 409 and refused.json()["code"] == "run_not_failed", refused.text
    whole = await client.post(f"/runs/{first}/rerun", json={"failed_only": False})
    assert (whole.json()["attempt"], whole.json()["failed_only"]) == (3, False)  # the refusal used no attempt
    events = await finished(client, whole.json()["id"])
    assert started(events) == ["one", "two"] and events[-1]["payload"]["status"] == "failed"


# Clients -----------------------------------------------------------------------------------------------


def test_the_sync_client_and_the_cli_filter_download_and_rerun_failed_only(
    system: AdeSystem, tmp_path: Path
) -> None:
    with AdeClient(system.base_url, BOOTSTRAP_TOKEN) as ade:
        ws = ade.create_workspace("outputs-sync").id
        cfg = ade.create_configuration(ws, {"name": "chain", "steps": CHAIN})
        first = ade.wait_for_run(ade.create_run(cfg.id).id)
        assert first.status == "failed"
        assert [(o.path, o.step) for o in ade.list_run_outputs(first.id)] == [
            ("first.txt", "one"),
            ("one.txt", "one"),
        ]
        assert ade.list_run_outputs(first.id, step="two") == []
        target = tmp_path / "outputs.zip"
        written = ade.download_run_outputs(first.id, target, format="zip")
        assert written == target.stat().st_size
        with zipfile.ZipFile(target) as archive:
            assert sorted(archive.namelist()) == ["first.txt", "one.txt"]
        with pytest.raises(NotFoundError):
            ade.download_run_outputs("run_01ZZZZZZZZZZZZZZZZZZZZZZZZ", tmp_path / "none.tar.gz")
        assert not (tmp_path / "none.tar.gz").exists()

        env = {**os.environ, "ADE_URL": system.base_url, "ADE_TOKEN": BOOTSTRAP_TOKEN}
        command = [sys.executable, "-m", "ade.cli", "runs", "rerun", first.id, "--failed-only", "--follow"]
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"one succeeded in {first.id} (kept, not run again)" in rerun.stdout
        second = ade.get_run(header_run_id(rerun.stdout.splitlines()[0]))
        kept = second.steps[0].reused_from
        assert (second.status, second.failed_only, kept) == ("succeeded", True, first.id)
        with pytest.raises(ConflictError) as refused:
            ade.rerun(second.id, failed_only=True)
        assert refused.value.code == "run_not_failed"


@pytest.mark.anyio
async def test_the_async_client_reruns_failed_only_and_downloads_an_archive(system: AdeSystem) -> None:
    async with AsyncAdeClient(system.base_url, BOOTSTRAP_TOKEN) as ade:
        ws = (await ade.create_workspace("outputs-async")).id
        cfg = await ade.create_configuration(ws, {"name": "chain", "steps": CHAIN})
        first = await ade.wait_for_run((await ade.create_run(cfg.id)).id)
        second = await ade.wait_for_run((await ade.rerun(first.id, failed_only=True)).id)
        assert second.status == "succeeded"
        outputs = await ade.list_run_outputs(second.id, step="one")
        assert [o.path for o in outputs] == ["first.txt", "one.txt"]
        buffer = io.BytesIO()
        await ade.download_run_outputs(second.id, buffer, step="one")
        with tarfile.open(fileobj=io.BytesIO(buffer.getvalue()), mode="r:gz") as archive:
            first_txt = archive.extractfile("first.txt")
            assert first_txt is not None and first_txt.read() == f"{first.id}\n".encode()
