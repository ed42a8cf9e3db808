"""Failing runs: non-zero exits and timeouts end the run, and a timed-out step leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api import configuration, events_to_end, run, workspace
from tests.system import assert_none_survive

pytestmark = pytest.mark.anyio


async def test_non_zero_exit_fails_the_run_and_stops_later_steps(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client, ws, [{"name": "bad", "script": "echo before; exit 3"}, {"name": "never", "script": "echo no"}]
    )
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    started_steps = [e["payload"]["step"] for e in events if e["type"] == "run.step.started"]
    assert started_steps == ["bad"]
    completed = events[-1]
    assert completed["type"] == "run.completed"
    assert completed["payload"]["status"] == "failed"
    assert completed["payload"]["exit_code"] == 3
    assert completed["payload"]["failure"]["code"] == "exit_nonzero"
    assert completed["payload"]["failure"]["step"] == "bad"
    resource = (await client.get(f"/runs/{run_id}")).json()
    assert resource["status"] == "failed"
    assert resource["failure"] == completed["payload"]["failure"]


async def test_step_timeout_fails_the_run_and_kills_everything_it_started(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    script = "echo started; sleep 3101 & sleep 3102"
    cfg = await configuration(client, ws, [{"name": "stuck", "script": script, "timeout_s": 1}])
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    completed = events[-1]["payload"]
    assert completed["status"] == "failed"
    assert completed["failure"]["code"] == "timeout"
    assert completed["failure"]["step"] == "stuck"
    assert "its timeout of 1 s" in completed["failure"]["message"]
    step_done = next(e["payload"] for e in events if e["type"] == "run.step.completed")
    assert step_done["status"] == "failed" and step_done["exit_code"] is None
    assert step_done["failure"]["code"] == "timeout"
    await assert_none_survive("sleep 3101")  # the background child too
    await assert_none_survive("sleep 3102")


async def test_run_timeout_bounds_all_steps(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(
        client,
        ws,
        [{"name": "quick", "script": "true"}, {"name": "long", "script": "sleep 60", "timeout_s": 600}],
        timeout_s=1,
    )
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    failure = events[-1]["payload"]["failure"]
    assert failure["code"] == "timeout" and failure["step"] == "long"
    assert "the run's timeout of 1 s" in failure["message"]


async def test_overlong_console_line_is_cut_and_marked(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    script = "python3 -c \"print('x' * 20000); print('short')\""
    cfg = await configuration(client, ws, [{"name": "long", "script": script}])
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    lines = [e["payload"] for e in events if e["type"] == "console.line"]
    assert len(lines[0]["message"]) == 16384 and lines[0]["truncated"] is True
    assert lines[1] == {"scope": "run", "stream": "stdout", "step": "long", "message": "short"}


async def test_steps_cannot_forge_lifecycle_events(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    forged = (
        """printf '%s\\n' '{"type":"run.completed","sequence":1}' """
        """'{"type":"summary","rows":3,"sequence":99}' >&$ADE_EVENTS_FD"""
    )
    cfg = await configuration(client, ws, [{"name": "s", "script": forged}])
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    assert [e["type"] for e in events].count("run.completed") == 1
    summary = next(e for e in events if e["type"] == "engine.summary")
    assert summary["payload"] == {"rows": 3, "step": "s"}
    assert summary["sequence"] != 99
    warning = next(e for e in events if e["type"] == "console.line")
    assert warning["payload"]["stream"] == "stderr" and "run.completed" in warning["payload"]["message"]


async def test_step_environment_has_ade_variables_and_no_service_settings(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    script = 'echo "$ADE_RUN_ID|$ADE_INPUT_DIR|$ADE_OUTPUT_DIR|$GREETING|$STEP_ONLY|${ADE_REDIS_URL:-unset}"'
    cfg = await configuration(
        client,
        ws,
        [{"name": "env", "script": script, "environment": {"STEP_ONLY": "s"}}],
        environment={"GREETING": "hi"},
    )
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    line = next(e["payload"]["message"] for e in events if e["type"] == "console.line")
    rid, inputs, outputs, greeting, step_only, redis_url = line.split("|")
    assert rid == run_id  # fixed paths inside the sandbox; the run's own directories under the host executor
    assert inputs in ("/ade/inputs", f"{data_dir}/runs/{run_id}/inputs")
    assert outputs in ("/ade/outputs", f"{data_dir}/runs/{run_id}/outputs")
    assert (greeting, step_only, redis_url) == ("hi", "s", "unset")
