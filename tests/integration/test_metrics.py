"""/metrics moves as runs happen; it takes the bootstrap token."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api import configuration, run, wait_for_end, workspace
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

pytestmark = pytest.mark.anyio


async def scrape(system: AdeSystem) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=system.base_url) as http:
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


async def test_metrics_change_as_runs_happen(client: httpx.AsyncClient, system: AdeSystem) -> None:
    before = await scrape(system)
    ws = await workspace(client)
    ok = await configuration(client, ws, [{"name": "s", "script": "seq 1 25; sleep 1"}])
    bad = await configuration(client, ws, [{"name": "s", "script": "exit 1"}])
    first = (await run(client, ok))["id"]
    async with client.stream("GET", f"/runs/{first}/events", params={"stream": "true"}) as response:
        assert response.status_code == 200
        chunks = response.aiter_bytes()
        while b"id: 1\n" not in await anext(chunks):  # subscribed once the first event arrives
            pass
        during = await scrape(system)
        async for _ in chunks:
            pass
    await wait_for_end(client, (await run(client, bad))["id"])
    after = await scrape(system)
    assert during["ade_sse_subscribers"] >= before["ade_sse_subscribers"] + 1
    assert (
        after["ade_runs_finished_total{status=succeeded}"]
        == before["ade_runs_finished_total{status=succeeded}"] + 1
    )
    assert (
        after["ade_runs_finished_total{status=failed}"]
        == before["ade_runs_finished_total{status=failed}"] + 1
    )
    assert after["ade_events_dispatched_total"] >= before["ade_events_dispatched_total"] + 25 + 10
    assert after["ade_pickup_latency_seconds_count"] == before["ade_pickup_latency_seconds_count"] + 2
    assert after["ade_pickup_latency_seconds_bucket{le=+Inf}"] == after["ade_pickup_latency_seconds_count"]
    assert after["ade_queue_depth"] >= 0 and after["ade_hub_lag_seconds"] >= 0


async def test_metrics_need_the_bootstrap_token(client: httpx.AsyncClient, system: AdeSystem) -> None:
    ws = await workspace(client)
    key = (await client.post(f"/workspaces/{ws}/api-keys", json={"name": "k", "role": "admin"})).json()[
        "secret"
    ]
    async with httpx.AsyncClient(base_url=system.base_url) as http:
        assert (await http.get("/metrics")).status_code == 401
        denied = await http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403 and denied.json()["code"] == "bootstrap_only"
