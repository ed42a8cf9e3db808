"""Runs and builds whose worker died: their stream lease lapses (nobody renews it), so a started run or
build with no lease holder has lost its writer. The reaper ends it `failed` with `failure.code =
worker_lost` (a build so ended is never reused), and kills its step's process group when that ran on this
host. One worker per interval reaps (a Redis lock decides)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket

from ade.core import keys
from ade.core.errors import Conflict, NotFound
from ade.core.models import TERMINAL_BUILD_STATUSES, TERMINAL_RUN_STATUSES, Failure, utcnow
from ade.events import envelope as ev
from ade.execution.deps import REDIS_RETRY_S, WorkerDeps
from ade.lifecycle.builds import build_writer, release_fingerprint
from ade.lifecycle.runs import run_writer
from ade.records import metrics

log = logging.getLogger(__name__)
LOST = "the worker running it stopped (its lease lapsed)"


async def reap(deps: WorkerDeps) -> list[str]:
    """End every started run or build whose writer is gone; return their ids."""
    reaped = []
    for raw in await deps.redis.zrange(keys.ACTIVE_STREAMS, 0, -1):
        stream_id = raw.decode()
        if await deps.redis.exists(keys.stream_lease(stream_id)):
            continue  # its writer is alive
        try:
            ended = await (
                _reap_build(deps, stream_id) if stream_id.startswith("build_") else _reap_run(deps, stream_id)
            )
        except NotFound:
            await deps.redis.zrem(keys.ACTIVE_STREAMS, stream_id)
            continue
        except Conflict:
            continue  # a writer took the lease meanwhile
        if ended:
            await _kill_leftovers(deps, stream_id)
            reaped.append(stream_id)
    if reaped:
        log.warning("reaped %d run(s)/build(s) whose worker died: %s", len(reaped), ", ".join(reaped))
    return reaped


async def _reap_run(deps: WorkerDeps, run_id: str) -> bool:
    run = await deps.store.get_run(run_id)
    if run.status == "queued" or run.status in TERMINAL_RUN_STATUSES:
        return False
    async with run_writer(deps.settings, deps.redis, run, acquire_timeout_s=0.0) as writer:
        run = await deps.store.get_run(run_id)
        if run.status == "queued" or run.status in TERMINAL_RUN_STATUSES:
            return False
        run.status, run.completed_at, run.exit_code = "failed", utcnow(), None
        run.failure = Failure(stage="run", code="worker_lost", message=LOST)
        await deps.store.put_run(run, redis_retry_s=REDIS_RETRY_S)
        if run.build_id:
            await deps.redis.srem(keys.build_users(run.build_id), run.id)  # type: ignore[misc]
        await metrics.record_run_finished(deps.redis, run.status)
        payload = {
            "status": "failed",
            "exit_code": None,
            "failure": {"stage": "run", "code": "worker_lost", "message": LOST},
        }
        await writer.emit(ev.RUN_COMPLETED, payload)
    return True


async def _reap_build(deps: WorkerDeps, build_id: str) -> bool:
    build = await deps.store.get_build(build_id)
    if build.status == "queued" or build.status in TERMINAL_BUILD_STATUSES:
        return False
    async with build_writer(deps.settings, deps.redis, build, acquire_timeout_s=0.0) as writer:
        build = await deps.store.get_build(build_id)
        if build.status == "queued" or build.status in TERMINAL_BUILD_STATUSES:
            return False
        build.status, build.completed_at = "failed", utcnow()
        build.failure = Failure(stage="build", code="worker_lost", message=LOST)
        directory = deps.store.build_dir(build.id)
        for part in ("env", "source"):
            await asyncio.to_thread(shutil.rmtree, directory / part, True)
        await deps.store.put_build(build, redis_retry_s=REDIS_RETRY_S)
        await release_fingerprint(deps.redis, build, ready=False)  # never reused
        payload = {"status": "failed", "failure": {"stage": "build", "code": "worker_lost", "message": LOST}}
        await writer.emit(ev.BUILD_COMPLETED, payload)
    return True


async def _kill_leftovers(deps: WorkerDeps, stream_id: str) -> None:
    raw = await deps.redis.get(keys.step_process(stream_id))
    if raw is None:
        return
    host, _, pgid = raw.decode().partition(" ")
    if host == socket.gethostname() and pgid.isdigit() and int(pgid) > 1 and int(pgid) != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pgid), signal.SIGKILL)
    await deps.redis.delete(keys.step_process(stream_id))
