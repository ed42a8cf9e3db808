"""A run's stream end to end: real HTTP, real worker, real subprocesses, real Redis."""

from __future__ import annotations

import json
import random
from pathlib import Path

import anyio
import httpx
import pytest

from tests.api import ade_events, collect_sse, configuration, run, wait_for_end, workspace

pytestmark = pytest.mark.anyio

EMIT_PROGRESS = (
    """printf '%s\\n' '{"type":"progress","current":1,"total":2,"message":"half"}' >&$ADE_EVENTS_FD"""
)


def log_lines(data_dir: Path, run_id: str) -> list[bytes]:
    return (data_dir / "runs" / run_id / "logs" / "events.ndjson").read_bytes().splitlines()


async def test_multi_step_run_follows_documented_order_and_sse_equals_log(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client,
        ws,
        [
            {"name": "first", "script": f"echo one; echo err >&2; {EMIT_PROGRESS}; printf 'no newline'"},
            {"name": "second", "script": "echo two"},
        ],
    )
    frames = await collect_sse(client, f"/configurations/{cfg}/runs", method="POST", json={"stream": True})
    assert frames[0].event == "retry" and frames[-1].event == "end"
    events = ade_events(frames)
    decoded = [json.loads(frame.data) for frame in events]
    run_id = decoded[0]["run_id"]

    # Sequences are exactly 1..n, in the id and in the envelope.
    assert [frame.id for frame in events] == list(range(1, len(events) + 1))
    assert [event["sequence"] for event in decoded] == list(range(1, len(events) + 1))
    # What the SSE client received is the log, byte for byte.
    assert [frame.data.encode() for frame in events] == log_lines(data_dir, run_id)

    types = [event["type"] for event in decoded]
    assert types[:3] == ["run.queued", "run.started", "run.step.started"]
    first_done = types.index("run.step.completed")
    assert types[first_done + 1 :] == [
        "run.step.started",
        "console.line",
        "run.step.completed",
        "run.completed",
    ]
    inside_first = decoded[3:first_done]
    stdout = [e["payload"]["message"] for e in inside_first if e["payload"].get("stream") == "stdout"]
    stderr = [e["payload"]["message"] for e in inside_first if e["payload"].get("stream") == "stderr"]
    progress = [e for e in inside_first if e["type"] == "engine.progress"]
    assert stdout == ["one", "no newline"]  # a final line without newline is kept
    assert stderr == ["err"]
    assert len(progress) == 1 and progress[0]["source"] == "engine"
    assert progress[0]["payload"] == {"current": 1, "total": 2, "message": "half", "step": "first"}
    assert decoded[0]["source"] == "api" and decoded[1]["source"] == "worker"
    completed = decoded[-1]["payload"]
    assert completed["status"] == "succeeded" and completed["exit_code"] == 0
    steps_done = [e["payload"] for e in decoded if e["type"] == "run.step.completed"]
    assert [(s["step"], s["exit_code"]) for s in steps_done] == [("first", 0), ("second", 0)]
    assert all(isinstance(s["duration_ms"], int) for s in steps_done)

    resource = (await client.get(f"/runs/{run_id}")).json()
    assert resource["status"] == "succeeded" and resource["exit_code"] == 0
    on_disk = json.loads((data_dir / "runs" / run_id / "run.json").read_text())
    assert on_disk["status"] == "succeeded"


async def test_created_run_is_queued_with_run_queued_as_sequence_one(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}])
    created = await run(client, cfg)
    assert created["status"] == "queued"
    assert created["links"]["self"] == f"/api/v1/runs/{created['id']}"
    page = (await client.get(f"/runs/{created['id']}/events", params={"limit": 1})).json()
    assert page["items"][0]["type"] == "run.queued" and page["items"][0]["sequence"] == 1
    assert page["next_after_sequence"] == 1
    await wait_for_end(client, created["id"])


async def test_accept_header_streams_the_created_run(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "echo hi"}])
    frames = await collect_sse(
        client, f"/configurations/{cfg}/runs", method="POST", json={}, headers={"Accept": "text/event-stream"}
    )
    assert frames[-1].event == "end"
    assert json.loads(ade_events(frames)[-1].data)["type"] == "run.completed"


async def test_replay_then_live_has_no_gap_under_load(client: httpx.AsyncClient, data_dir: Path) -> None:
    """Subscribers attaching at random moments while a step prints 100,000 lines see each sequence once."""
    ws = await workspace(client)
    script = "for i in $(seq 0 9); do seq $((i * 10000 + 1)) $((i * 10000 + 10000)); sleep 0.2; done"
    cfg = await configuration(client, ws, [{"name": "load", "script": script}])
    created = await run(client, cfg)
    run_id = created["id"]
    rng = random.Random(7)
    received: dict[int, list[int]] = {}
    starts: dict[int, int] = {}

    async def subscriber(index: int) -> None:
        await anyio.sleep(rng.uniform(0, 2.5))
        after = 0 if index % 2 == 0 else rng.randint(0, 5000)
        starts[index] = after
        frames = await collect_sse(
            client, f"/runs/{run_id}/events", params={"stream": "true", "after_sequence": after}
        )
        assert frames[-1].event == "end"
        received[index] = [frame.id for frame in ade_events(frames)]  # type: ignore[misc]

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(subscriber, index)

    total = len(log_lines(data_dir, run_id))
    assert total >= 100_000 + 5
    for index, ids in received.items():
        assert ids == list(range(starts[index] + 1, total + 1)), f"subscriber {index} saw a gap or duplicate"
    page = (await client.get(f"/runs/{run_id}/events", params={"after_sequence": 3, "limit": 1000})).json()
    messages = [e["payload"]["message"] for e in page["items"] if e["type"] == "console.line"]
    assert messages[:5] == ["1", "2", "3", "4", "5"]


async def test_last_event_id_resumes_in_the_middle_of_a_live_run(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client, ws, [{"name": "slow", "script": "for i in $(seq 1 150); do echo $i; sleep 0.01; done"}]
    )
    run_id = (await run(client, cfg))["id"]
    url = f"/runs/{run_id}/events"
    first = ade_events(await collect_sse(client, url, params={"stream": "true"}, stop_after=40))
    assert [f.id for f in first] == list(range(1, 41))
    # Last-Event-ID wins over after_sequence, as EventSource sends it on reconnect.
    rest = await collect_sse(
        client, url, params={"stream": "true", "after_sequence": 5}, headers={"Last-Event-ID": "40"}
    )
    assert rest[-1].event == "end"
    rest_ids = [f.id for f in ade_events(rest)]
    assert rest_ids[0] == 41
    assert rest_ids == list(range(41, 41 + len(rest_ids)))
    assert json.loads(ade_events(rest)[-1].data)["type"] == "run.completed"


async def test_last_event_id_after_the_run_ended_replays_then_ends(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "seq 1 30"}])
    run_id = (await run(client, cfg))["id"]
    all_events = await wait_for_end(client, run_id)
    last = all_events[-1].id
    assert last is not None
    url = f"/runs/{run_id}/events"
    tail = await collect_sse(client, url, params={"stream": "true"}, headers={"Last-Event-ID": "20"})
    assert [f.id for f in ade_events(tail)] == list(range(21, last + 1))
    assert tail[-1].event == "end"
    nothing_left = await collect_sse(
        client, url, params={"stream": "true"}, headers={"Last-Event-ID": str(last)}
    )
    assert [(f.event, f.data) for f in nothing_left] == [("retry", "2000"), ("end", "{}")]


async def test_ndjson_format_returns_log_lines_after_a_sequence(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "seq 1 10"}])
    run_id = (await run(client, cfg))["id"]
    await wait_for_end(client, run_id)
    response = await client.get(f"/runs/{run_id}/events", params={"format": "ndjson", "after_sequence": 4})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.content.splitlines() == log_lines(data_dir, run_id)[4:]
    logfile = await client.get(f"/runs/{run_id}/logfile")
    assert logfile.content.splitlines() == log_lines(data_dir, run_id)
