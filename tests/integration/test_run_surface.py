"""The run surface users of ADE, Concourse and Valar rely on, through real HTTP against a real worker."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import anyio
import httpx
import pytest

from tests.api import (
    ade_events,
    collect_sse,
    configuration,
    events_to_end,
    links,
    run,
    wait_for_end,
    workspace,
)
from tests.system import ARTIFACT_LIMIT_BYTES, assert_none_survive, processes_running

pytestmark = pytest.mark.anyio


async def events_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    return await events_to_end(client, run_id)


async def upload(client: httpx.AsyncClient, ws: str, data: bytes, **kwargs: Any) -> dict[str, Any]:
    response = await client.post(f"/workspaces/{ws}/artifacts", content=data, **kwargs)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code", "details"} and (code is None or body["code"] == code), body


# 1. Inputs -----------------------------------------------------------------------------------------


async def test_artifacts_are_content_addressed_deduplicated_and_limited(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    raw = await upload(client, ws, b"hello artifact", params={"filename": "hello.txt"})
    assert raw["key"] == "sha256:" + hashlib.sha256(b"hello artifact").hexdigest()
    assert raw["size"] == 14 and raw["filename"] == "hello.txt"
    again = await upload(client, ws, b"hello artifact")
    assert again["key"] == raw["key"] and again["created_at"] == raw["created_at"]
    multipart = await client.post(
        f"/workspaces/{ws}/artifacts", files={"file": ("doc.csv", b"a,b\n1,2\n", "text/csv")}
    )
    assert multipart.status_code == 201
    assert multipart.json()["filename"] == "doc.csv" and multipart.json()["content_type"] == "text/csv"
    downloaded = await client.get(f"/artifacts/{raw['key']}", params={"workspace_id": ws})
    assert downloaded.status_code == 200 and downloaded.content == b"hello artifact"
    too_big = await client.post(f"/workspaces/{ws}/artifacts", content=b"x" * (ARTIFACT_LIMIT_BYTES + 1))
    assert_error(too_big, 413, "artifact_too_large")
    other = await workspace(client)
    assert_error(await client.get(f"/artifacts/{raw['key']}", params={"workspace_id": other}), 404)
    assert_error(await client.get("/artifacts/sha256:nothex", params={"workspace_id": ws}), 400)


async def test_input_artifacts_are_placed_before_the_first_step(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    first = await upload(client, ws, b"first input\n")
    second = await upload(client, ws, b"second input\n")
    cfg = await configuration(
        client, ws, [{"name": "read", "script": 'cat "$ADE_INPUT_DIR/a.txt" "$ADE_INPUT_DIR/docs/b.txt"'}]
    )
    inputs = [{"key": first["key"], "name": "a.txt"}, {"key": second["key"], "name": "docs/b.txt"}]
    created = await client.post(f"/configurations/{cfg}/runs", json={"options": {"input_artifacts": inputs}})
    assert created.status_code == 201
    run_id = created.json()["id"]
    events = await events_of(client, run_id)
    lines = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert lines == ["first input", "second input"]
    listed = (await client.get(f"/runs/{run_id}/inputs")).json()
    assert [(i["name"], i["key"], i["size"]) for i in listed] == [
        ("a.txt", first["key"], 12),
        ("docs/b.txt", second["key"], 13),
    ]
    missing = {"options": {"input_artifacts": [{"key": "sha256:" + "0" * 64, "name": "x"}]}}
    assert_error(await client.post(f"/configurations/{cfg}/runs", json=missing), 404, "artifact_not_found")
    escaping = {"options": {"input_artifacts": [{"key": first["key"], "name": "../escape"}]}}
    assert_error(await client.post(f"/configurations/{cfg}/runs", json=escaping), 400, "invalid_input_name")


# 2. Outputs ----------------------------------------------------------------------------------------

OUTPUT_SCRIPT = """
mkdir -p "$ADE_OUTPUT_DIR/reports"
printf '0123456789' > "$ADE_OUTPUT_DIR/digits.txt"
printf '{"ok": true}' > "$ADE_OUTPUT_DIR/reports/result.json"
ln -s /etc/passwd "$ADE_OUTPUT_DIR/passwd"
ln -s /etc "$ADE_OUTPUT_DIR/etc"
"""


async def test_outputs_are_listed_downloaded_with_ranges_and_confined(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "write", "script": OUTPUT_SCRIPT}])
    run_id = (await run(client, cfg))["id"]
    await wait_for_end(client, run_id)
    listing = (await client.get(f"/runs/{run_id}/outputs")).json()
    assert [(i["path"], i["size"], i["content_type"]) for i in listing["items"]] == [
        ("digits.txt", 10, "text/plain"),
        ("reports/result.json", 12, "application/json"),
    ]
    assert listing["items"][0]["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
    url = listing["download_urls"]["reports/result.json"]
    assert (await client.get(url.removeprefix("/api/v1"))).json() == {"ok": True}
    ranged = await client.get(f"/runs/{run_id}/outputs/digits.txt", headers={"Range": "bytes=2-5"})
    assert ranged.status_code == 206 and ranged.content == b"2345"
    assert ranged.headers["content-range"] == "bytes 2-5/10"
    tail = await client.get(f"/runs/{run_id}/outputs/digits.txt", headers={"Range": "bytes=-3"})
    assert tail.status_code == 206 and tail.content == b"789"
    unsatisfiable = await client.get(f"/runs/{run_id}/outputs/digits.txt", headers={"Range": "bytes=50-"})
    assert_error(unsatisfiable, 416, "range_not_satisfiable")
    assert unsatisfiable.headers["content-range"] == "bytes */10"

    base = f"/api/v1/runs/{run_id}/outputs/"
    attempts = [
        "../run.json", "..%2frun.json", "%2e%2e/run.json", "%252e%252e/run.json", "reports/../../run.json",
        "passwd", "etc/passwd", "..\\run.json", "reports",
    ]  # fmt: skip
    for attempt in attempts:
        request = client.build_request("GET", base + "x")
        request.url = request.url.copy_with(raw_path=(base + attempt).encode())
        response = await client.send(request)
        assert response.status_code in (400, 404), (attempt, response.status_code)
        assert set(response.json()) == {"error", "code", "details"}, attempt
        assert b"root:" not in response.content and b"run_id" not in response.content


# 3. Views ------------------------------------------------------------------------------------------

SUMMARY_SCRIPT = """
echo out; echo err >&2
printf '%s\\n' '{"type":"progress","current":1,"total":2}' >&$ADE_EVENTS_FD
printf '%s\\n' '{"type":"progress","current":2,"total":2,"message":"done"}' >&$ADE_EVENTS_FD
printf '%s\\n' '{"type":"summary","rows":42}' >&$ADE_EVENTS_FD
echo data > "$ADE_OUTPUT_DIR/out.txt"
"""


async def test_summary_plan_and_diagnostics(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    secret_env = {"API_TOKEN": {"value": "hunter2-secret", "secret": True}, "MODE": "fast"}
    steps = [{"name": "work", "script": SUMMARY_SCRIPT}, {"name": "fail", "script": "exit 4"}]
    cfg = await configuration(client, ws, steps, environment=secret_env)
    run_id = (await run(client, cfg))["id"]
    await wait_for_end(client, run_id)
    # The plan is a snapshot: later edits to the configuration do not change it.
    await client.put(
        f"/configurations/{cfg}", json={"name": "edited", "steps": [{"name": "new", "script": "true"}]}
    )
    plan = (await client.get(f"/runs/{run_id}/plan")).json()
    assert plan["name"] == "cfg" and [s["name"] for s in plan["steps"]] == ["work", "fail"]
    assert plan["environment"] == {"API_TOKEN": {"secret": True}, "MODE": "fast"}

    summary = (await client.get(f"/runs/{run_id}/summary")).json()
    assert summary["status"] == "failed" and summary["exit_code"] == 4
    assert [(s["name"], s["status"], s["exit_code"]) for s in summary["steps"]] == [
        ("work", "succeeded", 0),
        ("fail", "failed", 4),
    ]
    assert all(isinstance(s["duration_ms"], int) for s in summary["steps"])
    assert summary["events"]["console_lines_by_stream"] == {"stdout": 1, "stderr": 1}
    assert summary["events"]["by_type"]["engine.progress"] == 2
    assert summary["events"]["total"] == sum(summary["events"]["by_type"].values())
    assert summary["last_progress"] == {"current": 2, "total": 2, "message": "done", "step": "work"}
    assert summary["summary"] == {"rows": 42, "step": "work"}
    assert summary["outputs_count"] == 1 and summary["duration_ms"] >= 0

    diagnostics = (await client.get(f"/runs/{run_id}/diagnostics")).json()
    assert diagnostics["attempt"] == 1 and diagnostics["worker"]
    timings = diagnostics["timings"]
    assert timings["queued_at"] <= timings["started_at"] <= timings["completed_at"]
    assert timings["queue_wait_ms"] >= 0 and timings["run_ms"] >= 0
    assert diagnostics["environment"] == {"API_TOKEN": {"secret": True}, "MODE": "fast"}
    assert diagnostics["failure"]["code"] == "exit_nonzero" and diagnostics["failure"]["step"] == "fail"
    assert "hunter2" not in json.dumps([plan, summary, diagnostics])


# 4. Logs -------------------------------------------------------------------------------------------


async def test_logs_as_pages_text_and_filtered(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "for i in 1 2 3 4; do echo out$i; echo err$i >&2; done"}]
    )
    run_id = (await run(client, cfg))["id"]
    await wait_for_end(client, run_id)
    page = (await client.get(f"/runs/{run_id}/logs", params={"stream": "stdout", "limit": 3})).json()
    assert [i["message"] for i in page["items"]] == ["out1", "out2", "out3"]
    assert all(i["stream"] == "stdout" and i["step"] == "s" for i in page["items"])
    rest = (
        await client.get(
            f"/runs/{run_id}/logs", params={"stream": "stdout", "after_sequence": page["next_after_sequence"]}
        )
    ).json()
    assert [i["message"] for i in rest["items"]] == ["out4"]
    text = await client.get(f"/runs/{run_id}/logs", params={"format": "text", "stream": "stderr"})
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == "err1\nerr2\nerr3\nerr4\n"


async def test_follow_logs_streams_live_and_ends_with_the_run(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "for i in $(seq 1 30); do echo line$i; sleep 0.02; done"}]
    )
    run_id = (await run(client, cfg))["id"]
    received = b""
    with anyio.fail_after(60):
        async with client.stream("GET", f"/runs/{run_id}/logs", params={"follow": "true"}) as response:
            assert response.headers["content-type"].startswith("text/plain")
            async for chunk in response.aiter_bytes():
                received += chunk
    assert received.decode().splitlines() == [f"line{i}" for i in range(1, 31)]
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"


# 5. Cancel -----------------------------------------------------------------------------------------


async def test_cancel_a_running_run_kills_everything_its_step_started(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    script = "echo started; trap '' TERM; sleep 3201 & sleep 3202"
    cfg = await configuration(
        client, ws, [{"name": "stubborn", "script": script}, {"name": "never", "script": "true"}]
    )
    run_id = (await run(client, cfg))["id"]
    url = f"/runs/{run_id}/events"
    first = ade_events(await collect_sse(client, url, params={"stream": "true"}, stop_after=4))
    assert any('"started"' in f.data for f in first) and processes_running("sleep 3202")
    response = await client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202
    events = await events_of(client, run_id)
    types = [e["type"] for e in events]
    assert "run.cancel_requested" in types
    assert types.index("run.cancel_requested") < types.index("run.step.completed")
    step_done = next(e["payload"] for e in events if e["type"] == "run.step.completed")
    assert step_done["status"] == "cancelled" and step_done["step"] == "stubborn"
    assert [e["payload"]["step"] for e in events if e["type"] == "run.step.started"] == ["stubborn"]
    assert (
        events[-1]["payload"]["status"] == "cancelled"
        and events[-1]["payload"]["cancelled_by"] == "bootstrap"
    )
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "cancelled"
    await assert_none_survive("sleep 3201")  # SIGTERM ignored, so SIGKILL after the grace period
    await assert_none_survive("sleep 3202")
    assert_error(await client.post(f"/runs/{run_id}/cancel"), 409, "run_finished")


async def test_cancel_a_queued_run_means_it_never_starts(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    blocker = await configuration(client, ws, [{"name": "block", "script": "sleep 60"}])
    blockers = [(await run(client, blocker))["id"] for _ in range(4)]  # the worker runs 4 at once
    for blocker_id in blockers:  # wait until each has started
        await collect_sse(client, f"/runs/{blocker_id}/events", params={"stream": "true"}, stop_after=2)
    cfg = await configuration(client, ws, [{"name": "s", "script": "echo should-not-run"}])
    queued = (await run(client, cfg))["id"]
    response = await client.post(f"/runs/{queued}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    for blocker_id in blockers:
        assert (await client.post(f"/runs/{blocker_id}/cancel")).status_code == 202
    events = await events_of(client, queued)
    assert [e["type"] for e in events] == [
        "run.queued", "run.cancel_requested", "run.step.skipped", "run.completed"
    ]  # fmt: skip
    assert events[-1]["payload"]["status"] == "cancelled"
    for blocker_id in blockers:
        assert (await events_of(client, blocker_id))[-1]["payload"]["status"] == "cancelled"
    assert (await client.get(f"/runs/{queued}")).json()["started_at"] is None


# 6. Re-run, 7. commit metadata ---------------------------------------------------------------------


async def test_rerun_makes_a_linked_attempt_with_the_same_plan_and_inputs(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    artifact = await upload(client, ws, b"input-bytes")
    cfg = await configuration(client, ws, [{"name": "s", "script": 'cat "$ADE_INPUT_DIR/in"; echo'}])
    commit = {
        "repo_url": "https://git.example/repo",
        "branch": "main",
        "hash": "abc123",
        "message": "m",
        "author": "a",
    }
    body = {"options": {"input_artifacts": [{"key": artifact["key"], "name": "in"}]}, "commit": commit}
    original = (await client.post(f"/configurations/{cfg}/runs", json=body)).json()
    assert original["commit"] == commit and original["attempt"] == 1 and original["rerun_of"] is None
    await wait_for_end(client, original["id"])
    await client.put(
        f"/configurations/{cfg}", json={"name": "changed", "steps": [{"name": "x", "script": "exit 9"}]}
    )
    second = (await client.post(f"/runs/{original['id']}/rerun")).json()
    third = (await client.post(f"/runs/{original['id']}/rerun")).json()
    assert (second["attempt"], second["rerun_of"]) == (2, original["id"])
    assert (third["attempt"], third["rerun_of"]) == (3, original["id"])
    assert second["input_artifacts"] == original["input_artifacts"] and second["commit"] == commit
    events = await events_of(client, second["id"])
    assert [e["payload"]["message"] for e in events if e["type"] == "console.line"] == ["input-bytes"]
    assert events[-1]["payload"]["status"] == "succeeded"  # the original plan, not the edited configuration
    await wait_for_end(client, third["id"])
    assert_error(await client.post("/runs/run_01ZZZZZZZZZZZZZZZZZZZZZZZZ/rerun"), 404)


# 8. Listing ----------------------------------------------------------------------------------------


async def test_listing_filters_and_pages_both_ways(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    good = await configuration(client, ws, [{"name": "s", "script": "true"}])
    bad = await configuration(client, ws, [{"name": "s", "script": "exit 1"}])
    created: list[str] = []
    for index in range(7):
        cfg = bad if index % 3 == 0 else good
        branch = "main" if index % 2 == 0 else "dev"
        response = await client.post(f"/configurations/{cfg}/runs", json={"commit": {"branch": branch}})
        created.append(response.json()["id"])
    for run_id in created:
        await wait_for_end(client, run_id)
    newest_first = list(reversed(created))

    async def walk(url: str, rel: str) -> list[list[str]]:
        pages = []
        next_url: str | None = url
        while next_url:
            response = await client.get(next_url.removeprefix("/api/v1"))
            pages.append([item["id"] for item in response.json()["items"]])
            next_url = links(response).get(rel)
        return pages

    forward = await walk(f"/workspaces/{ws}/runs?limit=3", "next")
    assert forward == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    last_page = (
        await client.get(f"/workspaces/{ws}/runs", params={"limit": 3, "before": newest_first[5]})
    ).json()
    backward = await walk(f"/workspaces/{ws}/runs?limit=3&after={last_page['items'][0]['id']}", "prev")
    assert backward == [newest_first[3:6], newest_first[0:3]]
    failed = (await client.get(f"/workspaces/{ws}/runs", params={"status": "failed"})).json()["items"]
    assert [r["id"] for r in failed] == [created[6], created[3], created[0]]
    both_response = await client.get(
        f"/workspaces/{ws}/runs", params=[("status", "failed"), ("status", "succeeded")]
    )
    assert both_response.status_code == 200, both_response.text
    both = both_response.json()
    assert len(both["items"]) == 7
    main = (await client.get(f"/workspaces/{ws}/runs", params={"branch": "main"})).json()["items"]
    assert [r["id"] for r in main] == [created[6], created[4], created[2], created[0]]
    by_cfg = (await client.get(f"/configurations/{bad}/runs")).json()["items"]
    assert [r["id"] for r in by_cfg] == [created[6], created[3], created[0]]
    filtered = (
        await client.get(f"/workspaces/{ws}/runs", params={"configuration_id": bad, "branch": "dev"})
    ).json()
    assert [r["id"] for r in filtered["items"]] == [created[3]]
    middle = (await client.get(f"/runs/{created[3]}")).json()["created_at"]
    after = (await client.get(f"/workspaces/{ws}/runs", params={"created_after": middle})).json()["items"]
    assert created[3] in [r["id"] for r in after] and created[0] not in [r["id"] for r in after]
    before = (await client.get(f"/workspaces/{ws}/runs", params={"created_before": middle})).json()["items"]
    assert created[6] not in [r["id"] for r in before] and created[0] in [r["id"] for r in before]
    assert_error(await client.get(f"/workspaces/{ws}/runs", params={"limit": 0}), 400)


# 9. Id prefixes ------------------------------------------------------------------------------------


async def test_run_ids_resolve_from_unique_prefixes(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}])
    for _ in range(20):  # runs created within ~1 s share the first 8 characters of their ULIDs
        a, b = (await run(client, cfg))["id"], (await run(client, cfg))["id"]
        if a[:12] == b[:12]:
            break
    else:
        pytest.fail("could not create two runs sharing an 8-character prefix")
    unique = a[:-3]
    assert (await client.get(f"/runs/{unique}")).json()["id"] == a
    assert (await client.get(f"/runs/{unique.lower()}")).json()["id"] == a
    ambiguous = await client.get(f"/runs/{a[:12]}")
    assert_error(ambiguous, 409, "ambiguous_id")
    candidates = ambiguous.json()["details"][0]["candidates"]
    assert len(candidates) >= 2 and all(c.startswith(a[:12]) for c in candidates)
    assert_error(await client.get(f"/runs/{a[:10]}"), 404, "run_not_found")  # too short
    assert (await client.get(f"/runs/{unique}/summary")).json()["run_id"] == a
    for run_id in (a, b):
        await wait_for_end(client, run_id)
