"""Bad input answers 400 in the one error shape and changes nothing (DESIGN.md §2, invariant 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ade.execution.console import MAX_STEP_EVENT_DEPTH
from tests.api import ade_events, collect_sse, configuration, events_to_end, run, wait_for_end, workspace

pytestmark = pytest.mark.anyio
STEP = {"name": "s", "script": "echo hi"}
JSON = {"Content-Type": "application/json"}
ADE_MAX_JSON_DEPTH = 64  # the default


def assert_refused(response: httpx.Response, code: str) -> dict[str, Any]:
    assert response.status_code == 400, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "details"} and isinstance(body["details"], list), body
    assert body["code"] == code and body["error"], body
    return body


def workspace_count(data_dir: Path) -> int:
    return len(list((data_dir / "workspaces").glob("*.json")))


async def configurations_of(client: httpx.AsyncClient, ws: str) -> list[dict[str, Any]]:
    response = await client.get(f"/workspaces/{ws}/configurations")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


async def run_ids(client: httpx.AsyncClient, ws: str) -> list[str]:
    response = await client.get(f"/workspaces/{ws}/runs")
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def nested(depth: int) -> bytes:
    """A JSON array `depth` levels deep."""
    return b"[" * depth + b"]" * depth


async def test_a_last_event_id_of_non_ascii_digits_is_400(client: httpx.AsyncClient, data_dir: Path) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP], build={"constructor": "shell"})
    created = await run(client, cfg)
    await wait_for_end(client, created["id"])
    run_log = data_dir / "runs" / created["id"] / "logs" / "events.ndjson"
    logged = run_log.read_bytes()
    # Header bytes arrive as latin-1: b"\xb2" is "²", which str.isdigit accepts and int refuses.
    for stream_url in (f"/runs/{created['id']}/events", f"/builds/{created['build_id']}/events"):
        for last_event_id in (b"\xb2", b"1\xb9", b"\xb3", "١٢".encode()):
            response = await client.get(
                stream_url, params={"stream": "true"}, headers={"Last-Event-ID": last_event_id}
            )
            body = assert_refused(response, "invalid_last_event_id")
            assert body["details"][0]["key"] == "Last-Event-ID"
    assert run_log.read_bytes() == logged
    resumed = await collect_sse(
        client, f"/runs/{created['id']}/events", params={"stream": "true"}, headers={"Last-Event-ID": "1"}
    )
    assert ade_events(resumed)[0].id == 2


async def test_created_bounds_a_run_id_cannot_encode_are_400(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP])
    created = await run(client, cfg)
    await wait_for_end(client, created["id"])
    listed = await run_ids(client, ws)
    for url in (f"/workspaces/{ws}/runs", f"/configurations/{cfg}/runs"):
        for parameter in ("created_before", "created_after"):
            for moment in ("1960-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00"):
                body = assert_refused(await client.get(url, params={parameter: moment}), "time_out_of_range")
                assert body["details"][0]["key"] == parameter and parameter in body["error"]
        # The far end of what a datetime holds is still inside what a ULID holds (year 10889).
        latest = await client.get(url, params={"created_before": "9999-12-31T23:59:59.999Z"})
        assert [item["id"] for item in latest.json()["items"]] == [created["id"]]
        earliest = await client.get(url, params={"created_after": "1970-01-01T00:00:00Z"})
        assert [item["id"] for item in earliest.json()["items"]] == [created["id"]]
    assert await run_ids(client, ws) == listed


async def test_a_json_body_nested_50000_deep_is_400_too_deep(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP])
    workspaces, configurations, runs = workspace_count(data_dir), await configurations_of(client, ws), []
    too_deep = b'{"name": ' + nested(50_000) + b"}"
    bodies = {
        "/workspaces": too_deep,
        f"/workspaces/{ws}/configurations": too_deep,
        f"/configurations/{cfg}/runs": b'{"options": {"input_artifacts": ' + nested(50_000) + b"}}",
    }
    for url, content in bodies.items():
        assert_refused(await client.post(url, content=content, headers=JSON), "too_deep")
    assert_refused(await client.put(f"/configurations/{cfg}", content=too_deep, headers=JSON), "too_deep")
    # The limit is exact: one level past it is too deep, at it the body is decoded (and found wrong).
    past_limit = b'{"name": ' + nested(ADE_MAX_JSON_DEPTH) + b"}"
    at_limit = b'{"name": ' + nested(ADE_MAX_JSON_DEPTH - 1) + b"}"
    assert_refused(await client.post("/workspaces", content=past_limit, headers=JSON), "too_deep")
    assert_refused(await client.post("/workspaces", content=at_limit, headers=JSON), "invalid_request")
    assert workspace_count(data_dir) == workspaces
    assert await configurations_of(client, ws) == configurations
    assert await run_ids(client, ws) == runs
    # Brackets inside strings are text, not nesting.
    bracketed = await client.post("/workspaces", json={"name": "[" * 100 + '\\"' + "{" * 49})
    assert bracketed.status_code == 201, bracketed.text


def deep_event_step(name: str, depth: int) -> dict[str, str]:
    """A step that writes an engine event nested `depth` deep to ADE_EVENTS_FD, then a shallow one."""
    deep_event = '{"type": "deep", "nested": ' + nested(depth - 1).decode() + "}"
    script = f"echo '{deep_event}' >&$ADE_EVENTS_FD\necho '{{\"type\": \"shallow\"}}' >&$ADE_EVENTS_FD"
    return {"name": name, "script": script}


async def test_a_deeply_nested_step_event_is_refused_and_the_run_stays_readable(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps = [deep_event_step("deep", 960), deep_event_step("past_the_limit", MAX_STEP_EVENT_DEPTH + 1)]
    cfg = await configuration(client, ws, steps)
    run_id = (await run(client, cfg))["id"]
    replayed = await events_to_end(client, run_id)
    assert replayed[-1]["type"] == "run.completed" and replayed[-1]["payload"]["status"] == "succeeded"
    refusal = "[ade] ignored an event written to ADE_EVENTS_FD: "
    refusal += f"nested deeper than {MAX_STEP_EVENT_DEPTH} levels"
    refused = [
        event["payload"]
        for event in replayed
        if event["type"] == "console.line" and event["payload"]["message"] == refusal
    ]
    assert [(line["stream"], line["step"]) for line in refused] == [
        ("stderr", "deep"),
        ("stderr", "past_the_limit"),
    ]
    assert [event["type"] for event in replayed if event["source"] == "engine"] == ["engine.shallow"] * 2
    events = await client.get(f"/runs/{run_id}/events")
    assert events.status_code == 200
    assert [event["sequence"] for event in events.json()["items"]] == [
        event["sequence"] for event in replayed
    ]
    summary = await client.get(f"/runs/{run_id}/summary")
    assert summary.status_code == 200 and summary.json()["status"] == "succeeded"
    logs = await client.get(f"/runs/{run_id}/logs")
    assert logs.status_code == 200
    assert [item["message"] for item in logs.json()["items"]] == [refusal] * 2
    text = await client.get(f"/runs/{run_id}/logs", params={"format": "text"})
    assert text.status_code == 200 and text.text == f"{refusal}\n" * 2


async def test_nul_in_names_scripts_and_environment_is_400_naming_the_field(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP])
    workspaces, configurations = workspace_count(data_dir), await configurations_of(client, ws)
    body = {"name": "cfg", "steps": [STEP]}
    shell = {"constructor": "shell"}
    bad_bodies = {
        "name": {**body, "name": "c\x00fg"},
        "steps[0].script": {**body, "steps": [{**STEP, "script": "echo \x00"}]},
        "steps[0].environment": {**body, "steps": [{**STEP, "environment": {"A\x00": "v"}}]},
        "steps[0].environment[...]": {**body, "steps": [{**STEP, "environment": {"A": "v\x00"}}]},
        "environment": {**body, "environment": {"\x00": "v"}},
        "environment[...]": {**body, "environment": {"A": "\x00"}},
        "environment[...].value": {**body, "environment": {"A": {"secret": True, "value": "s\x00"}}},
        "build.steps[0].script": {**body, "build": {**shell, "steps": [{**STEP, "script": "\x00"}]}},
        "build.environment[...]": {**body, "build": {**shell, "environment": {"A": "v\x00"}}},
    }
    for field, bad in bad_bodies.items():
        for response in (
            await client.post(f"/workspaces/{ws}/configurations", json=bad),
            await client.put(f"/configurations/{cfg}", json=bad),
        ):
            assert assert_refused(response, "invalid_request")["details"][0]["key"] == field, field
    assert_refused(await client.post("/workspaces", json={"name": "w\x00s"}), "invalid_request")
    assert workspace_count(data_dir) == workspaces
    assert await configurations_of(client, ws) == configurations


async def test_a_build_source_must_be_an_artifact_of_the_same_workspace(client: httpx.AsyncClient) -> None:
    ws, other_ws = await workspace(client, "builds here"), await workspace(client, "uploads elsewhere")
    archive = b"the same bytes, uploaded by another workspace"
    other_upload = await client.post(f"/workspaces/{other_ws}/artifacts", content=archive)
    assert other_upload.status_code == 201, other_upload.text
    cfg = await configuration(client, ws, [STEP], build={"constructor": "shell"})
    configurations = await configurations_of(client, ws)
    never_uploaded = "sha256:" + "0" * 64
    for source in (other_upload.json()["key"], never_uploaded):
        bad = {"name": "cfg", "steps": [STEP], "build": {"constructor": "shell", "source": source}}
        for response in (
            await client.post(f"/workspaces/{ws}/configurations", json=bad),
            await client.put(f"/configurations/{cfg}", json=bad),
        ):
            body = assert_refused(response, "unknown_artifact")
            assert body["details"][0]["key"] == "build.source"
    assert await configurations_of(client, ws) == configurations
    # Once the workspace uploads the bytes itself, the same configuration is accepted.
    own_upload = await client.post(f"/workspaces/{ws}/artifacts", content=archive)
    own_build = {"constructor": "shell", "source": own_upload.json()["key"]}
    good = {"name": "cfg", "steps": [STEP], "build": own_build}
    assert (await client.put(f"/configurations/{cfg}", json=good)).status_code == 200
