"""Runs and builds nobody will finish, ended: one worker per interval looks at every stream not yet ended.

- **Lost writer.** A started run or build whose stream lease is gone has lost its worker. It is ended
  `failed` / `worker_lost` (a build so ended is never reused) once the lease has been missing for a whole
  lease TTL — a writer that lived through a Redis outage takes its lease back well within that — and its
  step's process group is killed when it ran on this host, its step's container removed (`podman rm
  --force` of the containers named after the stream: the container outlives the killed client under its
  monitor), and a docker build's leftovers (`container.stop_image_build`) removed.
- **Queued too long.** A run or build queued longer than `ADE_QUEUE_TIMEOUT_S` fails `queue_timeout`
  without starting.
- **Lost job.** A queued run or build whose arq job is gone (expired, or lost with Redis) is enqueued again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable

from ade.core import keys
from ade.core.errors import Conflict, NotFound
from ade.core.models import TERMINAL_BUILD_STATUSES, TERMINAL_RUN_STATUSES, Build, Failure, Run, utcnow
from ade.execution import container
from ade.execution.deps import WorkerDeps
from ade.lifecycle import queue, transitions
from ade.lifecycle.builds import build_writer
from ade.lifecycle.runs import run_writer
from ade.lifecycle.transitions import Recorder

log = logging.getLogger(__name__)
LOST = "the worker running it stopped (its lease lapsed)"


async def reap(deps: WorkerDeps) -> list[str]:
    """End or re-enqueue every stream that needs it; return the ids of those ended."""
    ended: list[str] = []
    for raw in await deps.redis.zrange(keys.ACTIVE_STREAMS, 0, -1):
        stream_id = raw.decode()
        try:
            if await deps.redis.exists(keys.stream_lease(stream_id)):
                await deps.redis.hdel(keys.REAPER_SUSPECTS, stream_id)  # type: ignore[misc]
                continue  # its writer is alive
            record = await (
                deps.store.get_build(stream_id)
                if stream_id.startswith("build_")
                else deps.store.get_run(stream_id)
            )
            if await _tend(deps, record):
                ended.append(stream_id)
        except NotFound:
            await deps.redis.zrem(keys.ACTIVE_STREAMS, stream_id)
        except Conflict:
            continue  # a writer took the lease meanwhile
    if ended:
        log.warning("ended %d run(s)/build(s) nobody would finish: %s", len(ended), ", ".join(ended))
    return ended


async def _tend(deps: WorkerDeps, record: Run | Build) -> bool:
    terminal = TERMINAL_RUN_STATUSES if isinstance(record, Run) else TERMINAL_BUILD_STATUSES
    if record.status in terminal:
        return False
    age_s = (utcnow() - record.created_at).total_seconds()
    if isinstance(record, Run) and record.plan.runs_on:
        return await _tend_runner_run(deps, record, age_s)
    if record.status == "queued":
        if age_s > deps.settings.queue_timeout_s:
            message = f"it waited in the queue longer than {deps.settings.queue_timeout_s:g} s"
            return await _end(deps, record, Failure(stage="queue", code="queue_timeout", message=message))
        # The API enqueues right after writing the record: a lease TTL is plenty of grace for that.
        if age_s > deps.settings.lease_ttl_s and not await queue.job_exists(deps.redis, record.id):
            log.warning("%s was queued but its job was gone: enqueued again", record.id)
            await queue.enqueue(deps.redis, record.id)
        return False
    if not await _missing_long_enough(deps, record.id):
        return False
    leftover = await deps.redis.get(keys.step_process(record.id))  # `<host> <pgid>` of its step, if any

    async def stop_leftovers() -> None:  # before the record says it ended: then nothing of it runs
        if leftover is not None and _kill_group_here(leftover.decode()):
            await _remove_containers_here(deps, record)

    failure = Failure(stage=_stage(record), code="worker_lost", message=LOST)
    return await _end(deps, record, failure, stop_leftovers)


async def _tend_runner_run(deps: WorkerDeps, run: Run, age_s: float) -> bool:
    """A run offered to runners: offered again if its offer was lost; `runner_lost` once the runner that
    took it is not heard from for ADE_RUNNER_LOST_AFTER_S (its heartbeats and chunks keep it alive)."""
    if run.runner_id is None:
        if age_s > deps.settings.queue_timeout_s:
            message = f"no runner took it within {deps.settings.queue_timeout_s:g} s"
            return await _end(deps, run, Failure(stage="queue", code="queue_timeout", message=message))
        if age_s > deps.settings.lease_ttl_s and not await queue.is_offered(deps.redis, run.id):
            log.warning("%s was to be offered to runners but was not: offered again", run.id)
            await queue.offer(deps.redis, run)
        return False
    if await deps.redis.exists(keys.runner_run_alive(run.id)):
        return False
    lost_after_s = deps.settings.runner_lost_after_s
    message = f"runner {run.runner_id} stopped reporting (nothing heard from it for {lost_after_s:g} s)"
    return await _end(deps, run, Failure(stage="run", code="runner_lost", message=message))


def _stage(record: Run | Build) -> str:
    return "run" if isinstance(record, Run) else "build"


async def _missing_long_enough(deps: WorkerDeps, stream_id: str) -> bool:
    """Whether this stream's lease has been seen missing for at least a lease TTL."""
    now_s = time.time()
    await deps.redis.hsetnx(keys.REAPER_SUSPECTS, stream_id, str(now_s))  # type: ignore[misc]
    since = await deps.redis.hget(keys.REAPER_SUSPECTS, stream_id)  # type: ignore[misc]
    return since is not None and now_s - float(since) >= deps.settings.lease_ttl_s


async def _end(
    deps: WorkerDeps,
    record: Run | Build,
    failure: Failure,
    before: Callable[[], Awaitable[None]] | None = None,
) -> bool:
    """End the run or build `failed` under its lease, unless it changed meanwhile (`before` runs first)."""
    if isinstance(record, Run):
        async with run_writer(deps.settings, deps.redis, record, acquire_timeout_s=0.0) as writer:
            run = await deps.store.get_run(record.id)
            if run.status != record.status:
                return False
            if before is not None:
                await before()
            await transitions.finish_run(Recorder(deps.store, writer), run, "failed", failure=failure)
    else:
        async with build_writer(deps.settings, deps.redis, record, acquire_timeout_s=0.0) as writer:
            build = await deps.store.get_build(record.id)
            if build.status != record.status:
                return False
            if before is not None:
                await before()
            await transitions.finish_build(Recorder(deps.store, writer), build, "failed", failure=failure)
    await deps.redis.hdel(keys.REAPER_SUSPECTS, record.id)  # type: ignore[misc]
    return True


def _kill_group_here(step_process: str) -> bool:
    """Kill a dead worker's step process group if it ran on this host; whether it did."""
    host, _, pgid = step_process.partition(" ")
    if host == socket.gethostname() and pgid.isdigit() and int(pgid) > 1 and int(pgid) != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGKILL)
        return True
    return False


async def _remove_containers_here(deps: WorkerDeps, record: Run | Build) -> None:
    """A dead worker's containers on this host: its step's (a run's, a build step's) and, for a build, what
    its `podman build` left. Only where the runtime is installed; a failure is logged, never raised."""
    settings = deps.settings
    if shutil.which(settings.container_runtime) is None:
        return
    try:
        removed = await container.remove_stream_containers(settings, record.id)
        if isinstance(record, Build):
            await container.stop_image_build(settings, record.id)
    except Exception:
        log.exception("could not remove the containers of %s", record.id)
        return
    if removed:
        log.warning("removed %s's container(s) left by its lost worker: %s", record.id, ", ".join(removed))
