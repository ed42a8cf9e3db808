"""The one place a run, a step or a build changes status.

Each transition is one function: it updates the record, persists it (the data directory first, then Redis),
does the bookkeeping that goes with the new status (indexes, build users, active streams, metrics, the
step-process record, the workspace slot) and emits the event that says so, typed, through the stream's
writer. The API, the execution engine, the reaper and cancel all call these; nothing else assigns a status.

A run that ends always ends its unfinished steps first: a running step `cancelled` (or `failed` with the
run's failure), a pending one `skipped`, so no view ever shows a running step in a finished run.

Who records decides what a Redis failure means (`Recorder.source`): the API changes nothing (the record is
put back and the error answers 503); a worker keeps the file, which is the truth, and retries indexing
through an outage for the end of a run, or leaves it to the next write for a step's progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import cast

from redis.exceptions import RedisError

from ade.core import keys, paths
from ade.core.models import Build, Failure, Run, StepOutput, StepState, utcnow
from ade.events.envelope import Source
from ade.events.payloads import (
    BuildCancelRequested,
    BuildCompleted,
    BuildEndStatus,
    BuildQueued,
    BuildStarted,
    Payload,
    RunCancelRequested,
    RunCompleted,
    RunEndStatus,
    RunQueued,
    RunStarted,
    RunWaitingForBuild,
    StepCompleted,
    StepEndStatus,
    StepSkipped,
    StepStarted,
)
from ade.events.writer import StreamWriter
from ade.lifecycle import queue
from ade.records import metrics
from ade.records.store import Durability, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recorder:
    """What a transition needs: the records, the stream it writes (holding its lease), and who writes."""

    store: Store
    writer: StreamWriter
    source: Source = "worker"

    def durability(self, *, final: bool) -> Durability:
        if self.source == "api":
            return "all_or_nothing"
        return "retry" if final else "best_effort"


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return None if start is None or end is None else round((end - start).total_seconds() * 1000)


async def _bookkeeping(*operations: Awaitable[object]) -> None:
    """Counters and helper keys: a Redis blip must not stop a status change (the record is the truth)."""
    for operation in operations:
        try:
            await operation
        except (RedisError, OSError) as exc:
            log.warning("bookkeeping skipped (%s)", exc)


def steps_of(run: Run) -> list[StepState]:
    """The run's step states, in plan order (records written before they existed get them here)."""
    if len(run.steps) != len(run.plan.steps):
        known = {state.name: state for state in run.steps}
        run.steps = [known.get(step.name) or StepState(name=step.name) for step in run.plan.steps]
    return run.steps


# Runs ---------------------------------------------------------------------------------------------


async def queue_run(rec: Recorder, run: Run) -> None:
    """A new run: its record, then `run.queued` as sequence 1."""
    steps_of(run)
    await rec.store.put_run(run, durability=rec.durability(final=True))
    await rec.writer.emit(RunQueued(attempt=run.attempt, rerun_of=run.rerun_of), rec.source)


async def wait_for_build(rec: Recorder, run: Run, build_id: str) -> None:
    run.status = "waiting_for_build"
    await rec.store.put_run(run, durability=rec.durability(final=True))
    await rec.writer.emit(RunWaitingForBuild(build_id=build_id), rec.source)


async def start_run(rec: Recorder, run: Run, worker: str) -> None:
    run.status, run.started_at, run.worker = "running", utcnow(), worker
    # The record first: whoever sees `run.started` can count on the record saying `running` (a worker
    # killed right after would otherwise leave a run that looks queued, and nobody would reap it).
    await rec.store.put_run(run, durability=rec.durability(final=True))
    await rec.writer.emit(RunStarted(attempt=run.attempt, worker=worker), rec.source)
    pickup_s = (run.started_at - run.created_at).total_seconds()
    await _bookkeeping(metrics.record_pickup(rec.store.redis, pickup_s))


async def start_step(rec: Recorder, run: Run, index: int) -> None:
    state = steps_of(run)[index]
    state.status, state.started_at = "running", utcnow()
    await rec.store.put_run(run, durability=rec.durability(final=False))
    await rec.writer.emit(StepStarted(step=state.name, index=index), rec.source)


def end_step_state(
    run: Run,
    index: int,
    status: StepEndStatus,
    exit_code: int | None,
    failure: Failure | None,
    outputs: list[StepOutput] | None = None,
    reused_from: str | None = None,
) -> StepCompleted:
    state = steps_of(run)[index]
    state.status, state.completed_at = status, utcnow()
    state.exit_code, state.failure = exit_code, failure
    state.outputs, state.reused_from = list(outputs or []), reused_from
    return StepCompleted(
        step=state.name,
        index=index,
        status=status,
        exit_code=exit_code,
        duration_ms=_ms(state.started_at, state.completed_at),
        failure=failure,
        outputs=state.outputs,
        reused_from=reused_from,
    )


def skip_step_state(run: Run, index: int, reason: str) -> StepSkipped:
    state = steps_of(run)[index]
    state.status, state.completed_at, state.skipped_reason = "skipped", utcnow(), reason
    return StepSkipped(step=state.name, index=index, reason=reason)


async def finish_step(
    rec: Recorder,
    run: Run,
    index: int,
    status: StepEndStatus,
    *,
    exit_code: int | None = None,
    failure: Failure | None = None,
    outputs: list[StepOutput] | None = None,
    reused_from: str | None = None,
) -> None:
    """A step ended, with the files it added to the run's outputs (`ade.execution.outputs`). `reused_from`:
    a failed-only re-run keeps the step from that run without running it (`succeeded`, never started)."""
    payload = end_step_state(run, index, status, exit_code, failure, outputs, reused_from)
    await rec.store.put_run(run, durability=rec.durability(final=False))
    await rec.writer.emit(payload, rec.source)


async def skip_step(rec: Recorder, run: Run, index: int, reason: str) -> None:
    payload = skip_step_state(run, index, reason)
    await rec.store.put_run(run, durability=rec.durability(final=False))
    await rec.writer.emit(payload, rec.source)


async def request_run_cancel(rec: Recorder, run: Run, requested_by: str | None) -> None:
    run.cancel_requested_by = requested_by
    await rec.writer.emit(RunCancelRequested(requested_by=requested_by), rec.source)


async def finish_run(
    rec: Recorder,
    run: Run,
    status: RunEndStatus,
    *,
    exit_code: int | None = None,
    failure: Failure | None = None,
    cancelled_by: str | None = None,
) -> None:
    """End a run: its unfinished steps and its record (one write, so the record is terminal even if the log
    cannot be written), its bookkeeping, then the steps' events and `run.completed`, its last event."""
    ended: list[Payload] = []
    for index, state in enumerate(steps_of(run)):
        if state.status == "running":
            step_status: StepEndStatus = "cancelled" if status == "cancelled" else "failed"
            ended.append(end_step_state(run, index, step_status, None, failure))
        elif state.status == "pending":
            ended.append(skip_step_state(run, index, f"the run ended ({status}) before this step started"))
    run.status, run.completed_at = status, utcnow()
    run.exit_code, run.failure = exit_code, failure
    if status == "cancelled":
        run.cancel_requested_by = cancelled_by or run.cancel_requested_by
    await rec.store.put_run(run, durability=rec.durability(final=True))
    redis = rec.store.redis
    await _bookkeeping(
        metrics.record_run_finished(redis, status),
        redis.delete(keys.step_process(run.id)),
        *([queue.withdraw_offer(redis, run.id)] if run.plan.runs_on else []),
        *([cast(Awaitable[int], redis.srem(keys.build_users(run.build_id), run.id))] if run.build_id else []),
    )
    ended.append(
        RunCompleted(
            status=status,
            exit_code=exit_code,
            duration_ms=_ms(run.started_at, run.completed_at),
            failure=failure,
            cancelled_by=run.cancel_requested_by if status == "cancelled" else None,
        )
    )
    try:
        await rec.writer.emit_many([(payload.TYPE, payload, rec.source) for payload in ended])
    finally:
        await _give_back_slot(rec, run)


async def _give_back_slot(rec: Recorder, run: Run) -> None:
    """Fair share: the run's workspace slot is given back last, once `run.completed` is out, so nobody sees
    more of a workspace's runs running than its cap (`ade.lifecycle.queue`). Its next parked run starts."""
    give_back = partial(queue.give_back, rec.store.redis, run.id, run.workspace_id)
    try:
        await (give_back() if rec.source == "api" else rec.store.retrying(give_back))
    except (RedisError, OSError) as exc:
        log.warning("the workspace slot of %s is not given back yet (%s); the reaper will", run.id, exc)


# Builds -------------------------------------------------------------------------------------------


async def queue_build(rec: Recorder, build: Build) -> None:
    await rec.store.put_build(build, durability=rec.durability(final=True))
    await rec.writer.emit(BuildQueued(fingerprint=build.fingerprint, force=build.force), rec.source)


async def start_build(rec: Recorder, build: Build, worker: str) -> None:
    build.status, build.started_at, build.worker = "building", utcnow(), worker
    await rec.store.put_build(build, durability=rec.durability(final=True))
    await rec.writer.emit(BuildStarted(worker=worker, fingerprint=build.fingerprint), rec.source)


async def request_build_cancel(rec: Recorder, build: Build, requested_by: str | None) -> None:
    build.cancel_requested_by = requested_by
    await rec.writer.emit(BuildCancelRequested(requested_by=requested_by), rec.source)


async def release_fingerprint(store: Store, build: Build, *, ready: bool) -> None:
    """A ready build becomes the one to reuse; any ended build stops being the one to join."""
    await store.scripts.release_fingerprint(
        keys=[keys.build_ready(build.fingerprint), keys.build_active(build.fingerprint)],
        args=[build.id, "1" if ready else "0"],
    )


async def finish_build(
    rec: Recorder,
    build: Build,
    status: BuildEndStatus,
    *,
    failure: Failure | None = None,
    cancelled_by: str | None = None,
) -> None:
    """End a build: its directories (the READY marker, or the half-made environment removed), its record,
    its fingerprint (ready: reused from now on; otherwise never), then `build.completed`."""
    directory = paths.build_dir(rec.store.data_dir, build.id)
    if status == "ready" and build.reused_from is None:
        directory.ready_marker.write_text(build.fingerprint)
    elif status != "ready":
        for part in (directory.env, directory.source):
            await asyncio.to_thread(shutil.rmtree, part, True)
    build.status, build.completed_at, build.failure = status, utcnow(), failure
    if status == "cancelled":
        build.cancel_requested_by = cancelled_by or build.cancel_requested_by
    await rec.store.put_build(build, durability=rec.durability(final=True))
    if build.reused_from is None:
        release = partial(release_fingerprint, rec.store, build, ready=status == "ready")
        await (release() if rec.source == "api" else rec.store.retrying(release))
    with contextlib.suppress(RedisError, OSError):
        await rec.store.redis.delete(keys.step_process(build.id))
    await rec.writer.emit(
        BuildCompleted(
            status=status,
            build_id=build.id,
            duration_ms=0 if build.reused_from else _ms(build.started_at, build.completed_at),
            failure=failure,
            cancelled_by=build.cancel_requested_by if status == "cancelled" else None,
            reused=build.reused_from is not None,
            reused_from=build.reused_from,
        ),
        rec.source,
    )


async def expire_build(store: Store, build: Build) -> None:
    """Retention: an ended build's log and environment are removed; its fingerprint is never reused again.
    (No event: its stream ended with `build.completed`.)"""
    await store.retrying(
        lambda: store.scripts.forget_ready(keys=[keys.build_ready(build.fingerprint)], args=[build.id])
    )
    build.status = "expired"
    await store.put_build(build, durability="retry")
    directory = paths.build_dir(store.data_dir, build.id)
    for part in (directory.log.parent, directory.env, directory.source):
        await asyncio.to_thread(shutil.rmtree, part, True)
    directory.ready_marker.unlink(missing_ok=True)
