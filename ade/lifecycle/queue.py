"""The only module on the API side that knows arq: enqueue a job, then wake an idle worker at once."""

from __future__ import annotations

from arq.connections import ArqRedis

from ade.core import keys

EXECUTE_RUN = "execute_run"
EXECUTE_BUILD = "execute_build"


async def enqueue_run(pool: ArqRedis, run_id: str) -> None:
    await pool.enqueue_job(EXECUTE_RUN, run_id, _job_id=f"run:{run_id}", _queue_name=keys.QUEUE_NAME)
    await pool.publish(keys.QUEUE_WAKE_CHANNEL, run_id)


async def enqueue_build(pool: ArqRedis, build_id: str) -> None:
    await pool.enqueue_job(EXECUTE_BUILD, build_id, _job_id=f"build:{build_id}", _queue_name=keys.QUEUE_NAME)
    await pool.publish(keys.QUEUE_WAKE_CHANNEL, build_id)
