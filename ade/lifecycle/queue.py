"""The one module that knows how runs and builds are queued in arq: enqueue a job (then wake an idle worker
at once), tell whether a job still exists, and where a job stands in the queue."""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from ade.core import keys
from ade.core.models import Run, Waiting

EXECUTE_RUN = "execute_run"
EXECUTE_BUILD = "execute_build"


def job_id(stream_id: str) -> str:
    """`run:<id>` or `build:<id>`: one job per run or build, so enqueueing twice is harmless."""
    return f"{stream_id.partition('_')[0]}:{stream_id}"


async def enqueue(redis: Redis, stream_id: str) -> None:
    """Queue a run's or a build's execution and nudge the workers."""
    pool = redis if isinstance(redis, ArqRedis) else ArqRedis(connection_pool=redis.connection_pool)
    function = EXECUTE_BUILD if stream_id.startswith("build_") else EXECUTE_RUN
    await pool.enqueue_job(function, stream_id, _job_id=job_id(stream_id), _queue_name=keys.QUEUE_NAME)
    await pool.publish(keys.QUEUE_WAKE_CHANNEL, stream_id)


async def job_exists(redis: Redis, stream_id: str) -> bool:
    """Whether a run's or build's job is waiting or being executed (False: expired or lost)."""
    found: int = await redis.exists(
        job_key_prefix + job_id(stream_id), in_progress_key_prefix + job_id(stream_id)
    )
    return found > 0


async def position(redis: Redis, stream_id: str) -> int | None:
    """1 for the next job a worker takes, 2 for the one after…; None if it is not waiting in the queue.
    (arq keeps a job in its queue while it runs, marked by an in-progress key: those are not ahead.)"""
    rank: int | None = await redis.zrank(keys.QUEUE_NAME, job_id(stream_id))
    if rank is None:
        return None
    ahead = [raw.decode() for raw in await redis.zrange(keys.QUEUE_NAME, 0, rank - 1)] if rank else []
    async with redis.pipeline(transaction=False) as pipe:
        for job in ahead:
            pipe.exists(in_progress_key_prefix + job)
        running: int = sum(await pipe.execute())
    return rank - running + 1


async def waiting_for(redis: Redis, run: Run) -> Waiting | None:
    """What a run that has not started waits for: its build, a worker, or its turn in the queue."""
    if run.status == "waiting_for_build":
        message = f"waiting for its environment build {run.build_id}"
        return Waiting(reason="build", message=message, build_id=run.build_id)
    if run.status != "queued":
        return None
    place = await position(redis, run.id)
    if not [key async for key in redis.scan_iter(match=keys.WORKER_PATTERN, count=100)]:
        return Waiting(reason="no_worker", message="no worker is running", queue_position=place)
    ahead = (
        "next in the queue" if place == 1 else f"number {place} in the queue" if place else "being picked up"
    )
    return Waiting(reason="queue", message=f"waiting for a free worker slot: {ahead}", queue_position=place)
