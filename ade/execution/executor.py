"""Executing a run: its steps in order, every line and engine event through the run's dispatcher.

Plain functions; nothing here knows arq or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any, cast

import anyio
import msgspec
from redis.exceptions import RedisError

from ade.core import keys
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
from ade.events import envelope as ev
from ade.events.envelope import EVENT_DECODER
from ade.events.follow import follow
from ade.events.writer import EventSpec, StreamWriter
from ade.execution.builder import environment_for, execute_build
from ade.execution.console import StepSink
from ade.execution.deps import REDIS_RETRY_S, WorkerDeps, base_environment, process_recorder
from ade.execution.process import run_step
from ade.lifecycle.builds import build_stream
from ade.lifecycle.runs import prepare_run_dir, run_writer
from ade.records import metrics
from ade.records.artifacts import safe_input_name

log = logging.getLogger(__name__)


def step_environment(run: Run, step: Step, run_dir: os.PathLike[str]) -> dict[str, str]:
    """A clean environment: a few basics from the worker, never its own secrets or settings."""
    root = os.fspath(run_dir)
    return {
        **base_environment(),
        **plain_environment(run.plan.environment),
        **plain_environment(step.environment),
        "ADE_RUN_ID": run.id,
        "ADE_WORKSPACE_ID": run.workspace_id,
        "ADE_STEP": step.name,
        "ADE_INPUT_DIR": os.path.join(root, "inputs"),
        "ADE_OUTPUT_DIR": os.path.join(root, "outputs"),
    }


class _Cancellation:
    """Announces a run's cancel (`run.cancel_requested`) once, whoever notices it first."""

    def __init__(self, deps: WorkerDeps, run: Run, writer: StreamWriter, event: asyncio.Event) -> None:
        self._deps, self._run, self._writer, self.event = deps, run, writer, event
        self.announced = False

    async def announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        raw = await self._deps.redis.get(keys.run_cancel(self._run.id))
        requested_by = raw.decode() if raw else None
        self._run.cancel_requested_by = requested_by
        await self._writer.emit(ev.RUN_CANCEL_REQUESTED, {"requested_by": requested_by})


async def execute_run(deps: WorkerDeps, run_id: str) -> None:
    settings, store = deps.settings, deps.store
    try:
        run = await store.get_run(run_id)
    except NotFound:
        log.error("run %s vanished before it started", run_id)
        return
    if run.status in TERMINAL_RUN_STATUSES:
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
            if run.status in TERMINAL_RUN_STATUSES:
                return
            with contextlib.suppress(RedisError, OSError):  # the pub/sub signal still reaches us
                if await deps.redis.exists(keys.run_cancel(run.id)):
                    cancel_event.set()
            cancellation = _Cancellation(deps, run, writer, cancel_event)
            await _execute(deps, run, writer, cancellation)
    finally:
        deps.cancels.unregister(run_id)


async def _execute(deps: WorkerDeps, run: Run, writer: StreamWriter, cancellation: _Cancellation) -> None:
    store = deps.store
    prepare_run_dir(store.run_dir(run.id))
    started = time.monotonic()
    try:
        run.failure, build_env = await _await_build(deps, run, writer) if run.build_id else (None, {})
        if run.failure is None:
            run.status, run.started_at, run.worker = "running", utcnow(), deps.name
            await writer.emit(
                ev.RUN_STARTED, {"status": "running", "attempt": run.attempt, "worker": deps.name}
            )
            await store.put_run(run, redis_retry_s=REDIS_RETRY_S)
            with contextlib.suppress(RedisError, OSError):  # a metric must not fail a run
                await metrics.record_pickup(deps.redis, (run.started_at - run.created_at).total_seconds())
            run.exit_code, run.failure = await _place_inputs(deps, run)
        if run.failure is None:
            run.exit_code, run.failure = await _execute_steps(deps, run, writer, cancellation, build_env)
    except asyncio.CancelledError:
        run.exit_code, run.failure = (
            None,
            Failure(stage="run", code="worker_lost", message="the worker shut down during the run"),
        )
        await asyncio.shield(_complete(deps, writer, run, started, cancelled=False))
        raise
    except LogWriteFailed as exc:
        run.exit_code = None
        run.failure = Failure(stage="run", code="internal_error", message=exc.message)
    except Exception as exc:
        log.exception("run %s failed inside the worker", run.id)
        run.exit_code = None
        run.failure = Failure(stage="run", code="internal_error", message=f"{type(exc).__name__}: {exc}")
    await _complete(deps, writer, run, started, cancelled=cancellation.announced)


async def _await_build(
    deps: WorkerDeps, run: Run, writer: StreamWriter
) -> tuple[Failure | None, dict[str, str]]:
    """Wait for the run's build (building it here if nobody is yet), with its events in the run's stream."""
    assert run.build_id is not None
    store, settings = deps.store, deps.settings
    build = await store.get_build(run.build_id)
    if run.build_reused and build.status in TERMINAL_BUILD_STATUSES:
        if build.status == "ready":
            payload = {"status": "ready", "reused": True, "build_id": build.environment_build_id}
            await writer.emit(ev.BUILD_COMPLETED, payload)
    else:
        run.status = "waiting_for_build"
        await store.put_run(run, redis_retry_s=REDIS_RETRY_S)
        await writer.emit(ev.RUN_WAITING_FOR_BUILD, {"status": "waiting_for_build", "build_id": build.id})
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
        return Failure(
            stage="build", code="build_failed", message=f"build {build.id} {build.status}: {reason}"
        ), {}
    build.last_used_at = utcnow()
    await store.put_build(build, redis_retry_s=REDIS_RETRY_S)
    return None, environment_for(deps, build)


async def _place_inputs(deps: WorkerDeps, run: Run) -> tuple[int | None, Failure | None]:
    """Copy the run's input artifacts into `inputs/` before the first step."""
    inputs_dir = deps.store.run_dir(run.id) / "inputs"
    for item in run.input_artifacts:
        try:
            await deps.artifacts.copy_into(
                run.workspace_id, item.key, inputs_dir / safe_input_name(item.name)
            )
        except AdeError as exc:
            message = f"input {item.name!r} ({item.key}): {exc.message}"
            return None, Failure(stage="inputs", code="input_unavailable", message=message)
    return 0, None


async def _complete(
    deps: WorkerDeps, writer: StreamWriter, run: Run, started: float, *, cancelled: bool
) -> None:
    store = deps.store
    if cancelled:
        run.status, run.failure, run.exit_code = "cancelled", None, None
    else:
        run.status = "failed" if run.failure else "succeeded"
    run.completed_at = utcnow()
    await store.put_run(run, redis_retry_s=REDIS_RETRY_S)
    with contextlib.suppress(RedisError, OSError):  # bookkeeping: a Redis blip must not stop the run's end
        if run.build_id:
            await cast(Awaitable[int], deps.redis.srem(keys.build_users(run.build_id), run.id))
        await metrics.record_run_finished(deps.redis, run.status)
        await deps.redis.delete(keys.step_process(run.id))
    payload: dict[str, Any] = {
        "status": run.status,
        "exit_code": run.exit_code,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }
    if run.failure:
        payload["failure"] = msgspec.to_builtins(run.failure)
    if cancelled:
        payload["cancelled_by"] = run.cancel_requested_by
    try:
        await writer.emit(ev.RUN_COMPLETED, payload)
    except LogWriteFailed as exc:  # the record says how it ended; the log claims nothing it could not write
        log.error("run %s ended but its log is not writable: %s", run.id, exc.message)


async def _execute_steps(
    deps: WorkerDeps, run: Run, writer: StreamWriter, cancellation: _Cancellation, build_env: dict[str, str]
) -> tuple[int | None, Failure | None]:
    """Run each step in order; the first failing step stops the run. Returns (exit code, failure)."""
    settings = deps.settings
    run_dir = deps.store.run_dir(run.id)
    run_timeout_s = run.plan.timeout_s or settings.default_run_timeout_s
    run_deadline = time.monotonic() + run_timeout_s
    exit_code: int | None = 0
    for index, step in enumerate(run.plan.steps):
        if cancellation.event.is_set():
            await cancellation.announce()
            return None, None
        remaining_s = run_deadline - time.monotonic()
        step_limit_s = min(step.timeout_s or remaining_s, remaining_s)
        await writer.emit(ev.RUN_STEP_STARTED, {"step": step.name, "index": index})
        outcome = await run_step(
            step.script,
            cwd=run_dir / "work",
            env={**step_environment(run, step, run_dir), **build_env},
            timeout_s=max(step_limit_s, 0.0),
            grace_s=settings.kill_grace_s,
            max_line_bytes=settings.console_line_max_bytes,
            on_lines=StepSink(writer, step.name, "run"),
            cancel=cancellation.event,
            on_cancel=cancellation.announce,
            on_spawn=process_recorder(deps, run.id),
        )
        exit_code = outcome.exit_code
        if outcome.cancelled:
            status = "cancelled"
        elif outcome.timed_out:
            status = "timed_out"
        else:
            status = "succeeded" if exit_code == 0 else "failed"
        await writer.emit(
            ev.RUN_STEP_COMPLETED,
            {
                "step": step.name,
                "index": index,
                "status": status,
                "exit_code": exit_code,
                "duration_ms": round(outcome.duration_s * 1000),
            },
        )
        if outcome.cancelled:
            return None, None
        if outcome.timed_out:
            by_step = step.timeout_s is not None and step.timeout_s <= remaining_s
            limit = (
                f"its timeout of {step.timeout_s:g} s"
                if by_step
                else f"the run's timeout of {run_timeout_s:g} s"
            )
            message = f"step {step.name!r} exceeded {limit}"
            return None, Failure(stage="step", code="timeout", message=message, step=step.name)
        if exit_code != 0:
            message = f"step {step.name!r} exited with code {exit_code}"
            return exit_code, Failure(stage="step", code="exit_nonzero", message=message, step=step.name)
    return exit_code, None
