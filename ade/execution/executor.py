"""Executing a run: its steps (when each starts: `ade.execution.scheduler`), every line and engine event
through the run's dispatcher, every status change through `ade.lifecycle.transitions`.

Plain functions; nothing here knows arq or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
from redis.exceptions import RedisError

from ade.core import keys, paths
from ade.core.errors import AdeError, LogWriteFailed, NotFound
from ade.core.logs import current_build_id, current_run_id
from ade.core.models import (
    TERMINAL_BUILD_STATUSES,
    TERMINAL_RUN_STATUSES,
    Build,
    Environment,
    Failure,
    Run,
    Step,
    plain_environment,
    secret_values,
    utcnow,
)
from ade.core.settings import Settings
from ade.events.envelope import EVENT_DECODER
from ade.events.follow import follow
from ade.events.payloads import BuildCompleted, RunEndStatus
from ade.events.writer import Emitter, EventSpec
from ade.execution import isolation, scheduler, step_cache
from ade.execution.builder import environment_for, execute_build, run_binds_of_build
from ade.execution.cache_transfer import CacheMirror
from ade.execution.console import StepSink, budget_of
from ade.execution.container import ImageUnavailable
from ade.execution.deps import WorkerDeps, base_environment, process_recorder
from ade.execution.limits import Limits, LimitWatch, capped
from ade.execution.outputs import collecting
from ade.execution.process import StepOutcome, run_step
from ade.execution.sandbox import WORK_DIR, Bind, ExecutorName, prepare_dirs
from ade.execution.scheduler import Policy, RecordedSteps, StepResult, StepSlot
from ade.lifecycle import transitions
from ade.lifecycle.builds import build_stream
from ade.lifecycle.runs import run_writer
from ade.lifecycle.transitions import Recorder
from ade.records.artifacts import safe_input_name
from ade.records.outputs import outputs_size

log = logging.getLogger(__name__)


def step_environment(
    run: Run, step: Step, run_dir: paths.RunDir, executor: ExecutorName = "host"
) -> dict[str, str]:
    """A clean environment: a few basics from the worker, never its own secrets or settings."""
    return {
        **base_environment(),
        **plain_environment(run.plan.environment),
        **plain_environment(step.environment),
        "ADE_RUN_ID": run.id,
        "ADE_WORKSPACE_ID": run.workspace_id,
        "ADE_STEP": step.name,
        **isolation.run_locations(run_dir, executor),
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
    secrets = await _run_secrets(deps, run)
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


def _spec_secrets(environment: Environment, steps: list[Step]) -> list[str]:
    found = secret_values(environment)
    for step in steps:
        found += secret_values(step.environment)
    return found


async def _run_secrets(deps: WorkerDeps, run: Run) -> list[str]:
    """What the run's stream masks: its own secret values and its build's (a build step may leave them in
    files the run's steps read), from the plan's build spec and from the build it uses."""
    secrets = _spec_secrets(run.plan.environment, run.plan.steps)
    if run.plan.build is not None:
        secrets += _spec_secrets(run.plan.build.environment, run.plan.build.steps)
    if run.build_id is not None:
        with contextlib.suppress(NotFound):
            build = await deps.store.get_build(run.build_id)
            secrets += _spec_secrets(build.spec.environment, build.spec.steps)
            if build.reused_from is not None:  # its environment was made by that build
                origin = await deps.store.get_build(build.reused_from)
                secrets += _spec_secrets(origin.spec.environment, origin.spec.steps)
    return secrets


async def outputs_over_limit(settings: Settings, run: Run, step: Step) -> Failure | None:
    """A resource_limit failure if the run's outputs (measured without following links) exceed its limit
    (the configuration's `limits.output_bytes`, at most ADE_MAX_OUTPUT_BYTES) after `step`."""
    limit = capped(run.plan.limits.output_bytes, settings.max_output_bytes)
    outputs_dir = paths.run_dir(settings.data_dir, run.id).outputs
    size, files = await asyncio.to_thread(outputs_size, outputs_dir, root=settings.data_dir)
    if not limit or size <= limit:  # 0: no maximum
        return None
    message = (
        f"step {step.name!r} left {size} bytes of outputs ({files} files), over the limit of {limit} bytes "
        "(the configuration's limits.output_bytes, at most ADE_MAX_OUTPUT_BYTES)"
    )
    return Failure(stage="step", code="resource_limit", message=message, step=step.name)


async def _execute(deps: WorkerDeps, run: Run, rec: Recorder, cancellation: _Cancellation) -> None:
    run_dir = paths.run_dir(deps.settings.data_dir, run.id)
    run_dir.create()
    prepare_dirs(deps.settings, run_dir.work, run_dir.outputs)  # the sandbox's uid writes there
    exit_code: int | None = None
    try:
        failure, build = await _await_build(deps, run, rec) if run.build_id else (None, None)
        if failure is None:
            await transitions.start_run(rec, run, deps.name)
            failure = await _place_inputs(deps, run)
        if failure is None:
            exit_code, failure = await _execute_steps(deps, run, rec, cancellation, build)
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


async def _await_build(deps: WorkerDeps, run: Run, rec: Recorder) -> tuple[Failure | None, Build | None]:
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
            return Failure(stage="build", code="build_failed", message=message), None
        build = await store.get_build(build.id)
    if build.status != "ready":
        reason = build.failure.message if build.failure else build.status
        message = f"build {build.id} {build.status}: {reason}"
        return Failure(stage="build", code="build_failed", message=message), None
    build.last_used_at = utcnow()
    await store.put_build(build, durability="best_effort")
    return None, build


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
    deps: WorkerDeps, run: Run, rec: Recorder, cancellation: _Cancellation, build: Build | None
) -> tuple[int | None, Failure | None]:
    """Run the steps, each when `ade.execution.scheduler` says (in order, or as a graph with
    `depends_on`). Returns (exit code, failure)."""
    settings = deps.settings
    run_dir = paths.run_dir(settings.data_dir, run.id)
    context = StepContext(
        settings=settings,
        run=run,
        writer=rec.writer,
        run_dir=run_dir,
        binds=isolation.run_binds(run_dir) + (run_binds_of_build(deps, build) if build else []),
        build_env=environment_for(deps, build) if build else {},
        on_spawn=process_recorder(deps, run.id),
    )

    async def execute_step(slot: StepSlot) -> StepResult:
        step = run.plan.steps[slot.index]
        image, failure = await isolation.image_of(deps, run.workspace_id, step, "step", build)
        return await execute_one_step(context, slot, image, failure)

    port = RecordedSteps(rec, run, cancellation.announce)
    collected = collecting(settings, run, rec.writer, execute_step)  # each step, once ended: its outputs
    return await scheduler.execute(
        run.plan.steps, port, collected, cancellation.event, policy_of(settings, run)
    )


def policy_of(settings: Settings, run: Run) -> Policy:
    return Policy(
        run_timeout_s=run.plan.timeout_s or settings.default_run_timeout_s,
        max_parallel=settings.max_parallel_steps,
        cleanup_grace_s=settings.cleanup_grace_s,
    )


@dataclass(frozen=True, slots=True)
class StepContext:
    """What every step of a run is executed with, on a worker or a runner."""

    settings: Settings
    run: Run
    writer: Emitter
    run_dir: paths.RunDir
    binds: list[Bind]
    build_env: dict[str, str]
    on_spawn: Callable[[int], Awaitable[None]] | None = None
    cache_mirror: CacheMirror | None = None  # a runner's: the API keeps the caches


async def execute_one_step(
    context: StepContext, slot: StepSlot, image: str | None, image_failure: Failure | None
) -> StepResult:
    """One step: its cache restored, its process in its executor (`image`: its container image, or
    `image_failure`: why it has none it may use), its outcome as a result, its cache saved."""
    settings, run, writer = context.settings, context.run, context.writer
    step = run.plan.steps[slot.index]
    cache = await step_cache.before_step(settings, run, step, writer, slot, context.cache_mirror)
    if image_failure is not None:
        return StepResult(status="failed", failure=image_failure)
    outcome, failure = await _step(context, slot, image)
    if failure is not None:
        return StepResult(status="failed", failure=failure)
    assert outcome is not None
    exit_code = outcome.exit_code
    if outcome.cancelled:
        return StepResult(status="cancelled", exit_code=exit_code)
    if outcome.timed_out:
        message = f"step {step.name!r} exceeded {slot.limit}"
        failure = Failure(stage="step", code="timeout", message=message, step=step.name)
        return StepResult(status="failed", failure=failure)
    if exit_code != 0:
        message = f"step {step.name!r} exited with code {exit_code}"
        failure = outcome.limit_failure or Failure(
            stage="step", code="exit_nonzero", message=message, step=step.name
        )
        return StepResult(status="failed", exit_code=exit_code, failure=failure)
    if over := await outputs_over_limit(settings, run, step):
        return StepResult(status="failed", exit_code=exit_code, failure=over)
    await step_cache.after_step(settings, run, step, writer, cache, context.cache_mirror)
    return StepResult(status="succeeded", exit_code=exit_code)


class _Outcome:
    """A step's outcome with what its limits say about a failure."""

    def __init__(self, outcome: StepOutcome, limit_failure: Failure | None) -> None:
        self.exit_code, self.cancelled, self.timed_out = (
            outcome.exit_code,
            outcome.cancelled,
            outcome.timed_out,
        )
        self.limit_failure = limit_failure


async def _step(
    context: StepContext, slot: StepSlot, image: str | None
) -> tuple[_Outcome | None, Failure | None]:
    """One step in its executor: (outcome, None), or (None, failure) when it could not start."""
    settings, run, writer, run_dir = context.settings, context.run, context.writer, context.run_dir
    index = slot.index
    step = run.plan.steps[index]
    executor = await isolation.executor_for(settings, image)
    limits = Limits.of(settings, step)
    job = isolation.step_job(
        settings,
        name=isolation.container_name(run.id, index),
        script=step.script,
        env={**step_environment(run, step, run_dir, executor), **context.build_env},
        executor=executor,
        host_cwd=run_dir.work,
        cwd=WORK_DIR,
        binds=context.binds,
        network=run.plan.network,
        limits=limits,
        image=image,
    )
    budget = budget_of(writer, capped(run.plan.limits.console_bytes, settings.max_console_bytes_per_run))
    watch = LimitWatch(StepSink(writer, step.name, "run", budget), limits)
    try:
        outcome = await run_step(
            isolation.spawner(settings, job, executor),
            timeout_s=slot.timeout_s,
            grace_s=settings.kill_grace_s,
            max_line_bytes=settings.console_line_max_bytes,
            on_lines=watch,
            cancel=slot.cancel,
            on_cancel=slot.on_cancel,
            on_spawn=context.on_spawn,
        )
    except ImageUnavailable as exc:
        message = f"step {step.name!r}: image {job.image!r} is not available: {exc}"
        return None, Failure(stage="step", code="image_unavailable", message=message, step=step.name)
    limit_failure = watch.failure(step.name, "step", oom_killed=outcome.oom_killed)
    return _Outcome(outcome, limit_failure), None
