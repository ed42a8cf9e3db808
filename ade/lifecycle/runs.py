"""Runs: create (plan snapshot, `run.queued` as sequence 1, enqueue), re-run, cancel, and the run's stream
writer. Plain functions over the store, the dispatcher, the queue and `transitions`; used by the API and by
the engine."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Sequence
from typing import cast

import anyio.to_thread
import msgspec
from arq.connections import ArqRedis
from redis.asyncio import Redis

from ade.core import ids, keys, paths
from ade.core.errors import Conflict
from ade.core.models import (
    TERMINAL_RUN_STATUSES,
    Commit,
    Configuration,
    InputArtifact,
    Plan,
    Run,
    StepState,
)
from ade.core.settings import Settings
from ade.events.envelope import StreamRef
from ade.events.writer import Identity, StreamWriter
from ade.lifecycle import queue, transitions
from ade.lifecycle.transitions import Recorder
from ade.records.store import Store


def run_identity(run: Run) -> Identity:
    return Identity(
        workspace_id=run.workspace_id,
        configuration_id=run.configuration_id,
        run_id=run.id,
        build_id=run.build_id,
    )


def plan_of(cfg: Configuration) -> Plan:
    return Plan(
        configuration_id=cfg.id,
        name=cfg.name,
        steps=list(cfg.steps),
        environment=dict(cfg.environment),
        timeout_s=cfg.timeout_s,
        build=cfg.build,
        network=cfg.network,
        limits=cfg.limits,
        runs_on=list(cfg.runs_on),
    )


def run_writer(
    settings: Settings, redis: Redis, run: Run, *, acquire_timeout_s: float = 5.0, redact: Sequence[str] = ()
) -> StreamWriter:
    return StreamWriter(
        redis,
        StreamRef.for_run(settings.data_dir, run.id),
        run_identity(run),
        lease_ttl_s=settings.lease_ttl_s,
        fsync=settings.log_fsync,
        acquire_timeout_s=acquire_timeout_s,
        redact=redact,
    )


def new_run(
    cfg_or_plan: Configuration | Plan,
    *,
    workspace_id: str,
    commit: Commit | None,
    input_artifacts: list[InputArtifact],
) -> Run:
    plan = plan_of(cfg_or_plan) if isinstance(cfg_or_plan, Configuration) else cfg_or_plan
    run_id = ids.new_id(ids.RUN)
    return Run(
        id=run_id,
        workspace_id=workspace_id,
        configuration_id=plan.configuration_id,
        status="queued",
        plan=plan,
        commit=commit,
        input_artifacts=input_artifacts,
        created_at=ids.created_at(run_id),  # the id's own time, so time filters and ids agree
        steps=[StepState(name=step.name) for step in plan.steps],
    )


async def submit_run(settings: Settings, redis: Redis, arq: ArqRedis, store: Store, run: Run) -> Run:
    """Persist a new run, write `run.queued` as its sequence 1, then enqueue it."""
    directory = paths.run_dir(settings.data_dir, run.id)
    try:
        await anyio.to_thread.run_sync(directory.create)
        async with run_writer(settings, redis, run) as writer:
            await transitions.queue_run(Recorder(store, writer, "api"), run)
    except BaseException:
        shutil.rmtree(directory.root, ignore_errors=True)  # nothing half-created
        raise
    await (queue.offer(redis, run) if run.plan.runs_on else queue.enqueue(arq, run.id))
    return run


async def rerun(
    settings: Settings, redis: Redis, arq: ArqRedis, store: Store, source: Run, *, failed_only: bool = False
) -> Run:
    """A new run with the same plan and inputs, linked to `source`, numbered within its lineage.

    `failed_only`: only for a failed `source` (else `Conflict` run_not_failed, and nothing changes); the new
    run keeps the steps that succeeded there — they are recorded `succeeded` with `reused_from` and their
    outputs copied when the run starts (`ade.execution.outputs.keep_succeeded`) — and runs the others and
    everything downstream of them."""
    if failed_only and source.status != "failed":
        raise Conflict(
            f"run {source.id!r} did not fail ({source.status}): only a failed run can be re-run with "
            "failed_only; re-run it whole instead",
            code="run_not_failed",
        )
    original = source.original_run_id or source.id
    attempts_key = keys.run_attempts(original)
    await redis.set(attempts_key, 1, nx=True)
    attempt = await cast(Awaitable[int], redis.incr(attempts_key))
    run = new_run(
        source.plan,
        workspace_id=source.workspace_id,
        commit=source.commit,
        input_artifacts=source.input_artifacts,
    )
    run = msgspec.structs.replace(
        run,
        attempt=attempt,
        rerun_of=source.id,
        failed_only=failed_only,
        original_run_id=original,
        build_id=source.build_id,
        build_reused=source.build_id is not None,
    )
    if run.build_id:  # the same environment as the attempt it repeats
        await cast(Awaitable[int], redis.sadd(keys.build_users(run.build_id), run.id))
    return await submit_run(settings, redis, arq, store, run)


async def signal_cancel(redis: Redis, stream_id: str, actor: str) -> None:
    """Tell whichever worker runs a run or build to stop: a durable flag plus a pub/sub message."""
    await redis.set(keys.run_cancel(stream_id), actor, ex=keys.RUN_CANCEL_TTL_S)
    await redis.publish(keys.CANCEL_CHANNEL, stream_id)


async def cancel(settings: Settings, redis: Redis, store: Store, run: Run, actor: str) -> Run:
    """Cancel a queued run at once (it never starts), or ask the worker running it to stop.

    A queued run is cancelled here under its stream's lease; if a worker already holds the lease (it is
    starting the run), the request goes to the worker like any running run's: a durable flag plus a
    pub/sub message the worker acts on within milliseconds.
    """
    if run.status in TERMINAL_RUN_STATUSES:
        raise Conflict(f"run {run.id!r} already ended ({run.status})", code="run_finished")
    if run.status == "queued":
        try:
            async with run_writer(settings, redis, run, acquire_timeout_s=0.2) as writer:
                current = await store.get_run(run.id)
                if current.status == "queued":
                    recorder = Recorder(store, writer, "api")
                    await transitions.request_run_cancel(recorder, current, actor)
                    await transitions.finish_run(recorder, current, "cancelled", cancelled_by=actor)
                    return current
        except Conflict as exc:
            if exc.code != "stream_busy":
                raise
    await signal_cancel(redis, run.id, actor)
    current = await store.get_run(run.id)
    current.cancel_requested_by = current.cancel_requested_by or actor  # the worker records it too
    return current
