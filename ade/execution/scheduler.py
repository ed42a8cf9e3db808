"""The step scheduler: a run's steps as a graph, each started as soon as it may, at most
`ADE_MAX_PARALLEL_STEPS` at once (README "Workflows").

How one step runs (its executor, its output, what its outcome means) is the caller's
(`ade.execution.executor`); here is which step starts when, which is skipped and why, and what cancel and
the run's timeout do:

- Dependencies come from `ade.core.workflow`: without any `depends_on` each step depends on every earlier
  one, so steps run in order and the first failure skips the rest (except `always`/`on_failure` steps).
- Which step may start and which is skipped is `ade.core.step_rules` (shared with step mode):
  `when: on_success` (default) starts once its dependencies succeeded (in order: once no earlier step failed)
  and is skipped when one did not; `always` starts once they all ended, whatever their outcome;
  `on_failure` starts once they ended if one of them (or a step before it in the graph) failed, and is
  skipped otherwise. Independent branches go on after a failure; the run fails if any step failed.
- Cancel and the run's timeout end every running step (the executor stops it: `cancelled`, or `failed` /
  `timeout`) and skip every step not started, except `always` steps: they still start once their
  dependencies ended, within `ADE_CLEANUP_GRACE_S` (after a cancel, a cleanup step still running then is
  cancelled; past the run's timeout, the grace is its deadline), like GitHub's `if: always()`.
- A failed-only re-run's kept steps (`ade.execution.outputs.kept_steps`) are recorded `succeeded` before
  anything starts, their outputs copied, and never run.

Every status change is made by this loop, one at a time, through a `Port` (`RecordedSteps`: the
transitions, under a lock per run, which also covers a step's task announcing the cancel): the run's record
is rewritten whole on each change, and two writes must not interleave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ade.core import step_rules, workflow
from ade.core.models import Failure, Run, Step, StepOutput
from ade.events.payloads import StepEndStatus
from ade.execution import outputs
from ade.lifecycle import transitions
from ade.lifecycle.transitions import Recorder

Stop = Literal["cancelled", "timeout"]


@dataclass(frozen=True, slots=True)
class StepSlot:
    """What the scheduler gives one step to run with."""

    index: int  # in the plan
    timeout_s: float
    limit: str  # what bounds `timeout_s`, for a timeout's message: "its timeout of 5 s", "the run's timeout…"
    cancel: asyncio.Event  # once set, the step is stopped and ends `cancelled`
    on_cancel: Callable[[], Awaitable[None]]  # announces the run's cancel (once): call it when `cancel` is


@dataclass(frozen=True, slots=True)
class StepResult:
    status: StepEndStatus
    exit_code: int | None = None
    failure: Failure | None = None
    outputs: list[StepOutput] = field(default_factory=list)  # what it added to the run's outputs


ExecuteStep = Callable[[StepSlot], Coroutine[Any, Any, StepResult]]


@dataclass(frozen=True, slots=True)
class Policy:
    run_timeout_s: float
    max_parallel: int = 4  # ADE_MAX_PARALLEL_STEPS
    cleanup_grace_s: float = 30.0  # ADE_CLEANUP_GRACE_S


class Port(Protocol):
    """Where the scheduler records what happens to steps."""

    async def keep_succeeded(self) -> list[int]: ...

    async def start(self, index: int) -> None: ...

    async def finish(self, index: int, result: StepResult) -> None: ...

    async def skip(self, index: int, reason: str) -> None: ...

    async def announce_cancel(self) -> None: ...


class RecordedSteps:
    """The transitions of a run's steps, one at a time (`ade.lifecycle.transitions` rewrites the whole run
    record on each)."""

    def __init__(self, rec: Recorder, run: Run, announce: Callable[[], Awaitable[None]]) -> None:
        self._rec, self._run, self._announce = rec, run, announce
        self._lock = asyncio.Lock()

    async def keep_succeeded(self) -> list[int]:
        """A failed-only re-run's kept steps (`ade.execution.outputs.keep_succeeded`), recorded `succeeded`
        with `reused_from` and their copied outputs, never started. Their indexes."""
        kept = await outputs.keep_succeeded(self._rec, self._run)
        async with self._lock:
            for index, origin, copied in kept:
                await transitions.finish_step(
                    self._rec, self._run, index, "succeeded", exit_code=0, outputs=copied, reused_from=origin
                )
        return [index for index, _, _ in kept]

    async def start(self, index: int) -> None:
        async with self._lock:
            await transitions.start_step(self._rec, self._run, index)

    async def finish(self, index: int, result: StepResult) -> None:
        async with self._lock:
            await transitions.finish_step(
                self._rec,
                self._run,
                index,
                result.status,
                exit_code=result.exit_code,
                failure=result.failure,
                outputs=result.outputs,
            )

    async def skip(self, index: int, reason: str) -> None:
        async with self._lock:
            await transitions.skip_step(self._rec, self._run, index, reason)

    async def announce_cancel(self) -> None:
        async with self._lock:
            await self._announce()


async def execute(
    steps: list[Step], port: Port, execute_step: ExecuteStep, cancel: asyncio.Event, policy: Policy
) -> tuple[int | None, Failure | None]:
    """Run `steps` to the end. Returns the run's (exit code, failure): the first step failure's, a `timeout`
    failure when the run's timeout stopped it without one, (None, None) when it was cancelled, else (0, None).
    An exception from a step's execution stops the others (their processes killed) and propagates."""
    return await _Scheduler(steps, port, execute_step, cancel, policy).run()


class _Scheduler:
    def __init__(
        self, steps: list[Step], port: Port, execute_step: ExecuteStep, cancel: asyncio.Event, policy: Policy
    ) -> None:
        self.steps, self.port, self.execute_step, self.cancel = steps, port, execute_step, cancel
        self.policy = policy
        self.max_parallel = max(1, policy.max_parallel)
        self.deps = workflow.dependencies(steps)
        self.status: list[str] = ["pending"] * len(steps)
        self.failure_above = [False] * len(steps)  # it, or a step it depends on (transitively), failed
        self.tasks: dict[asyncio.Task[StepResult], int] = {}
        self.stop: Stop | None = None
        self.stop_at = 0.0
        self.cleanup_cancel = asyncio.Event()  # ends `always` steps at the grace's end after a cancel
        self.first_failure: tuple[int | None, Failure] | None = None
        self.deadline = time.monotonic() + policy.run_timeout_s

    async def run(self) -> tuple[int | None, Failure | None]:
        cancel_wait = asyncio.ensure_future(self.cancel.wait())
        try:
            for index in await self.port.keep_succeeded():  # a failed-only re-run's: they never start
                self.status[index] = "succeeded"
                self._ended(index)
            while True:
                now = time.monotonic()
                await self._check_stop(now)
                await self._settle(now)
                if not self.tasks:
                    break
                await self._wait(cancel_wait)
        finally:
            cancel_wait.cancel()
            await self._abandon()
        return self._outcome()

    # Deciding ---------------------------------------------------------------------------------------

    async def _check_stop(self, now: float) -> None:
        grace = self.policy.cleanup_grace_s
        if self.stop is None:
            if self.cancel.is_set():
                await self.port.announce_cancel()
                self.stop, self.stop_at = "cancelled", now
            elif now >= self.deadline:
                self.stop, self.stop_at = "timeout", self.deadline
        if self.stop == "cancelled" and now >= self.stop_at + grace:
            self.cleanup_cancel.set()

    async def _settle(self, now: float) -> None:
        """Skip every pending step whose fate is decided and start those that may start (in plan order, up
        to the limit), until nothing changes."""
        changed = True
        while changed:
            changed = False
            for index, status in enumerate(self.status):
                if status != "pending":
                    continue
                decision = self._decide(index, now)
                if isinstance(decision, str):
                    await self._skip(index, decision)
                    changed = True
                elif decision and len(self.tasks) < self.max_parallel:
                    await self._start(index, now)

    def _decide(self, index: int, now: float) -> str | bool:
        """A pending step: True (it may start), False (it waits), or why it is skipped: the rule of
        `ade.core.step_rules`, with cancel, the run's timeout and the cleanup grace on top."""
        step = self.steps[index]
        if self.stop is not None and step.when != "always":
            return self._stop_reason()
        decision = step_rules.decide(self.steps, self.deps, self.status, self.failure_above, index)
        past_grace = self.stop is not None and now >= self.stop_at + self.policy.cleanup_grace_s
        if decision is True and step.when == "always" and past_grace:
            grace = f"{self.policy.cleanup_grace_s:g} s (ADE_CLEANUP_GRACE_S)"
            return f"the cleanup grace of {grace} passed before this step could start"
        return decision

    def _stop_reason(self) -> str:
        if self.stop == "cancelled":
            return "the run was cancelled before this step started"
        return f"the run's timeout of {self.policy.run_timeout_s:g} s passed before this step started"

    def _slot(self, index: int, now: float) -> StepSlot:
        """The step's deadline: its own timeout, within the run's (an `always` step's: plus the grace)."""
        step, run_timeout = self.steps[index], f"the run's timeout of {self.policy.run_timeout_s:g} s"
        if step.when == "always":
            end, cancel = self.deadline + self.policy.cleanup_grace_s, self.cleanup_cancel
            bound = f"{run_timeout} and the cleanup grace of {self.policy.cleanup_grace_s:g} s"
        else:
            end, cancel, bound = self.deadline, self.cancel, run_timeout
        remaining = max(end - now, 0.0)
        if step.timeout_s is not None and step.timeout_s <= remaining:
            remaining, bound = step.timeout_s, f"its timeout of {step.timeout_s:g} s"
        return StepSlot(index, remaining, bound, cancel, self.port.announce_cancel)

    # Acting -----------------------------------------------------------------------------------------

    async def _start(self, index: int, now: float) -> None:
        slot = self._slot(index, now)
        self.status[index] = "running"
        await self.port.start(index)
        task = asyncio.create_task(self.execute_step(slot), name=f"step {self.steps[index].name}")
        self.tasks[task] = index

    async def _skip(self, index: int, reason: str) -> None:
        self.status[index] = "skipped"
        self._ended(index)
        await self.port.skip(index, reason)

    async def _finish(self, index: int, result: StepResult) -> None:
        self.status[index] = result.status
        self._ended(index)
        if result.status == "failed" and self.first_failure is None:
            name = self.steps[index].name
            failure = result.failure or Failure(
                stage="step", code="internal_error", message=f"step {name!r} failed", step=name
            )
            self.first_failure = (result.exit_code, failure)
        await self.port.finish(index, result)

    def _ended(self, index: int) -> None:
        self.failure_above[index] = self.status[index] == "failed" or any(
            self.failure_above[dep] for dep in self.deps[index]
        )

    async def _wait(self, cancel_wait: asyncio.Future[Literal[True]]) -> None:
        """Until a step ends, the run is cancelled, or its deadline (or the cleanup grace's end) passes."""
        now = time.monotonic()
        waits: set[asyncio.Future[Any]] = set(self.tasks)
        timeout: float | None = None
        if self.stop is None:
            waits.add(cancel_wait)
            timeout = self.deadline - now
        elif self.stop == "cancelled" and not self.cleanup_cancel.is_set():
            timeout = self.stop_at + self.policy.cleanup_grace_s - now
        done, _ = await asyncio.wait(
            waits, timeout=None if timeout is None else max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
        ended = sorted(((index, task) for task, index in self.tasks.items() if task in done), key=_first)
        for index, task in ended:
            del self.tasks[task]
            await self._finish(index, task.result())  # an exception: `run` abandons the others

    async def _abandon(self) -> None:
        """Stop the steps still running (an exception, or the worker shutting down): their processes are
        killed; the run's end (`transitions.finish_run`) then ends their records."""
        if not self.tasks:
            return
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def _outcome(self) -> tuple[int | None, Failure | None]:
        if self.first_failure is not None:
            return self.first_failure
        if self.stop == "timeout":
            message = f"the run exceeded its timeout of {self.policy.run_timeout_s:g} s"
            return None, Failure(stage="run", code="timeout", message=message)
        if self.stop == "cancelled":
            return None, None
        return 0, None


def _first(pair: tuple[int, asyncio.Task[StepResult]]) -> int:
    return pair[0]
