"""The arq worker: our task functions, plus a wake-up channel for millisecond pickup.

arq polls its queue every `poll_delay` (0.5 s by default). Polling faster would hammer Redis, so instead
the API publishes a nudge on `keys.QUEUE_WAKE_CHANNEL` after each enqueue and an idle worker polls at once;
the regular poll stays as the safety net for a missed nudge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from arq import func
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ade.core import keys
from ade.core.settings import Settings
from ade.events.hub import Hub
from ade.execution.deps import CancelSignals, WorkerDeps
from ade.execution.sandbox import choose_executor
from ade.lifecycle import queue
from ade.records.artifacts import ArtifactStore
from ade.records.store import Store
from workers import reaper, retention, tasks

log = logging.getLogger(__name__)

JOB_TIMEOUT_S = 7 * 24 * 3600  # runs enforce their own timeouts
HEARTBEAT_EVERY_S = 3.0


class WakeableWorker(Worker):
    """An arq Worker whose poll loop also wakes on a pub/sub nudge (no burst mode)."""

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        wake = asyncio.Event()
        listener = asyncio.create_task(self._listen(wake), name="queue-wake")
        try:
            while True:
                await self._poll_iteration()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.poll_delay_s)
                wake.clear()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self, wake: asyncio.Event) -> None:
        """Queue nudges wake the poll loop; cancel requests reach the run they name within milliseconds."""
        deps: WorkerDeps = self.ctx["deps"]
        loop = asyncio.get_running_loop()
        next_heartbeat = next_sweep = next_reap = 0.0
        sweeping: asyncio.Task[None] | None = None
        reaping: asyncio.Task[None] | None = None
        while True:
            pubsub = deps.redis.pubsub()
            try:
                await pubsub.subscribe(keys.QUEUE_WAKE_CHANNEL, keys.CANCEL_CHANNEL)
                await _recheck_cancels(deps)  # requests made while we were not listening
                while True:
                    if loop.time() >= next_heartbeat:
                        await deps.redis.set(keys.worker(deps.name), b"1", ex=keys.WORKER_TTL_S)
                        next_heartbeat = loop.time() + HEARTBEAT_EVERY_S
                    if loop.time() >= next_reap and (reaping is None or reaping.done()):
                        next_reap = loop.time() + max(deps.settings.lease_ttl_s / 2, 0.5)
                        reaping = asyncio.create_task(
                            _once_per_interval(
                                deps, keys.REAPER_LOCK, deps.settings.lease_ttl_s / 2, reaper.reap
                            )
                        )
                    if loop.time() >= next_sweep and (sweeping is None or sweeping.done()):
                        next_sweep = loop.time() + deps.settings.build_sweep_interval_s
                        interval_s = deps.settings.build_sweep_interval_s
                        sweeping = asyncio.create_task(
                            _once_per_interval(deps, keys.BUILD_SWEEP_LOCK, interval_s, retention.sweep)
                        )
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    if message["channel"] == keys.CANCEL_CHANNEL.encode():
                        deps.cancels.request(message["data"].decode())
                    else:
                        wake.set()
            except (RedisError, OSError) as exc:
                log.warning("wake-up listener lost Redis (%s); retrying", exc)
                await asyncio.sleep(0.5)
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
    except Exception:
        log.exception("%s failed", getattr(job, "__qualname__", job))


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
        redis = Redis.from_url(settings.redis_url)
        hub = Hub(
            Redis.from_url(settings.redis_url), subscriber_queue_events=settings.subscriber_queue_events
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
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
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
