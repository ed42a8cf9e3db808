"""Builds: fingerprints, the one decision that makes concurrent requests share a build (reuse a ready one,
join the one being prepared, or create it), reuse records, cancel, and the build's stream writer."""

from __future__ import annotations

import asyncio
import hashlib
import platform
import subprocess
import sys
from functools import cache
from typing import Literal, cast

import msgspec
from arq.connections import ArqRedis
from redis.asyncio import Redis

from ade.core import ids, keys
from ade.core.errors import Conflict, NotFound
from ade.core.models import TERMINAL_BUILD_STATUSES, Build, BuildSpec, Configuration, utcnow
from ade.core.settings import Settings
from ade.events.envelope import StreamRef
from ade.events.writer import Identity, StreamWriter
from ade.lifecycle import queue, transitions
from ade.lifecycle.runs import signal_cancel
from ade.lifecycle.transitions import Recorder
from ade.records.store import Store

CONSTRUCTOR_VERSIONS = {"python": "1", "shell": "1", "docker": "1"}
ACTIVE_TTL_S = 24 * 3600  # a build that is never finished stops blocking its fingerprint after this
Mode = Literal["created", "joined", "reused"]


@cache
def interpreter(build_python: str) -> str:
    """`<path> <version>` of the interpreter python builds use; part of the fingerprint."""
    path = build_python or sys.executable
    if path == sys.executable:
        return f"{path} {platform.python_version()}"
    version = subprocess.run(
        [path, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    return f"{path} {version}"


def fingerprint(workspace_id: str, spec: BuildSpec, interpreter_id: str) -> str:
    """A hash over the canonical build spec (including the source artifact's digest), the interpreter and
    the constructor's version, within one workspace (environments are never shared across tenants)."""
    canonical = msgspec.json.encode(
        {
            "workspace_id": workspace_id,
            "spec": msgspec.to_builtins(spec),
            "interpreter": interpreter_id if spec.constructor == "python" else None,
            "constructor_version": CONSTRUCTOR_VERSIONS[spec.constructor],
        },
        order="sorted",
    )
    return hashlib.sha256(canonical).hexdigest()


def build_stream(settings: Settings, build_id: str) -> StreamRef:
    return StreamRef.for_build(settings.data_dir, build_id)


def build_writer(
    settings: Settings,
    redis: Redis,
    build: Build,
    *,
    acquire_timeout_s: float = 5.0,
    redact: list[str] | None = None,
) -> StreamWriter:
    return StreamWriter(
        redis,
        build_stream(settings, build.id),
        Identity(workspace_id=build.workspace_id, configuration_id=build.configuration_id, build_id=build.id),
        lease_ttl_s=settings.lease_ttl_s,
        fsync=settings.log_fsync,
        acquire_timeout_s=acquire_timeout_s,
        redact=redact or (),
    )


async def request_build(
    settings: Settings,
    redis: Redis,
    arq: ArqRedis,
    store: Store,
    cfg: Configuration,
    *,
    actor: str,
    force: bool,
    record_reuse: bool,
) -> tuple[Build, Mode]:
    """The build a configuration's environment comes from: a ready one with the same fingerprint (reused;
    with `record_reuse` a new build record says so), the one being prepared now (joined), or a new one."""
    assert cfg.build is not None
    interpreter_id = interpreter(settings.build_python)
    fp = fingerprint(cfg.workspace_id, cfg.build, interpreter_id)
    new_id = ids.new_id(ids.BUILD)
    raw_mode, raw_id = await store.scripts.claim_build(
        keys=[keys.build_ready(fp), keys.build_active(fp)], args=[new_id, "1" if force else "0", ACTIVE_TTL_S]
    )
    mode = cast(Mode, raw_mode.decode())
    build_id = raw_id.decode()
    if mode == "created":
        build = Build(
            id=build_id,
            workspace_id=cfg.workspace_id,
            configuration_id=cfg.id,
            fingerprint=fp,
            spec=cfg.build,
            status="queued",
            owner=actor,
            force=force,
            interpreter=interpreter_id,
            created_at=ids.created_at(build_id),
        )
        async with build_writer(settings, redis, build) as writer:
            await transitions.queue_build(Recorder(store, writer, "api"), build)
        await queue.enqueue(arq, build.id)
        return build, mode
    existing = await _get_build_soon(store, build_id)
    if mode == "joined" or not record_reuse:
        return existing, mode
    reuse = Build(
        id=new_id, workspace_id=cfg.workspace_id, configuration_id=cfg.id, fingerprint=fp, spec=cfg.build,
        status="queued", owner=actor, reused_from=existing.environment_build_id, interpreter=interpreter_id,
        created_at=ids.created_at(new_id), started_at=utcnow(),
    )  # fmt: skip
    async with build_writer(settings, redis, reuse) as writer:
        recorder = Recorder(store, writer, "api")
        await transitions.queue_build(recorder, reuse)
        await transitions.finish_build(recorder, reuse, "ready")
    return reuse, mode


async def _get_build_soon(store: Store, build_id: str) -> Build:
    """A build another request has just claimed may not be stored for a few milliseconds yet."""
    for _ in range(100):
        try:
            return await store.get_build(build_id)
        except NotFound:
            await asyncio.sleep(0.02)
    return await store.get_build(build_id)


async def cancel_build(settings: Settings, redis: Redis, store: Store, build: Build, actor: str) -> Build:
    """A queued build is cancelled at once; a building one is signalled like a running run."""
    if build.status in TERMINAL_BUILD_STATUSES:
        raise Conflict(f"build {build.id!r} already ended ({build.status})", code="build_finished")
    if build.status == "queued":
        try:
            async with build_writer(settings, redis, build, acquire_timeout_s=0.2) as writer:
                current = await store.get_build(build.id)
                if current.status == "queued":
                    recorder = Recorder(store, writer, "api")
                    await transitions.request_build_cancel(recorder, current, actor)
                    await transitions.finish_build(recorder, current, "cancelled", cancelled_by=actor)
                    return current
        except Conflict as exc:
            if exc.code != "stream_busy":
                raise
    await signal_cancel(redis, build.id, actor)
    return await store.get_build(build.id)
