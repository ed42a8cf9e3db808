"""The arq worker: our task functions, plus a wake-up channel for millisecond pickup.

arq polls its queue every `poll_delay` (ADE_POLL_DELAY_S, 1 s here). Polling faster would hammer Redis, so
the API publishes a nudge on `keys.QUEUE_WAKE_CHANNEL` after each enqueue and an idle worker polls at once;
the regular poll stays as the safety net for a missed nudge.

Fair share (DESIGN.md invariant 9): before a job takes a job slot, a run takes one of its workspace's slots
(`queue.admit`); a run whose workspace is at its cap is parked in the queue instead, and the worker goes on
to the next job, so a free slot goes to a workspace under its cap.

A worker never exits because Redis is unreachable (DESIGN.md §2 invariant 5): it starts without it, and
its poll loop, wake-up listener and job bookkeeping wait and retry with backoff (one log line per outage,
see `ade.core.outage`) while running steps go on writing their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from arq import func
from arq.constants import in_progress_key_prefix
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ade.core import keys
from ade.core.outage import REDIS, Backoff, arq_pool
from ade.core.settings import Settings
from ade.events.hub import Hub
from ade.execution.deps import CancelSignals, WorkerDeps
from ade.execution.sandbox import choose_executor
from ade.lifecycle import queue
from ade.records.artifacts import ArtifactStore
from ade.records.store import REDIS_RETRY_S, Store
from workers import reaper, retention, tasks

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 7 * 24 * 3600  # runs enforce their own timeouts
HEARTBEAT_EVERY_S = 3.0
CONNECT_TIMEOUT_S = 5.0  # a Redis that does not answer at all (a partition) must not stall a step's output


class WakeableWorker(Worker):
    """An arq Worker whose poll loop also wakes on a pub/sub nudge (no burst mode), and that lives through
    Redis outages: arq's own loop ends at the first failed Redis call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_job_start = self._job_starting
        self._jobs_begun: set[str] = set()  # jobs whose function was called
        self._wake = asyncio.Event()  # poll now (a nudge, or more due jobs behind parked ones)

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        log.info("worker %s started with %d job slots", self.ctx["deps"].name, self.max_jobs)
        wake = self._wake
        listener = asyncio.create_task(self._listen(wake), name="queue-wake")
        backoff = Backoff()
        try:
            while True:
                try:
                    await self._poll_iteration()
                except (RedisError, OSError) as exc:
                    REDIS.lost(exc, "the worker polling its queue")
                    await backoff.sleep()
                    continue
                backoff.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_delay_s)
                wake.clear()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's, one job at a time, behind the fair share: a run whose workspace is at its cap is parked
        without taking a job slot (`queue.admit`), and the next job gets the slot. When Redis fails while arq
        marks a job in progress, arq has already counted it as running; give that slot back (else every
        outage would leak worker slots)."""
        deps: WorkerDeps = self.ctx["deps"]
        parked = False
        for job_id in job_ids:
            if self.job_counter >= self.max_jobs:
                return
            if not await queue.admit(deps.store, job_id.decode(), deps.settings.max_running_per_workspace):
                parked = True
                continue
            before = self.tasks.get(job_id.decode())
            try:
                await super().start_jobs([job_id])
            except (RedisError, OSError):
                if self.tasks.get(job_id.decode()) is before:
                    self.job_counter -= 1
                    self.sem.release()
                raise
        if parked and len(job_ids) >= self.queue_read_limit:
            self._wake.set()  # this read was full and slots are free: more jobs may be due behind it

    async def _job_starting(self, ctx: dict[str, Any]) -> None:
        self._jobs_begun.add(ctx["job_id"])

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's; if Redis failed before the job's function was called, let the job be picked up again
        (arq marked it in progress for as long as its timeout, a week)."""
        try:
            await super().run_job(job_id, score)
        except (RedisError, OSError) as exc:
            REDIS.lost(exc, f"starting job {job_id}")
            if job_id not in self._jobs_begun:
                await self._until_redis_answers(
                    f"putting job {job_id} back", partial(self.pool.delete, in_progress_key_prefix + job_id)
                )
        finally:
            self._jobs_begun.discard(job_id)

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        """arq's, retried through an outage: a job whose end is not recorded would stay in the queue."""
        await self._until_redis_answers("recording a job's end", partial(super().finish_job, *args, **kwargs))

    async def finish_failed_job(self, *args: Any, **kwargs: Any) -> None:
        await self._until_redis_answers(
            "recording a job's end", partial(super().finish_failed_job, *args, **kwargs)
        )

    async def _until_redis_answers(self, doing: str, call: Callable[[], Awaitable[object]]) -> None:
        deadline = asyncio.get_running_loop().time() + REDIS_RETRY_S
        backoff = Backoff()
        while True:
            try:
                await call()
                return
            except (RedisError, OSError) as exc:
                REDIS.lost(exc, doing)
                if asyncio.get_running_loop().time() >= deadline:
                    log.error("gave up %s after %.0f s without Redis", doing, REDIS_RETRY_S)
                    return
                await backoff.sleep()

    async def close(self) -> None:
        """arq's, without failing when Redis is gone at shutdown."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.close(close_connection_pool=True)
        self._pool = None

    async def _listen(self, wake: asyncio.Event) -> None:
        """Queue nudges wake the poll loop; cancel requests reach the run they name within milliseconds."""
        deps: WorkerDeps = self.ctx["deps"]
        loop = asyncio.get_running_loop()
        next_heartbeat = next_sweep = next_reap = 0.0
        sweeping: asyncio.Task[None] | None = None
        reaping: asyncio.Task[None] | None = None
        backoff = Backoff()
        while True:
            pubsub = deps.redis.pubsub()
            try:
                await pubsub.subscribe(keys.QUEUE_WAKE_CHANNEL, keys.CANCEL_CHANNEL)
                await _recheck_cancels(deps)  # requests made while we were not listening
                REDIS.reachable()
                backoff.reset()
                wake.set()  # and a nudge may have been missed: poll now
                while True:
                    if loop.time() >= next_heartbeat:
                        await deps.redis.set(keys.worker(deps.name), b"1", ex=keys.WORKER_TTL_S)
                        next_heartbeat = loop.time() + HEARTBEAT_EVERY_S
                    if loop.time() >= next_reap and (reaping is None or reaping.done()):
                        next_reap = loop.time() + max(deps.settings.lease_ttl_s / 2, 0.5)
                        reaping = asyncio.create_task(
                            _once_per_interval(deps, keys.REAPER_LOCK, deps.settings.lease_ttl_s / 2, _reap)
                        )
                    if loop.time() >= next_sweep and (sweeping is None or sweeping.done()):
                        next_sweep = loop.time() + deps.settings.build_sweep_interval_s
                        interval_s = deps.settings.build_sweep_interval_s
                        sweeping = asyncio.create_task(
                            _once_per_interval(deps, keys.BUILD_SWEEP_LOCK, interval_s, retention.sweep)
                        )
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    REDIS.reachable()
                    if message is None:
                        continue
                    if message["channel"] == keys.CANCEL_CHANNEL.encode():
                        deps.cancels.request(message["data"].decode())
                    else:
                        wake.set()
            except (RedisError, OSError) as exc:
                REDIS.lost(exc, "the worker listening for wake-ups")
                await backoff.sleep()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _once_per_interval(
    deps: WorkerDeps, lock: str, interval_s: float, job: Callable[[WorkerDeps], Awaitable[object]]
) -> None:
    """Run `job` if this worker wins the interval's lock (one worker per interval does it)."""
    try:
        if await deps.redis.set(lock, deps.name, nx=True, px=max(int(interval_s * 1000), 100)):
            await job(deps)
    except (RedisError, OSError) as exc:
        REDIS.lost(exc, getattr(job, "__qualname__", str(job)))  # the next interval tries again
    except Exception:
        log.exception("%s failed", getattr(job, "__qualname__", job))


async def _reap(deps: WorkerDeps) -> None:
    """The reaper, then the fair share's safety net: workspace slots still held by runs that ended (their
    end could not give them back, e.g. Redis was down for longer than a worker retries) are given back."""
    await reaper.reap(deps)
    given_back = await queue.give_back_ended(deps.redis)
    if given_back:
        log.warning("gave back the workspace slots of ended runs: %s", ", ".join(given_back))


async def _recheck_cancels(deps: WorkerDeps) -> None:
    for run_id in deps.cancels.running:
        if await deps.redis.exists(keys.run_cancel(run_id)):
            deps.cancels.request(run_id)


def build_worker(
    settings: Settings, *, concurrency: int | None = None, handle_signals: bool = True
) -> Worker:
    name = f"{socket.gethostname()}:{os.getpid()}"

    async def startup(ctx: dict[str, Any]) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        await choose_executor(settings)  # refuses an unusable ADE_EXECUTOR; warns loudly about `host`
        redis = Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S)
        hub = Hub(
            Redis.from_url(settings.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S),
            subscriber_queue_events=settings.subscriber_queue_events,
        )
        await hub.start()
        ctx["deps"] = WorkerDeps(
            settings=settings,
            redis=redis,
            store=Store(redis, settings.data_dir),
            artifacts=ArtifactStore(redis, settings.data_dir),
            name=name,
            cancels=CancelSignals(),
            hub=hub,
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        deps: WorkerDeps = ctx["deps"]
        with contextlib.suppress(RedisError, OSError):
            await deps.redis.delete(keys.worker(deps.name))
        await deps.hub.stop()
        await deps.redis.aclose()

    return WakeableWorker(
        functions=[
            func(tasks.execute_run, name=queue.EXECUTE_RUN, timeout=JOB_TIMEOUT_S, max_tries=1),
            func(tasks.execute_build, name=queue.EXECUTE_BUILD, timeout=JOB_TIMEOUT_S, max_tries=1),
        ],
        queue_name=keys.QUEUE_NAME,
        # Connects on first use: the worker starts, and waits, while Redis is down.
        redis_pool=arq_pool(settings.redis_url, queue_name=keys.QUEUE_NAME),
        max_jobs=concurrency or settings.worker_concurrency,
        poll_delay=settings.poll_delay_s,
        keep_result=0,
        on_startup=startup,
        on_shutdown=shutdown,
        handle_signals=handle_signals,
        # SIGTERM: stop taking jobs, let running steps finish this long, then cancel them (they end
        # `failed` / `worker_lost`, their process groups killed).
        job_completion_wait=max(int(settings.worker_shutdown_grace_s), 1),
    )
