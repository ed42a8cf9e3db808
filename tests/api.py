"""Small helpers over the HTTP API for tests: create things, collect SSE, wait for runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse


async def workspace(client: httpx.AsyncClient, name: str = "test") -> str:
    response = await client.post("/workspaces", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def configuration(client: httpx.AsyncClient, ws: str, steps: list[dict[str, Any]], **extra: Any) -> str:
    response = await client.post(
        f"/workspaces/{ws}/configurations", json={"name": "cfg", "steps": steps, **extra}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def run(client: httpx.AsyncClient, cfg: str) -> dict[str, Any]:
    response = await client.post(f"/configurations/{cfg}/runs", json={})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Frame:
    id: int | None
    event: str
    data: str


async def collect_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    **kwargs: Any,
) -> list[Frame]:
    """Read an SSE stream until `event: end` (or `stop_after` ade events), returning its frames."""
    frames: list[Frame] = []
    async with aconnect_sse(client, method, url, headers=dict(headers or {}), **kwargs) as source:
        assert source.response.status_code == 200, await source.response.aread()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            if sse.retry is not None and not sse.data:
                frames.append(Frame(None, "retry", str(sse.retry)))
                continue
            frames.append(Frame(int(sse.id) if sse.id else None, sse.event, sse.data))
            if sse.event == "end":
                break
            if stop_after is not None and sum(f.event == "ade.event" for f in frames) >= stop_after:
                break
    return frames


def ade_events(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame.event == "ade.event"]


async def wait_for_end(client: httpx.AsyncClient, run_id: str) -> list[Frame]:
    """Follow a run's SSE stream from the start until it ends; return its event frames."""
    frames = await collect_sse(client, f"/runs/{run_id}/events", params={"stream": "true"})
    assert frames[-1].event == "end"
    return ade_events(frames)


async def events_to_end(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    """A run's events, decoded, once it has ended (followed over SSE from the start)."""
    return [json.loads(frame.data) for frame in await wait_for_end(client, run_id)]


async def run_to_end(client: httpx.AsyncClient, cfg: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a configuration to its end: (the run resource, its events)."""
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    return (await client.get(f"/runs/{run_id}")).json(), events


def console_lines(events: list[dict[str, Any]]) -> list[str]:
    return [e["payload"]["message"] for e in events if e["type"] == "console.line"]


def links(response: httpx.Response) -> dict[str, str]:
    """The `Link` header as {rel: url}."""
    found = {}
    for part in response.headers.get("link", "").split(","):
        if 'rel="' in part:
            url = part.split(">")[0].strip(" <")
            found[part.split('rel="')[1].rstrip('"')] = url
    return found
