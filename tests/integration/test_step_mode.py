"""Step mode (README "Step mode"): the build server's runner API, where a runner that is nothing but bash and
curl fetches a run's steps one by one (`GET /api/runner/{stepId}`: a bash script) and reports how each ended
(`POST /api/runner/{stepId}/complete`). Real system, real HTTP; the runner is a bash script."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from ade.core.settings import Settings
from ade.lifecycle import queue
from ade.lifecycle.remote import take_run
from ade.records.store import Store
from tests.api import configuration, console_lines, events_to_end, run, run_to_end, workspace
from tests.system import AdeSystem

pytestmark = pytest.mark.anyio

Event = dict[str, Any]
SUCCESS = {"status": "success"}

# A dumb runner: for each step id given, fetch its script, run it with bash (output and exit code
# captured), report it with a JSON body jq builds; a step it may not fetch (409: skipped, not ready) is
# passed over, as the build server's runners do.
RUNNER = r"""#!/usr/bin/env bash
set -u
base=$1; token=$2; shift 2
for step in "$@"; do
  script=$(mktemp)
  if ! curl -fsS -H "Authorization: Bearer $token" "$base/api/runner/$step" -o "$script" 2>/dev/null; then
    echo "$step: not fetched"
    continue
  fi
  logs=$(bash "$script" 2>&1)
  code=$?
  if [ "$code" -eq 0 ]; then status=success; else status=failed; fi
  body=$(jq -n --arg status "$status" --arg logs "$logs" '{status: $status, logs: $logs}')
  answer=$(curl -fsS -X POST -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    --data-binary "$body" "$base/api/runner/$step/complete")
  echo "$step: exit $code: $answer"
done
"""


async def api_key(client: httpx.AsyncClient, ws: str, role: str = "operator") -> str:
    response = await client.post(f"/workspaces/{ws}/api-keys", json={"name": f"runner-{role}", "role": role})
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


def runner_url(system: AdeSystem, step_id: str, complete: bool = False) -> str:
    return f"{system.base_url}/api/runner/{step_id}" + ("/complete" if complete else "")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def step_mode_run(client: httpx.AsyncClient, ws: str, steps: list[dict[str, Any]], **extra: Any) -> str:
    cfg = await configuration(client, ws, steps, runs_on=["bash"], **extra)
    return str((await run(client, cfg))["id"])


def run_runner(tmp_path: Path, system: AdeSystem, token: str, step_ids: list[str]) -> str:
    runner = tmp_path / "runner.sh"
    runner.write_text(RUNNER)
    done = subprocess.run(
        ["bash", str(runner), system.base_url, token, *step_ids],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def step_events(events: list[Event], kind: str) -> dict[str, Event]:
    return {e["payload"]["step"]: e for e in events if e["type"] == f"run.step.{kind}"}


async def test_a_bash_and_curl_runner_executes_a_runs_steps_one_by_one(
    system: AdeSystem, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    ws = await workspace(client)
    token = await api_key(client, ws)
    steps = [
        {"name": "prepare", "script": 'echo "greeting $GREETING $TOKEN"; echo hello > shared.txt'},
        {"name": "test", "script": 'echo "read $(cat shared.txt)"; echo broken >&2; exit 3'},
        {"name": "publish", "script": "echo never", "depends_on": ["test"]},
    ]
    steps[1]["depends_on"] = ["prepare"]
    environment = {"GREETING": "hello", "TOKEN": {"value": "s3cr3t-value", "secret": True}}
    run_id = await step_mode_run(client, ws, steps, environment=environment)
    subscriber = asyncio.create_task(events_to_end(client, run_id))  # subscribed while it is queued

    output = await asyncio.to_thread(run_runner, tmp_path, system, token, [f"{run_id}.{i}" for i in range(3)])

    assert f"{run_id}.0: exit 0:" in output and f"{run_id}.1: exit 3:" in output
    assert f"{run_id}.2: not fetched" in output  # skipped: its fetch is 409
    assert '"buildComplete":true' in output.splitlines()[1] and '"stepStatus":"failed"' in output
    events = await asyncio.wait_for(subscriber, 30)
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    types = [e["type"] for e in events]
    assert types[:3] == ["run.queued", "run.started", "run.step.started"]
    assert types[-1] == "run.completed" and events[-1]["payload"]["status"] == "failed"
    assert events[1]["payload"]["worker"] == "step runner" and events[1]["source"] == "runner"
    assert console_lines(events) == ["greeting hello ***", "read hello", "broken"]  # secrets masked
    assert all(e["payload"]["step"] == "test" for e in events if e["payload"].get("message") == "broken")
    completed, skipped = step_events(events, "completed"), step_events(events, "skipped")
    assert completed["prepare"]["payload"]["status"] == "succeeded"
    assert completed["test"]["payload"]["failure"]["code"] == "exit_nonzero"
    assert skipped["publish"]["payload"]["reason"] == "dependency 'test' failed"
    resource = (await client.get(f"/runs/{run_id}")).json()
    assert resource["status"] == "failed" and resource["failure"]["step"] == "test"
    assert [s["status"] for s in resource["steps"]] == ["succeeded", "failed", "skipped"]
    assert "s3cr3t-value" not in str(events)
    assert (tmp_path / "ade-work" / run_id / "shared.txt").read_text() == "hello\n"  # one work dir


async def test_a_step_waits_for_its_dependencies_and_a_running_step_answers_the_same_script(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    ws = await workspace(client)
    steps = [{"name": "first", "script": "echo one"}, {"name": "second", "script": "echo two"}]
    run_id = await step_mode_run(client, ws, steps)

    early = await client.get(runner_url(system, f"{run_id}.1"))
    assert early.status_code == 409 and early.json()["code"] == "step_not_ready"
    assert early.json()["details"] == [{"step_id": f"{run_id}.0", "step": "first"}]
    assert "first" in early.json()["error"]
    not_started = await client.post(runner_url(system, f"{run_id}.1", True), json={"status": "success"})
    assert not_started.status_code == 409 and not_started.json()["code"] == "step_not_started"

    script = await client.get(runner_url(system, f"{run_id}.0"))
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/plain")
    again = await client.get(runner_url(system, f"{run_id}.0"))
    assert again.text == script.text  # a running step: the same script (a runner retrying its fetch)
    assert (await client.get(runner_url(system, f"{run_id}.1"))).status_code == 409  # still running

    first_done = {"status": "success", "logs": "one"}
    done = await client.post(runner_url(system, f"{run_id}.0", True), json=first_done)
    assert done.status_code == 200
    assert done.json() == {"success": True, "stepStatus": "succeeded", "buildComplete": False}
    assert (await client.get(runner_url(system, f"{run_id}.1"))).status_code == 200
    last = await client.post(runner_url(system, f"{run_id}.1", True), json={"status": "success"})
    assert last.json() == {"success": True, "stepStatus": "succeeded", "buildComplete": True}
    finished = await client.get(runner_url(system, f"{run_id}.1"))
    assert finished.status_code == 409 and finished.json()["code"] == "step_finished"
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "succeeded"
    summary = (await client.get(f"/runs/{run_id}/summary")).json()
    assert [step["step_id"] for step in summary["steps"]] == [f"{run_id}.0", f"{run_id}.1"]


async def test_completing_a_step_twice_applies_it_once(system: AdeSystem, client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    run_id = await step_mode_run(client, ws, [{"name": "only", "script": "echo x"}])
    assert (await client.get(runner_url(system, f"{run_id}.0"))).status_code == 200
    body = {"status": "failed", "logs": "line 1\nline 2\n"}
    first = await client.post(runner_url(system, f"{run_id}.0", True), json=body)
    retry = await client.post(runner_url(system, f"{run_id}.0", True), json=body)
    assert first.status_code == retry.status_code == 200
    assert first.json() == retry.json() == {"success": True, "stepStatus": "failed", "buildComplete": True}
    other = await client.post(runner_url(system, f"{run_id}.0", True), json={"status": "success"})
    assert other.status_code == 409 and other.json()["code"] == "step_finished"
    events = await events_to_end(client, run_id)
    assert console_lines(events) == ["line 1", "line 2"]
    assert [e["type"] for e in events].count("run.step.completed") == 1


async def test_hostile_environment_values_stay_inert_in_the_script(
    system: AdeSystem, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    hostile = {
        "SUBSHELL": "$(touch pwned-subshell)",
        "BACKTICKS": "`touch pwned-backticks`",
        "QUOTES": "'; touch pwned-quote; echo '\"",
        "NEWLINE": "first\ntouch pwned-newline",
        "EXPANSION": "${HOME} $PATH",
    }
    ws = await workspace(client)
    names = ("SUBSHELL", "BACKTICKS", "QUOTES", "NEWLINE", "EXPANSION")
    script = "printf '%s|' " + " ".join(f'"${name}"' for name in names) + '; echo "it\'s"'
    step = {"name": "show", "script": script, "environment": {"QUOTES": hostile["QUOTES"]}}
    run_wide = {name: value for name, value in hostile.items() if name != "QUOTES"}
    run_id = await step_mode_run(client, ws, [step], environment=run_wide)
    text = (await client.get(runner_url(system, f"{run_id}.0"))).text
    (tmp_path / "step.sh").write_text(text)
    done = await asyncio.to_thread(
        subprocess.run, ["bash", "step.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "|".join(hostile[name] for name in names) + "|it's\n"
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("pwned*")))
    assert "set -euo pipefail" in text and f"ade-work/{run_id}" in text


async def test_a_step_of_another_workspace_is_not_found(system: AdeSystem, client: httpx.AsyncClient) -> None:
    ws, other = await workspace(client), await workspace(client, "other")
    run_id = await step_mode_run(client, ws, [{"name": "only", "script": "true"}])
    stranger = bearer(await api_key(client, other))
    answers = [
        await client.get(runner_url(system, f"{run_id}.0"), headers=stranger),
        await client.post(runner_url(system, f"{run_id}.0", True), headers=stranger, json=SUCCESS),
        await client.get(runner_url(system, f"{run_id}.7")),  # no such step
        await client.get(runner_url(system, "run_01J0000000000000000000000.0")),  # no such run
        await client.get(runner_url(system, "not-a-step")),
    ]
    assert [a.status_code for a in answers] == [404] * 5
    assert {a.json()["code"] for a in answers} == {"step_not_found"}
    assert all(set(a.json()) == {"error", "code", "details"} for a in answers)
    viewer = bearer(await api_key(client, ws, "viewer"))
    assert (await client.get(runner_url(system, f"{run_id}.0"), headers=viewer)).status_code == 403
    assert (await client.get(runner_url(system, f"{run_id}.0"))).status_code == 200  # untouched by those
    unauthenticated = await client.get(runner_url(system, f"{run_id}.0"), headers={"Authorization": ""})
    assert unauthenticated.status_code == 401


async def test_a_bad_completion_body_is_refused_and_changes_nothing(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    ws = await workspace(client)
    run_id = await step_mode_run(client, ws, [{"name": "only", "script": "true"}])
    assert (await client.get(runner_url(system, f"{run_id}.0"))).status_code == 200
    url = runner_url(system, f"{run_id}.0", True)
    for body in ({"status": "done"}, {"logs": "x"}, {"status": "success", "outputPaths": ["../escape"]}):
        answer = await client.post(url, json=body)
        assert answer.status_code == 400, body
        assert answer.json()["error"] and "details" in answer.json()
    assert (await client.get(f"/runs/{run_id}")).json()["steps"][0]["status"] == "running"
    ok = await client.post(url, json={"status": "success", "outputPaths": ["dist/app.tar"]})
    assert ok.json()["buildComplete"] is True
    outputs = (await client.get(f"/runs/{run_id}")).json()["steps"][0]["outputs"]
    assert outputs == [{"path": "dist/app.tar", "size": 0, "source": "output_paths", "replaced": None}]


async def test_a_workers_never_execute_a_step_mode_run_and_native_runners_cannot_take_it(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    ws = await workspace(client)
    run_id = await step_mode_run(client, ws, [{"name": "only", "script": "echo step-mode"}])
    # A run the workers execute, created after it, ends: the workers polled past the step-mode run.
    normal, _ = await run_to_end(client, await configuration(client, ws, [{"name": "w", "script": "true"}]))
    assert normal["status"] == "succeeded"
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "queued"

    settings = Settings(redis_url=system.redis.url, data_dir=system.data_dir)
    redis = Redis.from_url(system.redis.url)
    try:
        store = Store(redis, system.data_dir)
        assert (await client.get(runner_url(system, f"{run_id}.0"))).status_code == 200
        assert await queue.claim_offer(store, settings, ws, {"bash"}) is None  # step mode took it
        done = await client.post(runner_url(system, f"{run_id}.0", True), json={"status": "success"})
        assert done.json()["buildComplete"] is True

        taken_id = await step_mode_run(client, ws, [{"name": "only", "script": "true"}])
        assignment = await take_run(settings, store, NativeRunner(), ws, {"bash"})
        assert assignment is not None and assignment.run.id == taken_id
    finally:
        await redis.aclose()
    refused = await client.get(runner_url(system, f"{taken_id}.0"))
    assert refused.status_code == 409 and refused.json()["code"] == "run_taken"


async def test_a_cancel_ends_a_step_mode_run_at_its_runners_next_call(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    ws = await workspace(client)
    steps = [{"name": "first", "script": "true"}, {"name": "second", "script": "true"}]
    run_id = await step_mode_run(client, ws, steps)
    assert (await client.get(runner_url(system, f"{run_id}.0"))).status_code == 200
    assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
    done = await client.post(runner_url(system, f"{run_id}.0", True), json=SUCCESS)
    assert done.json() == {"success": True, "stepStatus": "succeeded", "buildComplete": True}
    events = await events_to_end(client, run_id)
    assert [e["type"] for e in events][-3:] == ["run.cancel_requested", "run.step.skipped", "run.completed"]
    assert events[-1]["payload"]["status"] == "cancelled"
    refused = await client.get(runner_url(system, f"{run_id}.1"))
    assert refused.status_code == 409 and refused.json()["code"] == "step_finished"


class NativeRunner:
    id = "rnr_01J0000000000000000000TEST"
    name = "native"
