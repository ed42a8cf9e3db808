"""Step mode: the build server's runner API (README "Step mode"), where a runner that is nothing but bash and
curl executes a run's steps one at a time. Plain functions; the HTTP side is `ade.api.compat.runner`.

A step is named `<run_id>.<index>` (`ade.core.step_ids`). Only a run offered to runners (its configuration
has `runs_on`) can be executed this way. The first step fetched takes the run out of the offers (with a
workspace slot, as a native runner's claim does), so no `ade runner` can claim it any more; a run a native
runner took is refused here (409 `run_taken`). Such a run is marked `runner_id = "step-mode"`
(`STEP_MODE_RUNNER`) and is kept alive (`keys.runner_run_alive`) for the run's timeout on every call: when
nothing is heard from its runner for that long, the reaper fails it `runner_lost`.

- `script_of` starts a step whose dependencies ended as its `when` needs (`ade.core.step_rules`, the rule
  the worker's scheduler follows) and answers its bash script; fetching a running step again answers the
  same script.
- `complete_step` records what the runner reports (its logs as `console.line` events, masked like every
  event; its output paths), ends the step, skips what can no longer run, and ends the run once every step
  has ended. Completing an ended step again with the same status changes nothing (a retry).

A cancel requested while the run executes in step mode is applied on the runner's next call: the run ends
`cancelled` (a running step is recorded `cancelled`; its runner's `complete` then answers 409).
Everything is done under the run's stream lease (`run_writer`), through `ade.lifecycle.transitions`.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ade.core import keys, paths, workflow
from ade.core.errors import Conflict, NotFound
from ade.core.models import TERMINAL_RUN_STATUSES, Failure, Run, StepOutput, plain_environment
from ade.core.settings import Settings
from ade.core.step_ids import step_id
from ade.core.step_rules import settle, waiting_on
from ade.events.payloads import ConsoleLine, StepEndStatus
from ade.events.writer import EventSpec, StreamWriter
from ade.lifecycle import queue, transitions
from ade.lifecycle.remote import output_parts, secrets_of
from ade.lifecycle.runs import run_writer
from ade.lifecycle.transitions import Recorder, steps_of
from ade.records.scripts import scripts_for
from ade.records.store import Store

STEP_MODE_RUNNER = "step-mode"  # `Run.runner_id` of a run executed in step mode
STEP_MODE_WORKER = "step runner"  # `Run.worker` (and `run.started`'s worker) of such a run
EVENTS_FD = 9  # ADE_EVENTS_FD in step mode: /dev/null (there is no channel back for a step's events)
CompletionStatus = Literal["success", "failed"]
_ENDED_AS: dict[str, StepEndStatus] = {"success": "succeeded", "failed": "failed"}


@dataclass(frozen=True, slots=True)
class Completion:
    """What `complete` answers: the step's status now, and whether the run has ended."""

    step_status: str
    run_ended: bool


def alive_ttl_s(settings: Settings, run: Run) -> int:
    """How long a step-mode run lives without a word from its runner: the run's timeout."""
    return max(1, round(run.plan.timeout_s or settings.default_run_timeout_s))


async def script_of(settings: Settings, store: Store, run: Run, index: int) -> str:
    """The bash script of step `index` of `run`, started now if it may start (`Conflict` if it may not)."""
    async with run_writer(settings, store.redis, run, redact=secrets_of(run)) as writer:
        run = await store.get_run(run.id)
        rec = Recorder(store, writer, "runner")
        if not run.plan.runs_on:
            raise Conflict(
                f"run {run.id!r} is executed by the workers (its configuration has no runs_on)",
                code="not_a_runner_run",
            )
        _refuse_another_runners(run)
        if run.status == "queued":
            await _take(settings, rec, run)
        if await _cancel_applied(rec, run):
            raise Conflict(f"run {run.id!r} was cancelled", code="run_cancelled")
        state = steps_of(run)[index]
        if run.status != "running" and state.status in ("pending", "running"):
            raise Conflict(f"run {run.id!r} is {run.status}: it cannot start steps", code="run_not_running")
        if state.status == "pending":
            await _start(rec, run, index)
        elif state.status != "running":
            raise _step_finished(run, index)
    await store.redis.set(keys.runner_run_alive(run.id), STEP_MODE_RUNNER, ex=alive_ttl_s(settings, run))
    return render_script(run, index)


async def complete_step(
    settings: Settings,
    store: Store,
    run: Run,
    index: int,
    status: CompletionStatus,
    logs: str,
    output_paths: Sequence[str],
) -> Completion:
    """Record the end of a running step as its runner reports it (see the module's doc)."""
    parts = [output_parts(path) for path in output_paths]  # a bad path refuses the whole report first
    ended_as = _ENDED_AS[status]
    async with run_writer(settings, store.redis, run, redact=secrets_of(run)) as writer:
        run = await store.get_run(run.id)
        rec = Recorder(store, writer, "runner")
        _refuse_another_runners(run)
        state = steps_of(run)[index]
        if state.status == ended_as and run.runner_id == STEP_MODE_RUNNER:
            return Completion(state.status, run.status in TERMINAL_RUN_STATUSES)  # a retry: applied already
        if run.status != "running" or run.runner_id != STEP_MODE_RUNNER or state.status != "running":
            if state.status == "pending":
                raise Conflict(
                    f"step {step_id(run.id, index)!r} ({state.name}) has not started: fetch its script first",
                    code="step_not_started",
                )
            raise _step_finished(run, index)
        await _console(writer, settings, state.name, logs)
        outputs = [_output(settings, run, "/".join(part)) for part in parts]
        failure = None
        if ended_as == "failed":
            message = f"step {state.name!r} failed (its runner reported status failed)"
            failure = Failure(stage="step", code="exit_nonzero", message=message, step=state.name)
        exit_code = 0 if ended_as == "succeeded" else None  # the report has none: known only for success
        await transitions.finish_step(
            rec, run, index, ended_as, exit_code=exit_code, failure=failure, outputs=outputs
        )
        if not await _cancel_applied(rec, run):
            await _settle(rec, run)
        run_ended = run.status in TERMINAL_RUN_STATUSES
    if run_ended:
        await store.redis.delete(keys.runner_run_alive(run.id))
    else:
        await store.redis.set(keys.runner_run_alive(run.id), STEP_MODE_RUNNER, ex=alive_ttl_s(settings, run))
    return Completion(steps_of(run)[index].status, run_ended)


def render_script(run: Run, index: int) -> str:
    """The step's bash script: its environment (secrets included: the caller may execute this workspace's
    runs), where it works, then the step's own script run as a worker runs it (`bash -c`). Every value is
    quoted (`shlex.quote`): nothing in a value is ever executed."""
    step = run.plan.steps[index]
    q = shlex.quote
    work_default = f"$PWD/ade-work/{run.id}"  # run ids are [a-z_0-9A-Z]: nothing to quote
    lines = [
        "#!/usr/bin/env bash",
        f'# ADE step {step_id(run.id, index)}: {step.name!r} of run {run.id} (README "Step mode")',
        "set -euo pipefail",
    ]
    environment = {**plain_environment(run.plan.environment), **plain_environment(step.environment)}
    lines += [f"export {name}={q(value)}" for name, value in environment.items()]
    lines += [
        f"export ADE_RUN_ID={q(run.id)}",
        f"export ADE_WORKSPACE_ID={q(run.workspace_id)}",
        f"export ADE_STEP={q(step.name)}",
        f'export ADE_WORK_DIR="${{ADE_WORK_DIR:-{work_default}}}"',
        'export ADE_INPUT_DIR="${ADE_INPUT_DIR:-$ADE_WORK_DIR/.ade/inputs}"',
        'export ADE_OUTPUT_DIR="${ADE_OUTPUT_DIR:-$ADE_WORK_DIR/.ade/outputs}"',
        'mkdir -p -- "$ADE_WORK_DIR" "$ADE_INPUT_DIR" "$ADE_OUTPUT_DIR"',
        'cd -- "$ADE_WORK_DIR"',
        f"exec {EVENTS_FD}>/dev/null",
        f"export ADE_EVENTS_FD={EVENTS_FD}",
        f"exec bash -c {q(step.script)}",
    ]
    return "\n".join(lines) + "\n"


# Taking a run and starting its steps --------------------------------------------------------------------


def _refuse_another_runners(run: Run) -> None:
    if run.runner_id is not None and run.runner_id != STEP_MODE_RUNNER:
        raise Conflict(
            f"run {run.id!r} is executed by runner {run.runner_id}, not in step mode", code="run_taken"
        )


async def _take(settings: Settings, rec: Recorder, run: Run) -> None:
    """Take a queued run out of the offers (with a workspace slot) and start it in step mode."""
    redis = rec.store.redis
    try:
        own_cap = (await rec.store.get_workspace(run.workspace_id)).max_running_runs
    except NotFound:
        own_cap = None
    taken: int = await scripts_for(redis).take_offer(
        keys=[
            keys.RUNNER_OFFERS,
            keys.RUNNER_OFFER_TERMS,
            keys.workspace_running(run.workspace_id),
            keys.RUNNING_RUNS,
        ],
        args=[run.id, run.workspace_id, queue.cap_of(own_cap, settings.max_running_per_workspace)],
    )
    if taken == 0:
        raise Conflict(
            f"workspace {run.workspace_id!r} is at its cap of running runs: try again later",
            code="workspace_at_cap",
        )
    if taken != 1:
        raise Conflict(f"run {run.id!r} is not offered to runners now (a runner took it)", code="run_taken")
    try:
        run.runner_id = STEP_MODE_RUNNER
        await transitions.start_run(rec, run, STEP_MODE_WORKER)
    except BaseException:
        run.runner_id = None
        await queue.give_back(redis, run.id, run.workspace_id)
        await queue.offer(redis, run)
        raise


async def _start(rec: Recorder, run: Run, index: int) -> None:
    status = [state.status for state in steps_of(run)]
    ready, skips = settle(run.plan.steps, status)
    if index in ready:
        await transitions.start_step(rec, run, index)
        return
    if any(skipped == index for skipped, _ in skips):  # decided by an earlier answer; recorded now
        await _settle(rec, run)
        raise _step_finished(run, index)
    waits = waiting_on(workflow.dependencies(run.plan.steps), status, index)
    names = [run.plan.steps[dep].name for dep in waits]
    raise Conflict(
        f"step {step_id(run.id, index)!r} ({run.plan.steps[index].name}) waits for "
        + ", ".join(repr(name) for name in names),
        code="step_not_ready",
        details=[{"step_id": step_id(run.id, dep), "step": run.plan.steps[dep].name} for dep in waits],
    )


def _step_finished(run: Run, index: int) -> Conflict:
    state = steps_of(run)[index]
    return Conflict(
        f"step {step_id(run.id, index)!r} ({state.name}) already ended ({state.status}); the run is "
        f"{run.status}",
        code="step_finished",
        details=[{"step_status": state.status, "run_status": run.status}],
    )


# Ending steps and the run -------------------------------------------------------------------------------


async def _settle(rec: Recorder, run: Run) -> None:
    """Skip every step that can no longer run, then end the run if every step has ended: `succeeded`, or
    `failed` with the failure of the step that failed first."""
    _, skips = settle(run.plan.steps, [state.status for state in steps_of(run)])
    for index, reason in skips:
        await transitions.skip_step(rec, run, index, reason)
    states = steps_of(run)
    if any(state.status in ("pending", "running") for state in states) or run.status in TERMINAL_RUN_STATUSES:
        return
    failed = [state for state in states if state.status == "failed"]
    if not failed:
        await transitions.finish_run(rec, run, "succeeded", exit_code=0)
        return
    first = min(failed, key=lambda state: (state.completed_at is None, state.completed_at))
    await transitions.finish_run(rec, run, "failed", exit_code=first.exit_code, failure=first.failure)


async def _cancel_applied(rec: Recorder, run: Run) -> bool:
    """A cancel requested while the run executes in step mode ends it now (True if it did)."""
    if run.status in TERMINAL_RUN_STATUSES:
        return False
    raw = await rec.store.redis.get(keys.run_cancel(run.id))
    if raw is None:
        return False
    await transitions.request_run_cancel(rec, run, raw.decode())
    await transitions.finish_run(rec, run, "cancelled", cancelled_by=raw.decode())
    return True


async def _console(writer: StreamWriter, settings: Settings, step: str, logs: str) -> None:
    """The runner's logs as the step's console lines (stdout; a line longer than ADE_CONSOLE_LINE_MAX_BYTES
    cut and marked `truncated`)."""
    limit = settings.console_line_max_bytes
    specs: list[EventSpec] = []
    for line in logs.splitlines():
        raw = line.encode()
        cut = len(raw) > limit
        message = raw[:limit].decode(errors="ignore") if cut else line
        payload = ConsoleLine(scope="run", stream="stdout", step=step, message=message, truncated=cut)
        specs.append((payload.TYPE, payload, "runner"))
    if specs:
        await writer.emit_many(specs)


def _output(settings: Settings, run: Run, path: str) -> StepOutput:
    """An output path the runner reports: its size if a file was uploaded there, else recorded with size 0
    (README "Step mode")."""
    target = paths.run_dir(settings.data_dir, run.id).outputs / path
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return StepOutput(path=path, size=0, source="output_paths")
    try:
        found = os.fstat(fd)
    finally:
        os.close(fd)
    size = found.st_size if stat.S_ISREG(found.st_mode) else 0
    return StepOutput(path=path, size=size, source="output_paths")
