"""The step scheduler's decisions (`ade.execution.scheduler`), with steps that only wait: which start when,
which are skipped and why, and what cancel and the run's timeout do. tests/integration/test_workflows.py
proves the same with real runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from ade.core.models import Failure, Step
from ade.execution.scheduler import Policy, StepResult, StepSlot, execute

pytestmark = pytest.mark.anyio


@dataclass
class Recorded:
    """A Port that keeps what happened, and a fake executor: each step waits `seconds` then exits `exit`."""

    steps: list[Step]
    seconds: dict[str, float] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    log: list[tuple[str, str, Any]] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    most_running: int = 0
    announced: int = 0

    async def keep_succeeded(self) -> list[int]:
        return []

    async def start(self, index: int) -> None:
        self.log.append(("started", self.steps[index].name, None))

    async def finish(self, index: int, result: StepResult) -> None:
        self.log.append(("completed", self.steps[index].name, result.status))

    async def skip(self, index: int, reason: str) -> None:
        self.log.append(("skipped", self.steps[index].name, reason))

    async def announce_cancel(self) -> None:
        self.announced += 1

    async def execute_step(self, slot: StepSlot) -> StepResult:
        name = self.steps[slot.index].name
        self.running.add(name)
        self.most_running = max(self.most_running, len(self.running))
        try:
            seconds = self.seconds.get(name, 0.01)
            try:
                async with asyncio.timeout(min(seconds, slot.timeout_s)):
                    await slot.cancel.wait()
                await slot.on_cancel()
                return StepResult(status="cancelled")
            except TimeoutError:
                if seconds > slot.timeout_s:
                    message = f"exceeded {slot.limit}"
                    failure = Failure(stage="step", code="timeout", message=message, step=name)
                    return StepResult(status="failed", failure=failure)
            code = self.exits.get(name, 0)
            if code:
                failure = Failure(stage="step", code="exit_nonzero", message=f"exit {code}", step=name)
                return StepResult(status="failed", exit_code=code, failure=failure)
            return StepResult(status="succeeded", exit_code=0)
        finally:
            self.running.discard(name)

    def of(self, kind: str) -> list[str]:
        return [name for what, name, _ in self.log if what == kind]

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for what, name, detail in self.log:
            found[name] = detail if what == "completed" else what
        return found

    def reason(self, name: str) -> str:
        return next(str(detail) for what, step, detail in self.log if what == "skipped" and step == name)


def plan(*specs: dict[str, Any]) -> list[Step]:
    return [msgspec.convert({"script": "true", **spec}, Step) for spec in specs]


async def scheduled(
    recorded: Recorded, cancel: asyncio.Event | None = None, **policy: Any
) -> tuple[int | None, Failure | None]:
    return await execute(
        recorded.steps,
        recorded,
        recorded.execute_step,
        cancel or asyncio.Event(),
        Policy(**{"run_timeout_s": 60.0, **policy}),
    )


async def test_in_order_the_first_failure_skips_later_steps_but_not_always_or_on_failure_ones() -> None:
    recorded = Recorded(
        plan(
            {"name": "a"},
            {"name": "bad"},
            {"name": "later"},
            {"name": "notify", "when": "on_failure"},
            {"name": "cleanup", "when": "always"},
            {"name": "after"},
        ),
        exits={"bad": 3},
    )
    exit_code, failure = await scheduled(recorded)
    assert (exit_code, failure and failure.step) == (3, "bad")
    assert recorded.of("started") == ["a", "bad", "notify", "cleanup"]
    assert recorded.of("skipped") == ["later", "after"]
    assert recorded.reason("later") == "an earlier step ('bad') failed"
    assert recorded.most_running == 1


async def test_in_order_a_skipped_on_failure_step_does_not_stop_the_next() -> None:
    recorded = Recorded(plan({"name": "a"}, {"name": "notify", "when": "on_failure"}, {"name": "b"}))
    assert await scheduled(recorded) == (0, None)
    assert recorded.of("started") == ["a", "b"]
    assert recorded.reason("notify") == "no earlier step failed"


async def test_a_diamond_runs_its_middle_at_once_and_joins_after_both() -> None:
    recorded = Recorded(
        plan(
            {"name": "a"},
            {"name": "b", "depends_on": ["a"]},
            {"name": "c", "depends_on": ["a"]},
            {"name": "d", "depends_on": ["b", "c"]},
        ),
        seconds={"b": 0.2, "c": 0.1},
    )
    assert await scheduled(recorded) == (0, None)
    order = [(what, name) for what, name, _ in recorded.log]
    assert order == [
        ("started", "a"),
        ("completed", "a"),
        ("started", "b"),
        ("started", "c"),
        ("completed", "c"),
        ("completed", "b"),
        ("started", "d"),
        ("completed", "d"),
    ]


async def test_a_failed_branch_skips_its_dependents_and_independent_ones_go_on() -> None:
    recorded = Recorded(
        plan(
            {"name": "build"},
            {"name": "test", "depends_on": ["build"]},
            {"name": "deploy", "depends_on": ["test"]},
            {"name": "lint"},
            {"name": "report", "depends_on": ["deploy"], "when": "on_failure"},
            {"name": "alert", "depends_on": ["lint"], "when": "on_failure"},
        ),
        exits={"build": 2},
        seconds={"lint": 0.1},
    )
    exit_code, failure = await scheduled(recorded)
    assert (exit_code, failure and failure.step) == (2, "build")
    assert recorded.status() == {
        "build": "failed",
        "lint": "succeeded",
        "test": "skipped",
        "deploy": "skipped",
        "report": "succeeded",  # a failure before its dependency (deploy, skipped because of it)
        "alert": "skipped",
    }
    assert recorded.reason("test") == "dependency 'build' failed"
    assert recorded.reason("deploy") == "dependency 'test' was skipped"
    assert recorded.reason("alert") == "none of its dependencies failed"


async def test_at_most_max_parallel_steps_run_at_once() -> None:
    fan = [{"name": f"f{i}", "depends_on": ["root"]} for i in range(6)]
    recorded = Recorded(plan({"name": "root"}, *fan), seconds={f"f{i}": 0.05 for i in range(6)})
    assert await scheduled(recorded, max_parallel=2) == (0, None)
    assert recorded.most_running == 2 and len(recorded.of("completed")) == 7


async def test_a_cancel_ends_running_steps_skips_the_rest_and_still_runs_cleanup() -> None:
    recorded = Recorded(
        plan(
            {"name": "long"},
            {"name": "next", "depends_on": ["long"]},
            {"name": "notify", "depends_on": ["long"], "when": "on_failure"},
            {"name": "cleanup", "depends_on": ["long"], "when": "always"},
        ),
        seconds={"long": 30},
    )
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    assert await scheduled(recorded, cancel) == (None, None)
    assert recorded.status() == {
        "long": "cancelled",
        "next": "skipped",
        "notify": "skipped",
        "cleanup": "succeeded",
    }
    assert recorded.reason("next") == "the run was cancelled before this step started"
    assert recorded.announced >= 1


async def test_after_a_cancel_a_cleanup_step_gets_the_grace_and_no_more() -> None:
    recorded = Recorded(
        plan({"name": "work"}, {"name": "cleanup", "when": "always"}, {"name": "late", "when": "always"}),
        seconds={"work": 30, "cleanup": 30},
    )
    cancel = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, cancel.set)
    started = asyncio.get_running_loop().time()
    assert await scheduled(recorded, cancel, cleanup_grace_s=0.3) == (None, None)
    assert asyncio.get_running_loop().time() - started < 5
    assert recorded.status() == {"work": "cancelled", "cleanup": "cancelled", "late": "skipped"}
    assert "the cleanup grace of 0.3 s (ADE_CLEANUP_GRACE_S) passed" in recorded.reason("late")


async def test_the_run_timeout_ends_running_steps_and_runs_cleanup_within_the_grace() -> None:
    recorded = Recorded(
        plan(
            {"name": "slow"},
            {"name": "quick"},
            {"name": "after", "depends_on": ["quick"]},
            {"name": "cleanup", "depends_on": ["slow"], "when": "always"},
            {"name": "stuck_cleanup", "depends_on": ["slow"], "when": "always"},
        ),
        seconds={"slow": 30, "quick": 0.01, "after": 30, "stuck_cleanup": 30},
    )
    exit_code, failure = await scheduled(recorded, run_timeout_s=0.3, cleanup_grace_s=0.3)
    assert exit_code is None and failure is not None
    assert failure.code == "timeout" and failure.step in ("slow", "after")  # both end at the deadline
    assert failure.message == "exceeded the run's timeout of 0.3 s"
    assert recorded.status() == {
        "slow": "failed",
        "quick": "succeeded",
        "after": "failed",
        "cleanup": "succeeded",
        "stuck_cleanup": "failed",  # its deadline: the run's timeout plus the grace
    }


async def test_a_timeout_with_no_step_to_blame_fails_the_run_as_timeout() -> None:
    recorded = Recorded(
        plan({"name": "cleanup", "when": "always"}, {"name": "never"}),
        seconds={"cleanup": 0.4},
    )
    exit_code, failure = await scheduled(recorded, run_timeout_s=0.2, cleanup_grace_s=5)
    assert exit_code is None and failure is not None and failure.code == "timeout" and failure.step is None
    assert recorded.status() == {"cleanup": "succeeded", "never": "skipped"}
    assert recorded.reason("never") == "the run's timeout of 0.2 s passed before this step started"


async def test_an_exception_in_one_step_stops_the_others_and_propagates() -> None:
    recorded = Recorded(plan({"name": "boom"}, {"name": "long"}, {"name": "leaf", "depends_on": ["boom"]}))
    stopped = asyncio.Event()

    async def execute_step(slot: StepSlot) -> StepResult:
        if slot.index == 0:
            await asyncio.sleep(0.05)
            raise RuntimeError("boom")
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()
        raise AssertionError("not reached")

    with pytest.raises(RuntimeError, match="boom"):
        await execute(recorded.steps, recorded, execute_step, asyncio.Event(), Policy(run_timeout_s=60))
    assert stopped.is_set() and recorded.of("started") == ["boom", "long"]
