"""Executing a run: its steps in order, every line and engine event through the run's dispatcher, every
status change through `ade.lifecycle.transitions`.

Plain functions; nothing here knows arq or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from functools import partial

import anyio
from redis.exceptions import RedisError

from ade.core import keys, paths
from ade.core.errors import AdeError, LogWriteFailed, NotFound
from ade.core.logs import current_build_id, current_run_id
from ade.core.models import (
    TERMINAL_BUILD_STATUSES,
    TERMINAL_RUN_STATUSES,
    Failure,
    Run,
    Step,
    plain_environment,
    secret_values,
    utcnow,
)
from ade.events.envelope import EVENT_DECODER
from ade.events.follow import follow
from ade.events.payloads import BuildCompleted, RunEndStatus
from ade.events.writer import EventSpec
from ade.execution.builder import environment_for, execute_build
from ade.execution.console import StepSink
from ade.execution.deps import WorkerDeps, base_environment, process_recorder
from ade.execution.process import run_step
from ade.lifecycle import transitions
from ade.lifecycle.builds import build_stream
from ade.lifecycle.runs import run_writer
from ade.lifecycle.transitions import Recorder
from ade.records.artifacts import safe_input_name

log = logging.getLogger(__name__)


def step_environment(run: Run, step: Step, run_dir: paths.RunDir) -> dict[str, str]:
    """A clean environment: a few basics from the worker, never its own secrets or settings."""
    return {
        **base_environment(),
        **plain_environment(run.plan.environment),
        **plain_environment(step.environment),
        "ADE_RUN_ID": run.id,
        "ADE_WORKSPACE_ID": run.workspace_id,
        "ADE_STEP": step.name,
        "ADE_INPUT_DIR": os.fspath(run_dir.inputs),
        "ADE_OUTPUT_DIR": os.fspath(run_dir.outputs),
    }


class _Cancellation:
    """Announces a run's cancel (`run.cancel_requested`) once, whoever notices it first."""

    def __init__(self, deps: WorkerDeps, run: Run, rec: Recorder, event: asyncio.Event) -> None:
        self._deps, self._run, self._rec, self.event = deps, run, rec, event
        self.announced = False

    async def announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        requested_by = None
        with contextlib.suppress(RedisError, OSError):
            raw = await self._deps.redis.get(keys.run_cancel(self._run.id))
            requested_by = raw.decode() if raw else None
        await transitions.request_run_cancel(self._rec, self._run, requested_by)


def _startable(run: Run) -> bool:
    """Only a queued run is executed. A job delivered again (after a worker crash or a retry) for a run that
    already started or ended must never execute it a second time: the reaper ends a run whose worker died."""
    if run.status == "queued":
        return True
    if run.status not in TERMINAL_RUN_STATUSES:
        log.warning("run %s is %s already: its job came again and is not executed twice", run.id, run.status)
    return False


async def execute_run(deps: WorkerDeps, run_id: str) -> None:
    settings, store = deps.settings, deps.store
    try:
        run = await store.get_run(run_id)
    except NotFound:
        log.error("run %s vanished before it started", run_id)
        return
    if not _startable(run):
        return
    secrets = secret_values(run.plan.environment)
    for step in run.plan.steps:
        secrets += secret_values(step.environment)
    cancel_event = deps.cancels.register(run.id)
    current_run_id.set(run.id)
    current_build_id.set(run.build_id)
    try:
        async with run_writer(settings, deps.redis, run, redact=secrets) as writer:
            run = await store.get_run(run_id)  # under the lease: a cancel of the queued run may have won
            if not _startable(run):
                return
            with contextlib.suppress(RedisError, OSError):  # the pub/sub signal still reaches us
                if await deps.redis.exists(keys.run_cancel(run.id)):
                    cancel_event.set()
            rec = Recorder(store, writer)
            waited_s = (utcnow() - run.created_at).total_seconds()
            if run.status == "queued" and waited_s > settings.queue_timeout_s:
                message = f"it waited in the queue longer than {settings.queue_timeout_s:g} s"
                failure = Failure(stage="queue", code="queue_timeout", message=message)
                await transitions.finish_run(rec, run, "failed", failure=failure)
                return
            await _execute(deps, run, rec, _Cancellation(deps, run, rec, cancel_event))
    finally:
        deps.cancels.unregister(run_id)


async def _execute(deps: WorkerDeps, run: Run, rec: Recorder, cancellation: _Cancellation) -> None:
    paths.run_dir(deps.settings.data_dir, run.id).create()
    exit_code: int | None = None
    try:
        failure, build_env = await _await_build(deps, run, rec) if run.build_id else (None, {})
        if failure is None:
            await transitions.start_run(rec, run, deps.name)
            failure = await _place_inputs(deps, run)
        if failure is None:
            exit_code, failure = await _execute_steps(deps, run, rec, cancellation, build_env)
    except asyncio.CancelledError:
        lost = Failure(stage="run", code="worker_lost", message="the worker shut down during the run")
        await asyncio.shield(_finish(rec, run, None, lost, cancelled=False))
        raise
    except LogWriteFailed as exc:
        exit_code, failure = None, Failure(stage="run", code="internal_error", message=exc.message)
    except Exception as exc:
        log.exception("run %s failed inside the worker", run.id)
        message = f"{type(exc).__name__}: {exc}"
        exit_code, failure = None, Failure(stage="run", code="internal_error", message=message)
    await _finish(rec, run, exit_code, failure, cancelled=cancellation.announced)


async def _finish(
    rec: Recorder, run: Run, exit_code: int | None, failure: Failure | None, *, cancelled: bool
) -> None:
    try:
        if cancelled:
            await transitions.finish_run(rec, run, "cancelled")
        else:
            status: RunEndStatus = "failed" if failure else "succeeded"
            await transitions.finish_run(rec, run, status, exit_code=exit_code, failure=failure)
    except LogWriteFailed as exc:  # the record says how it ended; the log claims nothing it could not write
        log.error("run %s ended but its log is not writable: %s", run.id, exc.message)


async def _await_build(deps: WorkerDeps, run: Run, rec: Recorder) -> tuple[Failure | None, dict[str, str]]:
    """Wait for the run's build (building it here if nobody is yet), with its events in the run's stream."""
    assert run.build_id is not None
    store, settings, writer = deps.store, deps.settings, rec.writer
    build = await store.get_build(run.build_id)
    if run.build_reused and build.status in TERMINAL_BUILD_STATUSES:
        if build.status == "ready":
            await writer.emit(
                BuildCompleted(status="ready", reused=True, build_id=build.environment_build_id)
            )
    else:
        await transitions.wait_for_build(rec, run, build.id)
        stream = build_stream(settings, build.id)
        try:
            with anyio.fail_after(run.plan.timeout_s or settings.default_run_timeout_s):
                async with anyio.create_task_group() as tg:
                    # Nobody may be building it yet (all worker slots busy with waiting runs): try here.
                    tg.start_soon(partial(execute_build, deps, build.id, wait_for_lease=False))
                    async for batch in follow(
                        deps.hub,
                        stream,
                        0,
                        idle_s=settings.sse_keepalive_s,
                        page_events=settings.replay_page_events,
                    ):
                        specs: list[EventSpec] = []
                        for _, line in batch:
                            event = EVENT_DECODER.decode(line)
                            specs.append((event.type, {**event.payload, "build_id": build.id}, event.source))
                        await writer.emit_many(specs)
        except TimeoutError:
            message = f"gave up waiting for build {build.id} at the run's timeout"
            return Failure(stage="build", code="build_failed", message=message), {}
        build = await store.get_build(build.id)
    if build.status != "ready":
        reason = build.failure.message if build.failure else build.status
        message = f"build {build.id} {build.status}: {reason}"
        return Failure(stage="build", code="build_failed", message=message), {}
    build.last_used_at = utcnow()
    await store.put_build(build, durability="best_effort")
    return None, environment_for(deps, build)


async def _place_inputs(deps: WorkerDeps, run: Run) -> Failure | None:
    """Copy the run's input artifacts into `inputs/` before the first step."""
    inputs_dir = paths.run_dir(deps.settings.data_dir, run.id).inputs
    for item in run.input_artifacts:
        try:
            await deps.artifacts.copy_into(
                run.workspace_id, item.key, inputs_dir / safe_input_name(item.name)
            )
        except AdeError as exc:
            message = f"input {item.name!r} ({item.key}): {exc.message}"
            return Failure(stage="inputs", code="input_unavailable", message=message)
    return None


async def _execute_steps(
    deps: WorkerDeps, run: Run, rec: Recorder, cancellation: _Cancellation, build_env: dict[str, str]
) -> tuple[int | None, Failure | None]:
    """Run each step in order; the first failing step stops the run. Returns (exit code, failure)."""
    settings = deps.settings
    run_dir = paths.run_dir(settings.data_dir, run.id)
    run_timeout_s = run.plan.timeout_s or settings.default_run_timeout_s
    run_deadline = time.monotonic() + run_timeout_s
    exit_code: int | None = 0
    for index, step in enumerate(run.plan.steps):
        if cancellation.event.is_set():
            await cancellation.announce()
            return None, None
        remaining_s = run_deadline - time.monotonic()
        step_limit_s = min(step.timeout_s or remaining_s, remaining_s)
        await transitions.start_step(rec, run, index)
        outcome = await run_step(
            step.script,
            cwd=run_dir.work,
            env={**step_environment(run, step, run_dir), **build_env},
            timeout_s=max(step_limit_s, 0.0),
            grace_s=settings.kill_grace_s,
            max_line_bytes=settings.console_line_max_bytes,
            on_lines=StepSink(rec.writer, step.name, "run"),
            cancel=cancellation.event,
            on_cancel=cancellation.announce,
            on_spawn=process_recorder(deps, run.id),
        )
        exit_code = outcome.exit_code
        if outcome.cancelled:
            await transitions.finish_step(rec, run, index, "cancelled", exit_code=exit_code)
            return None, None
        if outcome.timed_out:
            by_step = step.timeout_s is not None and step.timeout_s <= remaining_s
            limit = (
                f"its timeout of {step.timeout_s:g} s"
                if by_step
                else f"the run's timeout of {run_timeout_s:g} s"
            )
            failure = Failure(
                stage="step", code="timeout", message=f"step {step.name!r} exceeded {limit}", step=step.name
            )
            await transitions.finish_step(rec, run, index, "failed", failure=failure)
            return None, failure
        if exit_code != 0:
            message = f"step {step.name!r} exited with code {exit_code}"
            failure = Failure(stage="step", code="exit_nonzero", message=message, step=step.name)
            await transitions.finish_step(rec, run, index, "failed", exit_code=exit_code, failure=failure)
            return exit_code, failure
        await transitions.finish_step(rec, run, index, "succeeded", exit_code=exit_code)
    return exit_code, None
