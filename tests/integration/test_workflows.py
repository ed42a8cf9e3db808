"""Workflows: a configuration's steps as a graph (`depends_on`), run in parallel, with `when: always`
cleanup and `on_failure` steps, at most ADE_MAX_PARALLEL_STEPS at once; and the graph checked when the
configuration is saved (README "Workflows"). Real runs on a real system; every test synchronises on the
run's events."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.api import configuration, events_to_end, run, workspace
from tests.system import AdeSystem, assert_none_survive

pytestmark = pytest.mark.anyio

Event = dict[str, Any]


async def finished(client: httpx.AsyncClient, run_id: str) -> list[Event]:
    return await events_to_end(client, run_id)


async def events_until(client: httpx.AsyncClient, run_id: str, seen: Callable[[Event], bool]) -> list[Event]:
    """The run's events from the start up to the first one `seen` accepts."""
    events: list[Event] = []
    params = {"stream": "true"}
    async with aconnect_sse(client, "GET", f"/runs/{run_id}/events", params=params) as source:
        async for sse in source.aiter_sse():
            if sse.event == "ade.event":
                events.append(json.loads(sse.data))
                if seen(events[-1]):
                    return events
    raise AssertionError(f"the run ended before the awaited event: {[e['type'] for e in events]}")


def position(events: list[Event], kind: str, step: str) -> int:
    """Where the step's `run.step.<kind>` event is in the stream."""
    return next(
        i for i, e in enumerate(events) if e["type"] == f"run.step.{kind}" and e["payload"]["step"] == step
    )


def outcome(events: list[Event]) -> dict[str, str]:
    """Each step's last status, from the events."""
    found: dict[str, str] = {}
    for event in events:
        if event["type"] == "run.step.completed":
            found[event["payload"]["step"]] = event["payload"]["status"]
        elif event["type"] == "run.step.skipped":
            found[event["payload"]["step"]] = "skipped"
    return found


def reason(events: list[Event], step: str) -> str:
    return str(events[position(events, "skipped", step)]["payload"]["reason"])


def console(events: list[Event], step: str) -> list[str]:
    return [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line" and e["payload"]["step"] == step
    ]


def most_running(events: list[Event]) -> int:
    running = most = 0
    for event in events:
        running += {"run.step.started": 1, "run.step.completed": -1}.get(event["type"], 0)
        most = max(most, running)
    return most


# Scheduling -------------------------------------------------------------------------------------------


async def test_a_diamonds_middle_steps_overlap_and_its_join_waits_for_both(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "a", "script": "echo a > a.txt"},
        {"name": "b", "script": "sleep 1.5; cat a.txt; echo b", "depends_on": ["a"]},
        {"name": "c", "script": "sleep 1.5; echo c", "depends_on": ["a"]},
        {"name": "d", "script": "echo d", "depends_on": ["b", "c"]},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    events = await finished(client, run_id)
    assert events[-1]["payload"]["status"] == "succeeded"
    assert outcome(events) == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "succeeded"}
    both_started = max(position(events, "started", "b"), position(events, "started", "c"))
    first_ended = min(position(events, "completed", "b"), position(events, "completed", "c"))
    assert position(events, "completed", "a") < both_started < first_ended  # b and c ran at the same time
    last_ended = max(position(events, "completed", "b"), position(events, "completed", "c"))
    assert last_ended < position(events, "started", "d")
    assert console(events, "b") == ["a", "b"]  # steps share the run's work directory
    summary = (await client.get(f"/runs/{run_id}/summary")).json()
    assert [(s["name"], s["depends_on"], s["status"]) for s in summary["steps"]] == [
        ("a", [], "succeeded"),
        ("b", ["a"], "succeeded"),
        ("c", ["a"], "succeeded"),
        ("d", ["b", "c"], "succeeded"),
    ]
    resource = (await client.get(f"/runs/{run_id}")).json()
    assert all(s["status"] == "succeeded" and s["exit_code"] == 0 for s in resource["steps"])
    b, c = (next(s for s in resource["steps"] if s["name"] == name) for name in "bc")
    assert b["started_at"] < c["completed_at"] and c["started_at"] < b["completed_at"]


async def test_a_failing_branch_skips_its_dependents_while_an_independent_branch_completes(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "build", "script": "echo broken; exit 3"},
        {"name": "test", "script": "echo never", "depends_on": ["build"]},
        {"name": "deploy", "script": "echo never", "depends_on": ["test"]},
        {"name": "lint", "script": "sleep 0.5; echo linted"},
        {"name": "docs", "script": "echo docs", "depends_on": ["lint"]},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    events = await finished(client, run_id)
    assert outcome(events) == {
        "build": "failed",
        "test": "skipped",
        "deploy": "skipped",
        "lint": "succeeded",
        "docs": "succeeded",
    }
    assert reason(events, "test") == "dependency 'build' failed"
    assert reason(events, "deploy") == "dependency 'test' was skipped"
    assert console(events, "lint") == ["linted"] and console(events, "docs") == ["docs"]
    completed = events[-1]["payload"]
    assert completed["status"] == "failed" and completed["exit_code"] == 3
    assert completed["failure"]["code"] == "exit_nonzero" and completed["failure"]["step"] == "build"
    resource = (await client.get(f"/runs/{run_id}")).json()
    assert resource["status"] == "failed"
    assert {s["name"]: s["status"] for s in resource["steps"]} == outcome(events)


async def test_without_depends_on_steps_keep_running_in_order_and_stop_at_the_first_failure(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "one", "script": "echo one"},
        {"name": "two", "script": "exit 4"},
        {"name": "three", "script": "echo never"},
        {"name": "cleanup", "script": "echo cleaning", "when": "always"},
    ]
    events = await finished(client, (await run(client, await configuration(client, ws, steps)))["id"])
    lifecycle = [(e["type"], e["payload"]["step"]) for e in events if e["type"].startswith("run.step.")]
    assert lifecycle == [
        ("run.step.started", "one"),
        ("run.step.completed", "one"),
        ("run.step.started", "two"),
        ("run.step.completed", "two"),
        ("run.step.skipped", "three"),
        ("run.step.started", "cleanup"),
        ("run.step.completed", "cleanup"),
    ]
    assert reason(events, "three") == "an earlier step ('two') failed"
    assert events[-1]["payload"]["status"] == "failed" and events[-1]["payload"]["exit_code"] == 4


# Cleanup and on_failure -------------------------------------------------------------------------------


async def test_an_always_step_cleans_up_after_a_failure(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "setup", "script": "touch resource"},
        {"name": "work", "script": "exit 2", "depends_on": ["setup"]},
        {"name": "cleanup", "script": "rm resource; echo cleaned", "depends_on": ["work"], "when": "always"},
    ]
    events = await finished(client, (await run(client, await configuration(client, ws, steps)))["id"])
    assert outcome(events) == {"setup": "succeeded", "work": "failed", "cleanup": "succeeded"}
    assert position(events, "completed", "work") < position(events, "started", "cleanup")
    assert console(events, "cleanup") == ["cleaned"]
    completed = events[-1]["payload"]
    assert (
        completed["status"] == "failed" and completed["failure"]["step"] == "work"
    )  # cleanup does not hide it


async def test_an_always_step_still_runs_after_a_cancel(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "long", "script": "echo started; sleep 3201"},
        {"name": "next", "script": "echo never", "depends_on": ["long"]},
        {"name": "notify", "script": "echo never", "depends_on": ["long"], "when": "on_failure"},
        {"name": "cleanup", "script": "sleep 0.3; echo cleaned", "depends_on": ["long"], "when": "always"},
    ]
    run_id = (await run(client, await configuration(client, ws, steps)))["id"]
    await events_until(
        client, run_id, lambda e: e["type"] == "console.line" and e["payload"]["step"] == "long"
    )
    assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
    events = await finished(client, run_id)
    assert outcome(events) == {
        "long": "cancelled",
        "next": "skipped",
        "notify": "skipped",
        "cleanup": "succeeded",
    }
    assert reason(events, "next") == "the run was cancelled before this step started"
    assert position(events, "completed", "long") < position(events, "started", "cleanup")
    assert console(events, "cleanup") == ["cleaned"]
    assert events[-1]["type"] == "run.completed" and events[-1]["payload"]["status"] == "cancelled"
    assert [e["type"] for e in events].count("run.cancel_requested") == 1
    await assert_none_survive("sleep 3201")


async def test_an_on_failure_step_runs_only_when_a_dependency_failed(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)

    def steps(work: str) -> list[dict[str, Any]]:
        return [
            {"name": "work", "script": work},
            {"name": "notify", "script": "echo notified", "depends_on": ["work"], "when": "on_failure"},
            {"name": "publish", "script": "echo published", "depends_on": ["work"]},
        ]

    failing = await finished(
        client, (await run(client, await configuration(client, ws, steps("exit 1"))))["id"]
    )
    assert outcome(failing) == {"work": "failed", "notify": "succeeded", "publish": "skipped"}
    assert console(failing, "notify") == ["notified"]
    assert failing[-1]["payload"]["status"] == "failed"  # the run failed, however well it was reported

    passing = await finished(
        client, (await run(client, await configuration(client, ws, steps("true"))))["id"]
    )
    assert outcome(passing) == {"work": "succeeded", "notify": "skipped", "publish": "succeeded"}
    assert reason(passing, "notify") == "none of its dependencies failed"
    assert passing[-1]["payload"]["status"] == "succeeded"


async def test_the_run_timeout_ends_running_steps_and_still_runs_the_cleanup(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    steps: list[dict[str, Any]] = [
        {"name": "slow", "script": "echo started; sleep 3202"},
        {"name": "quick", "script": "echo quick"},
        {"name": "after", "script": "echo never", "depends_on": ["slow"]},
        {"name": "cleanup", "script": "echo cleaned", "depends_on": ["slow"], "when": "always"},
    ]
    cfg = await configuration(client, ws, steps, timeout_s=2)
    events = await finished(client, (await run(client, cfg))["id"])
    assert outcome(events) == {
        "slow": "failed",
        "quick": "succeeded",
        "after": "skipped",
        "cleanup": "succeeded",
    }
    slow = events[position(events, "completed", "slow")]["payload"]
    assert slow["failure"]["code"] == "timeout" and "the run's timeout of 2 s" in slow["failure"]["message"]
    assert reason(events, "after") == "the run's timeout of 2 s passed before this step started"
    assert position(events, "completed", "slow") < position(events, "started", "cleanup")
    assert console(events, "cleanup") == ["cleaned"]
    completed = events[-1]["payload"]
    assert completed["status"] == "failed" and completed["failure"]["code"] == "timeout"
    assert completed["failure"]["step"] == "slow"
    assert completed["duration_ms"] < 15_000  # the timeout and the kill grace, not the sleep
    await assert_none_survive("sleep 3202")


# A narrow system: two steps at once, a cleanup grace of 1 s ------------------------------------------


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdeSystem]:
    extra = {"ADE_MAX_PARALLEL_STEPS": "2", "ADE_CLEANUP_GRACE_S": "1"}
    ade = AdeSystem(tmp_path_factory.mktemp("narrow"), extra_env=extra).start()
    try:
        yield ade
    finally:
        ade.stop()


async def test_max_parallel_steps_bounds_how_many_steps_run_at_once(narrow: AdeSystem) -> None:
    async with narrow.api_client() as api:
        ws = await workspace(api)
        fan = [{"name": f"leaf{i}", "script": "sleep 0.5", "depends_on": ["root"]} for i in range(4)]
        steps: list[dict[str, Any]] = [
            {"name": "root", "script": "true"},
            *fan,
            {"name": "join", "script": "true", "depends_on": ["leaf3"]},
        ]
        events = await finished(api, (await run(api, await configuration(api, ws, steps)))["id"])
        assert events[-1]["payload"]["status"] == "succeeded"
        assert most_running(events) == 2  # never more, and the fan-out did run two at once
        started = [e["payload"]["step"] for e in events if e["type"] == "run.step.started"]
        assert started == ["root", "leaf0", "leaf1", "leaf2", "leaf3", "join"]  # in plan order as slots free


async def test_after_a_cancel_a_cleanup_step_gets_the_grace_and_no_more(narrow: AdeSystem) -> None:
    async with narrow.api_client() as api:
        ws = await workspace(api)
        steps: list[dict[str, Any]] = [
            {"name": "long", "script": "echo started; sleep 3203"},
            {"name": "stuck_cleanup", "script": "sleep 3204", "depends_on": ["long"], "when": "always"},
        ]
        run_id = (await run(api, await configuration(api, ws, steps)))["id"]
        await events_until(api, run_id, lambda e: e["type"] == "console.line")
        assert (await api.post(f"/runs/{run_id}/cancel")).status_code == 202
        events = await finished(api, run_id)
        assert outcome(events) == {"long": "cancelled", "stuck_cleanup": "cancelled"}
        assert events[-1]["payload"]["status"] == "cancelled"
        await assert_none_survive("sleep 3204")


# Validation -------------------------------------------------------------------------------------------


async def test_a_bad_graph_or_path_is_400_naming_the_problem_and_saves_nothing(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    good = [{"name": "a", "script": "true"}]
    cfg = await configuration(client, ws, good)
    before = (await client.get(f"/workspaces/{ws}/configurations")).json()
    files = sorted((data_dir / "configurations").iterdir())

    def step(name: str, **fields: Any) -> dict[str, Any]:
        return {"name": name, "script": "true", **fields}

    bad: dict[str, tuple[list[dict[str, Any]], str, str]] = {
        "cycle": (
            [step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"])],
            "cycle",
            "steps",
        ),
        "unknown": ([step("a", depends_on=["nope"])], "unknown_dependency", "steps[0].depends_on[0]"),
        "self": ([step("a"), step("b", depends_on=["a", "b"])], "self_dependency", "steps[1].depends_on[1]"),
        "duplicate": ([step("a"), step("a")], "duplicate_name", "steps"),
        "absolute": ([step("a", cache_dirs=["/etc"])], "path_escape", "steps[0].cache_dirs[0]"),
        "dotdot": ([step("a", output_paths=["out/../../x"])], "path_escape", "steps[0].output_paths[0]"),
        "backslash": ([step("a", output_paths=["a\\b"])], "path_escape", "steps[0].output_paths[0]"),
        "nul": ([step("a", cache_dirs=["a\x00b"])], "path_escape", "steps[0].cache_dirs[0]"),
    }
    for name, (steps, problem, key) in bad.items():
        body = {"name": name, "steps": steps}
        for response in (
            await client.post(f"/workspaces/{ws}/configurations", json=body),
            await client.put(f"/configurations/{cfg}", json=body),
        ):
            assert response.status_code == 400, (name, response.text)
            error = response.json()
            assert set(error) == {"error", "code", "details"} and error["code"] == "invalid_request"
            detail = error["details"][0]
            assert (detail["problem"], detail["key"]) == (problem, key), (name, error)
            assert detail["message"] in error["error"] or len(error["details"]) > 1
    cycle = await client.post(
        f"/workspaces/{ws}/configurations", json={"name": "c", "steps": bad["cycle"][0]}
    )
    assert cycle.json()["details"][0]["cycle"] == ["a", "c", "b", "a"]
    assert "a → c → b → a" in cycle.json()["error"]
    unknown = await client.post(
        f"/workspaces/{ws}/configurations", json={"name": "u", "steps": bad["unknown"][0]}
    )
    assert "'nope'" in unknown.json()["error"]
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == before
    assert sorted((data_dir / "configurations").iterdir()) == files
    for field, value in (("when", "sometimes"), ("output_when", "on_failure"), ("cache_key", "k" * 513)):
        response = await client.post(
            f"/workspaces/{ws}/configurations", json={"name": "f", "steps": [step("a", **{field: value})]}
        )
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", response.text
    saved = await client.post(
        f"/workspaces/{ws}/configurations",
        json={
            "name": "fields",
            "steps": [
                step("a", cache_dirs=["node_modules"], cache_key="npm-{{ hashFiles('package-lock.json') }}"),
                step(
                    "b", depends_on=["a"], when="always", output_paths=["dist/**/*.whl"], output_when="always"
                ),
            ],
        },
    )
    assert saved.status_code == 201, saved.text
    b = saved.json()["steps"][1]
    assert (b["depends_on"], b["when"], b["output_paths"], b["output_when"]) == (
        ["a"],
        "always",
        ["dist/**/*.whl"],
        "always",
    )
