"""Creating runs: the plan snapshot, the run directory, `run.queued` as sequence 1, then the queue."""

from __future__ import annotations

from pathlib import Path

from arq.connections import ArqRedis
from redis.asyncio import Redis

from ade import ids, queue
from ade.dispatcher import Identity, StreamWriter
from ade.events import RUN_QUEUED, StreamRef
from ade.models import Configuration, Plan, Run, RunCreate, utcnow
from ade.settings import Settings
from ade.store import Store

RUN_SUBDIRS = ("logs", "work", "inputs", "outputs")


def run_identity(run: Run) -> Identity:
    return Identity(workspace_id=run.workspace_id, configuration_id=run.configuration_id, run_id=run.id)


def plan_of(cfg: Configuration) -> Plan:
    return Plan(
        configuration_id=cfg.id,
        name=cfg.name,
        steps=list(cfg.steps),
        environment=dict(cfg.environment),
        timeout_s=cfg.timeout_s,
    )


def prepare_run_dir(run_dir: Path) -> None:
    for sub in RUN_SUBDIRS:
        (run_dir / sub).mkdir(parents=True, exist_ok=True)


async def create_run(
    settings: Settings, redis: Redis, arq: ArqRedis, store: Store, cfg: Configuration, body: RunCreate
) -> Run:
    run = Run(
        id=ids.new_id(ids.RUN),
        workspace_id=cfg.workspace_id,
        configuration_id=cfg.id,
        status="queued",
        plan=plan_of(cfg),
        commit=body.commit,
        created_at=utcnow(),
    )
    prepare_run_dir(store.run_dir(run.id))
    await store.put_run(run)
    stream = StreamRef.for_run(settings.data_dir, run.id)
    async with StreamWriter(
        redis, stream, run_identity(run), lease_ttl_s=settings.lease_ttl_s, fsync=settings.log_fsync
    ) as writer:
        await writer.emit(RUN_QUEUED, {"status": "queued", "attempt": run.attempt}, source="api")
    await queue.enqueue_run(arq, run.id)
    return run
