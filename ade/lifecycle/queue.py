"""The one module that knows how runs and builds are queued in arq: enqueue a job (then wake an idle worker
at once), tell whether a job still exists, and where a job stands in the queue — and the fair share between
workspaces (DESIGN.md invariant 9).

**Fair share.** At most a workspace's cap of its runs (`Workspace.max_running_runs`, else
`ADE_MAX_RUNNING_PER_WORKSPACE`; 0: no cap) hold a *workspace slot* at once, across all workers: a Redis set
of run ids per workspace (`keys.workspace_running`). A worker about to spend one of its job slots on a run
first takes a workspace slot (`admit`, one Lua script). If the workspace is at its cap the run's job is
*parked* instead — pushed `PARK_S` into the future in arq's queue and noted in `keys.workspace_capped` — and
the worker goes on to the next job in the same poll: a run over its cap never holds a worker slot, so the slot
goes to a workspace under its cap. When a run ends (`transitions.finish_run`, on every path: worker, cancel,
reaper) its slot is given back (`give_back`), which makes the workspace's oldest parked run due at once and
nudges the workers: it starts within milliseconds. `PARK_S` is only the safety net. The slot is taken before
the run starts and held while it waits for its build. Builds are not capped.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from ade.core import keys
from ade.core.errors import NotFound
from ade.core.models import TERMINAL_RUN_STATUSES, Run, Waiting
from ade.core.settings import Settings
from ade.records.scripts import scripts_for
from ade.records.store import Store

EXECUTE_RUN = "execute_run"
EXECUTE_BUILD = "execute_build"
RUN_JOB_PREFIX = "run:"
PARK_S = 30.0  # a parked run's job comes due again by itself after this (normally a given-back slot wakes it)


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
    """What a run that has not started waits for: its build, its workspace's cap, a worker, or its turn in
    the queue."""
    if run.status == "waiting_for_build":
        message = f"waiting for its environment build {run.build_id}"
        return Waiting(reason="build", message=message, build_id=run.build_id)
    if run.status != "queued":
        return None
    if run.plan.runs_on:
        labels = ", ".join(run.plan.runs_on)
        if run.runner_id is not None:
            return Waiting(reason="runner", message=f"runner {run.runner_id} took it and is starting it")
        return Waiting(reason="runner", message=f"waiting for a runner with the labels {labels}")
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(keys.workspace_capped(run.workspace_id), run.id)
        pipe.scard(keys.workspace_running(run.workspace_id))
        pipe.get(keys.workspace_cap(run.workspace_id))
        pipe.sismember(keys.workspace_running(run.workspace_id), run.id)
        parked, holding, cap, has_slot = await pipe.execute()
    # Parked at the cap, or due while its workspace is at its cap (it will be parked): the cap is what it
    # waits for, whatever the worker slots. (A run holding a slot of its own is being picked up.)
    if parked is not None or (not has_slot and cap is not None and 0 < int(cap) <= holding):
        message = (
            f"{holding} of {cap.decode()} runs of this workspace are running"
            if cap
            else f"this workspace is at its cap: {holding} of its runs are running"
        )
        return Waiting(reason="workspace_cap", message=message)
    place = await position(redis, run.id)
    if not [key async for key in redis.scan_iter(match=keys.WORKER_PATTERN, count=100)]:
        return Waiting(reason="no_worker", message="no worker is running", queue_position=place)
    ahead = (
        "next in the queue" if place == 1 else f"number {place} in the queue" if place else "being picked up"
    )
    return Waiting(reason="queue", message=f"waiting for a free worker slot: {ahead}", queue_position=place)


# Fair share ---------------------------------------------------------------------------------------------


def cap_of(max_running_runs: int | None, default_cap: int) -> int:
    """A workspace's cap: its own, else the default (`ADE_MAX_RUNNING_PER_WORKSPACE`); 0 means none."""
    return default_cap if max_running_runs is None else max_running_runs


async def admit(store: Store, job: str, default_cap: int) -> bool:
    """Before a worker spends a job slot on `job`: True to start it, False if it was parked because its run's
    workspace is at its cap (the worker then goes on to the next job). A queued run takes one of its
    workspace's slots here; builds, and runs no longer queued (their task refuses them), pass untouched."""
    kind, _, run_id = job.partition(":")
    if f"{kind}:" != RUN_JOB_PREFIX:
        return True
    try:
        run = await store.get_run(run_id)
    except NotFound:
        return True
    if run.status != "queued":
        return True
    try:
        cap = cap_of((await store.get_workspace(run.workspace_id)).max_running_runs, default_cap)
    except NotFound:
        cap = default_cap
    now_ms = timestamp_ms()
    taken: int = await scripts_for(store.redis).take_slot(
        keys=[
            keys.workspace_running(run.workspace_id),
            keys.workspace_capped(run.workspace_id),
            keys.RUNNING_RUNS,
            keys.QUEUE_NAME,
            in_progress_key_prefix + job,
            keys.workspace_cap(run.workspace_id),
        ],
        args=[run.id, run.workspace_id, cap, job, now_ms, now_ms + int(PARK_S * 1000)],
    )
    return taken == 1


async def give_back(redis: Redis, run_id: str, workspace_id: str) -> None:
    """A run ended (or never needed its slot): its workspace slot is free again (idempotent). The
    workspace's oldest parked run becomes due at once, and the workers are nudged to take it."""
    woken: Any = await scripts_for(redis).give_back(
        keys=[
            keys.workspace_running(workspace_id),
            keys.workspace_capped(workspace_id),
            keys.RUNNING_RUNS,
            keys.QUEUE_NAME,
        ],
        args=[run_id, timestamp_ms(), RUN_JOB_PREFIX],
    )
    if woken:
        await redis.publish(keys.QUEUE_WAKE_CHANNEL, woken)


async def give_back_if_ended(store: Store, run_id: str) -> None:
    """After a run's task: a slot taken for a run that ended meanwhile (cancelled between `admit` reading it
    and taking the slot) is given back; a run that ended normally gave it back already (a no-op)."""
    try:
        run = await store.get_run(run_id)
    except NotFound:
        return
    if run.status in TERMINAL_RUN_STATUSES:
        await give_back(store.redis, run.id, run.workspace_id)


async def give_back_ended(redis: Redis) -> list[str]:
    """Slots still held by runs that ended (their end's bookkeeping never reached Redis) are given back;
    returns their ids. Run with the reaper."""
    holders: dict[bytes, bytes] = await redis.hgetall(keys.RUNNING_RUNS)  # type: ignore[misc]
    if not holders:
        return []
    run_ids = [raw.decode() for raw in holders]
    active = await redis.zmscore(keys.ACTIVE_STREAMS, run_ids)
    ended = [run_id for run_id, score in zip(run_ids, active, strict=True) if score is None]
    for run_id in ended:
        await give_back(redis, run_id, holders[run_id.encode()].decode())
    return ended


async def reconsider(redis: Redis, workspace_id: str) -> int:
    """A workspace's cap changed: every run parked at its old cap becomes due now (those still over the new
    cap park again) and the workers are nudged. Returns how many were parked."""
    parked: int = await scripts_for(redis).unpark_all(
        keys=[keys.workspace_capped(workspace_id), keys.QUEUE_NAME, keys.workspace_cap(workspace_id)],
        args=[timestamp_ms(), RUN_JOB_PREFIX],
    )
    if parked:
        await redis.publish(keys.QUEUE_WAKE_CHANNEL, workspace_id)
    return parked


# Runners ------------------------------------------------------------------------------------------------
# A run with `runs_on` is offered to runners instead of arq's queue: `offer` notes it (oldest first, with
# its workspace and labels); a runner's claim (`claim_offer`) takes the oldest run it may execute — one of a
# workspace it serves, whose labels it carries all of, whose workspace is under its cap (a slot is taken in
# the same script, as `admit` does for a worker). Nothing is parked: a capped run is simply passed over.
OFFERS_SCANNED = 200  # a claim looks at this many of the oldest offers


async def offer(redis: Redis, run: Run) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.RUNNER_OFFER_TERMS, run.id, " ".join([run.workspace_id, *run.plan.runs_on]))
        pipe.zadd(keys.RUNNER_OFFERS, {run.id: timestamp_ms()}, nx=True)
        await pipe.execute()


async def withdraw_offer(redis: Redis, run_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.RUNNER_OFFERS, run_id)
        pipe.hdel(keys.RUNNER_OFFER_TERMS, run_id)
        await pipe.execute()


async def is_offered(redis: Redis, run_id: str) -> bool:
    return await redis.zscore(keys.RUNNER_OFFERS, run_id) is not None


async def claim_offer(
    store: Store, settings: Settings, workspace_id: str | None, labels: set[str]
) -> str | None:
    """The id of the oldest offered run a runner serving `workspace_id` (None: every workspace) with
    `labels` may execute, now taken by it (with its workspace slot); None if there is none."""
    redis = store.redis
    run_ids = [raw.decode() for raw in await redis.zrange(keys.RUNNER_OFFERS, 0, OFFERS_SCANNED - 1)]
    if not run_ids:
        return None
    terms: list[bytes | None] = await redis.hmget(keys.RUNNER_OFFER_TERMS, run_ids)  # type: ignore[misc]
    caps: dict[str, int] = {}
    for run_id, raw in zip(run_ids, terms, strict=True):
        if raw is None:
            continue
        run_workspace, *wanted = raw.decode().split(" ")
        if (workspace_id is not None and run_workspace != workspace_id) or not set(wanted) <= labels:
            continue
        if run_workspace not in caps:
            try:
                own = (await store.get_workspace(run_workspace)).max_running_runs
            except NotFound:
                own = None
            caps[run_workspace] = cap_of(own, settings.max_running_per_workspace)
        taken: int = await scripts_for(redis).take_offer(
            keys=[
                keys.RUNNER_OFFERS,
                keys.RUNNER_OFFER_TERMS,
                keys.workspace_running(run_workspace),
                keys.RUNNING_RUNS,
            ],
            args=[run_id, run_workspace, caps[run_workspace]],
        )
        if taken == 1:
            return str(run_id)
    return None
