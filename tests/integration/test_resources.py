"""Workspaces, configurations, run listing, and bad input (a clear 4xx that changes nothing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api import configuration, links, run, wait_for_end, workspace

pytestmark = pytest.mark.anyio

STEP = {"name": "s", "script": "true"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "details"}
    assert body["code"] == code and body["error"]
    return body


async def test_configuration_crud(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP], environment={"A": "1"}, timeout_s=30)
    listed = (await client.get(f"/workspaces/{ws}/configurations")).json()
    assert [c["id"] for c in listed] == [cfg]
    updated = await client.put(
        f"/configurations/{cfg}", json={"name": "renamed", "steps": [STEP, {**STEP, "name": "t"}]}
    )
    assert updated.status_code == 200 and updated.json()["name"] == "renamed"
    fetched = (await client.get(f"/configurations/{cfg}")).json()
    assert [s["name"] for s in fetched["steps"]] == ["s", "t"] and fetched["environment"] == {}
    assert (await client.delete(f"/configurations/{cfg}")).status_code == 204
    assert_error(await client.get(f"/configurations/{cfg}"), 404, "configuration_not_found")
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == []


async def test_runs_list_newest_first_with_cursor_pagination(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP])
    created = [(await run(client, cfg))["id"] for _ in range(5)]
    seen: list[str] = []
    url: str | None = f"/workspaces/{ws}/runs?limit=2"
    pages = 0
    while url:
        response = await client.get(url.removeprefix("/api/v1"))
        assert response.status_code == 200
        seen += [item["id"] for item in response.json()["items"]]
        url = links(response).get("next")
        pages += 1
    assert seen == list(reversed(created))
    assert pages == 3
    for run_id in created:
        await wait_for_end(client, run_id)
    done = (await client.get(f"/workspaces/{ws}/runs", params={"status": "succeeded"})).json()["items"]
    assert len(done) == 5
    assert (await client.get(f"/workspaces/{ws}/runs", params={"status": "failed"})).json()["items"] == []


async def test_unknown_ids_are_404_and_create_nothing(client: httpx.AsyncClient, data_dir: Path) -> None:
    runs_before = (
        sorted(p.name for p in (data_dir / "runs").iterdir()) if (data_dir / "runs").exists() else []
    )
    assert_error(await client.get("/workspaces/ws_nope"), 404, "workspace_not_found")
    assert_error(await client.get("/configurations/cfg_nope"), 404, "configuration_not_found")
    assert_error(await client.get("/runs/run_nope"), 404, "run_not_found")
    assert_error(await client.get("/runs/run_nope/events"), 404, "run_not_found")
    assert_error(await client.get("/workspaces/ws_nope/runs"), 404, "workspace_not_found")
    assert_error(await client.post("/configurations/cfg_nope/runs", json={}), 404, "configuration_not_found")
    assert_error(
        await client.post("/workspaces/ws_nope/configurations", json={"name": "x", "steps": [STEP]}),
        404,
        "workspace_not_found",
    )
    assert_error(await client.get("/no/such/route"), 404, "not_found")
    runs_after = sorted(p.name for p in (data_dir / "runs").iterdir()) if (data_dir / "runs").exists() else []
    assert runs_after == runs_before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x", "steps": []},
        {"name": "x", "steps": [{"name": "bad name!", "script": "true"}]},
        {"name": "x", "steps": [{"name": "s", "script": "true", "timeout_s": -1}]},
        {"name": "x", "steps": [{"name": "s"}]},
        {"name": "x", "steps": [STEP], "environment": {"1BAD": "v"}},
        {"name": "x", "steps": [STEP], "unknown": 1},
    ],
)
async def test_invalid_configuration_bodies_are_400_with_details(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    ws = await workspace(client)
    error = assert_error(
        await client.post(f"/workspaces/{ws}/configurations", json=body), 400, "invalid_request"
    )
    assert error["details"], "a 400 names what was wrong"
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == []


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/workspaces", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request")


async def test_bad_event_queries_are_400_and_change_nothing(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [STEP])
    run_id = (await run(client, cfg))["id"]
    await wait_for_end(client, run_id)
    log = data_dir / "runs" / run_id / "logs" / "events.ndjson"
    before = log.read_bytes()
    url = f"/runs/{run_id}/events"
    assert_error(await client.get(url, params={"after_sequence": -1}), 400, "invalid_request")
    assert_error(await client.get(url, params={"after_sequence": "x"}), 400, "invalid_request")
    assert_error(await client.get(url, params={"limit": 0}), 400, "invalid_request")
    assert_error(await client.get(url, params={"limit": 1001}), 400, "invalid_request")
    assert_error(await client.get(url, params={"format": "xml"}), 400, "invalid_request")
    for bad in ("abc", "-3", "1.5", ""):
        response = await client.get(url, params={"stream": "true"}, headers={"Last-Event-ID": bad})
        assert_error(response, 400, "invalid_last_event_id")
    assert_error(
        await client.post(f"/configurations/{cfg}/runs", json={"stream": "yes please"}),
        400,
        "invalid_request",
    )
    assert_error(await client.get(f"/workspaces/{ws}/runs", params={"limit": 101}), 400, "invalid_request")
    assert_error(
        await client.get(f"/workspaces/{ws}/runs", params={"status": "sleeping"}), 400, "invalid_request"
    )
    assert log.read_bytes() == before
    assert len((await client.get(f"/workspaces/{ws}/runs")).json()["items"]) == 1


async def test_health_and_readiness(system: Any) -> None:
    async with httpx.AsyncClient(base_url=system.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready["ready"] is True
        assert ready["checks"] == {"redis": "ok", "worker": "ok", "data_dir": "ok", "hub": "ok"}
        schema = await http.get("/schema/openapi.json")
        assert schema.status_code == 200 and "/api/v1/runs/{run_id}/events" in schema.json()["paths"]
