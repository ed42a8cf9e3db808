"""Metadata: Redis is the fast index, the data directory the durable copy (DESIGN.md invariant 6).

Every write goes to disk first (atomically: temp file + rename), then to Redis; where each record lives
in the data directory is `ade.core.paths`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio.to_thread
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ade.core import keys, paths
from ade.core.errors import Conflict, not_found
from ade.core.models import (
    TERMINAL_BUILD_STATUSES,
    TERMINAL_RUN_STATUSES,
    ApiKey,
    Build,
    Configuration,
    Run,
    Workspace,
)
from ade.records.scripts import scripts_for

T = TypeVar("T")
log = logging.getLogger(__name__)

REDIS_RETRY_S = 120.0  # how long a worker keeps retrying to index a status through a Redis outage

# What a Redis failure means when a record is written (the file in the data directory is always first):
# - all_or_nothing: the old file is put back and the error raised (an API request then changes nothing);
# - retry: the file stays (it is the truth) and indexing is retried through an outage (a run's end);
# - best_effort: the file stays and indexing is skipped if Redis fails (a step's progress; the next
#   write, or `ade reindex`, catches up).
Durability = Literal["all_or_nothing", "retry", "best_effort"]

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in (Workspace, Configuration, Run, ApiKey, Build)
}


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_if_present(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _replace(path: Path, data: bytes) -> bytes | None:
    """Write `data` at `path` atomically; what was there before (None: nothing)."""
    previous = _read_if_present(path)
    write_atomic(path, data)
    return previous


def _put_back(path: Path, previous: bytes | None) -> None:
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, previous)


def _track_activity(pipe: Any, stream_id: str, ended: bool) -> None:
    """`keys.ACTIVE_STREAMS` holds what has not ended, for the reaper."""
    if ended:
        pipe.zrem(keys.ACTIVE_STREAMS, stream_id)
    else:
        pipe.zadd(keys.ACTIVE_STREAMS, {stream_id: 0})


def index_run(pipe: Any, run: Run, data: bytes) -> None:
    """A run's Redis record and index entries (also used by `ade reindex`)."""
    pipe.set(keys.run(run.id), data)
    _track_activity(pipe, run.id, run.status in TERMINAL_RUN_STATUSES)
    pipe.zadd(keys.workspace_runs(run.workspace_id), {run.id: 0})
    pipe.zadd(keys.configuration_runs(run.configuration_id), {run.id: 0})
    pipe.zadd(keys.ALL_RUNS, {run.id: 0})


def index_build(pipe: Any, build: Build, data: bytes) -> None:
    """A build's Redis record and index entries (also used by `ade reindex`)."""
    pipe.set(keys.build(build.id), data)
    _track_activity(pipe, build.id, build.status in TERMINAL_BUILD_STATUSES)
    pipe.zadd(keys.configuration_builds(build.configuration_id), {build.id: 0})
    pipe.zadd(keys.workspace_builds(build.workspace_id), {build.id: 0})
    pipe.zadd(keys.ALL_BUILDS, {build.id: 0})


class Store:
    def __init__(self, redis: Redis, data_dir: Path) -> None:
        self.redis = redis
        self.data_dir = data_dir
        self.scripts = scripts_for(redis)
        # A record's lock, for as long as a write holds or waits for it.
        self._writing: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()

    @contextlib.asynccontextmanager
    async def _one_writer(self, path: Path) -> AsyncIterator[None]:
        """Writes of one record, in this process, one at a time: each writes the disk (in a thread) and
        then Redis, and two at once could land in either order."""
        async with self._writing.setdefault(path, asyncio.Lock()):
            yield

    # Generic -----------------------------------------------------------------------------------
    async def _get(
        self, cls: type[T], key: str, what: str, ident: str, path: Callable[[], Path] | None = None
    ) -> T:
        """From Redis; while Redis is unreachable, from the data directory (the durable copy, at `path()`:
        worked out only then, since building paths costs a hot read a good part of its time)."""
        try:
            raw = await self.redis.get(key)
        except (RedisConnectionError, RedisTimeoutError):
            raw = _read_if_present(path()) if path is not None and "/" not in ident else None
            if raw is None:
                raise
        if raw is None:
            raise not_found(what, ident)
        decoded: T = _decoders[cls].decode(raw)
        return decoded

    async def _put(self, key: str, path: Path, value: object, index: tuple[str, str] | None = None) -> None:
        data = _encoder.encode(value)
        async with self._written(path, data), self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, data)
            if index is not None:
                pipe.zadd(index[0], {index[1]: 0})
            await pipe.execute()

    @contextlib.asynccontextmanager
    async def _written(self, path: Path, data: bytes) -> AsyncIterator[None]:
        """Write the durable copy first; if indexing it fails, put the old copy back (nothing half-way). The
        disk work (an fsync) runs in a thread: the event loop goes on serving meanwhile."""
        previous = await anyio.to_thread.run_sync(_replace, path, data)
        try:
            yield
        except BaseException:
            await asyncio.shield(anyio.to_thread.run_sync(_put_back, path, previous))
            raise

    # Workspaces --------------------------------------------------------------------------------
    async def put_workspace(self, workspace: Workspace) -> None:
        account = workspace.account_id
        await self._put(
            keys.workspace(workspace.id),
            paths.workspace_record(self.data_dir, workspace.id),
            workspace,
            None if account is None else (keys.account_workspaces(account), workspace.id),
        )

    async def list_account_workspaces(self, account_id: str) -> list[Workspace]:
        """The workspaces of a build server account, oldest first."""
        ids = await self.redis.zrange(keys.account_workspaces(account_id), 0, -1)
        raws = await self.redis.mget([keys.workspace(i.decode()) for i in ids]) if ids else []
        return [_decoders[Workspace].decode(raw) for raw in raws if raw is not None]

    async def get_workspace(self, workspace_id: str) -> Workspace:
        path = partial(paths.workspace_record, self.data_dir, workspace_id)
        return await self._get(Workspace, keys.workspace(workspace_id), "workspace", workspace_id, path)

    # Configurations ----------------------------------------------------------------------------
    async def put_configuration(self, cfg: Configuration) -> None:
        await self._put(
            keys.configuration(cfg.id),
            paths.configuration_record(self.data_dir, cfg.id),
            cfg,
            (keys.workspace_configurations(cfg.workspace_id), cfg.id),
        )

    async def get_configuration(self, configuration_id: str) -> Configuration:
        return await self._get(
            Configuration,
            keys.configuration(configuration_id),
            "configuration",
            configuration_id,
            partial(paths.configuration_record, self.data_dir, configuration_id),
        )

    async def list_configurations(self, workspace_id: str) -> list[Configuration]:
        ids = await self.redis.zrange(keys.workspace_configurations(workspace_id), 0, -1)
        if not ids:
            return []
        raws = await self.redis.mget([keys.configuration(i.decode()) for i in ids])
        return [_decoders[Configuration].decode(raw) for raw in raws if raw is not None]

    async def delete_configuration(self, cfg: Configuration) -> None:
        paths.configuration_record(self.data_dir, cfg.id).unlink(missing_ok=True)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.configuration(cfg.id))
            pipe.zrem(keys.workspace_configurations(cfg.workspace_id), cfg.id)
            await pipe.execute()

    # API keys ----------------------------------------------------------------------------------
    async def put_api_key(self, key: ApiKey) -> None:
        await self._put(
            keys.api_key(key.id),
            paths.api_key_record(self.data_dir, key.id),
            key,
            (keys.workspace_api_keys(key.workspace_id), key.id),
        )

    async def find_api_key(self, key_id: str) -> ApiKey | None:
        raw = await self.redis.get(keys.api_key(key_id))
        return None if raw is None else _decoders[ApiKey].decode(raw)

    async def list_api_keys(self, workspace_id: str) -> list[ApiKey]:
        ids = await self.redis.zrange(keys.workspace_api_keys(workspace_id), 0, -1)
        raws = await self.redis.mget([keys.api_key(i.decode()) for i in ids]) if ids else []
        return [_decoders[ApiKey].decode(raw) for raw in raws if raw is not None]

    # Runs ----------------------------------------------------------------------------------------
    async def put_run(self, run: Run, *, durability: Durability = "all_or_nothing") -> None:
        """Persist a run (run.json first, atomically), then index it in Redis (see `Durability`)."""
        data = _encoder.encode(run)
        path = paths.run_dir(self.data_dir, run.id).record
        await self._persist(path, data, lambda pipe: index_run(pipe, run, data), durability)

    async def _persist(
        self, path: Path, data: bytes, index: Callable[[Any], None], durability: Durability
    ) -> None:
        async def write_index() -> None:
            async with self.redis.pipeline() as pipe:
                index(pipe)
                await pipe.execute()

        async with self._one_writer(path):
            if durability == "all_or_nothing":
                async with self._written(path, data):
                    await write_index()
                return
            await anyio.to_thread.run_sync(write_atomic, path, data)
            await self._indexed(path, write_index, durability)

    async def _indexed(
        self, path: Path, write_index: Callable[[], Awaitable[None]], durability: Durability
    ) -> None:
        if durability == "retry":
            await self.retrying(write_index)
            return
        try:
            await write_index()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning(
                "indexing %s skipped (%s); the next write or `ade reindex` catches up", path.name, exc
            )

    async def retrying(self, call: Callable[[], Awaitable[T]], retry_s: float = REDIS_RETRY_S) -> T:
        """`call`, retried with backoff while Redis is unreachable, for up to `retry_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_s
        backoff_s = 0.05
        while True:
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)

    async def get_run(self, run_id: str) -> Run:
        return await self._get(
            Run, keys.run(run_id), "run", run_id, lambda: paths.run_dir(self.data_dir, run_id).record
        )

    async def resolve_run_id(self, ident: str, workspace_id: str | None) -> str:
        index = keys.workspace_runs(workspace_id) if workspace_id else keys.ALL_RUNS
        return await self._resolve_id("run", keys.run, index, ident)

    async def resolve_build_id(self, ident: str, workspace_id: str | None) -> str:
        index = keys.workspace_builds(workspace_id) if workspace_id else keys.ALL_BUILDS
        return await self._resolve_id("build", keys.build, index, ident)

    async def _resolve_id(self, kind: str, key_of: Callable[[str], str], index: str, ident: str) -> str:
        """An exact id, or a unique prefix of one (at least 8 characters after `<kind>_`) among the ids the
        caller can see (`index`). An ambiguous prefix is a 409 naming the candidates."""
        try:
            if await self.redis.exists(key_of(ident)):
                return ident
        except (RedisConnectionError, RedisTimeoutError):
            return ident  # exact ids only while Redis is unreachable (reads fall back to the disk)
        head = f"{kind}_"
        prefix = head + ident.removeprefix(head).upper()
        if not ident.startswith(head) or len(prefix) < len(head) + 8:
            raise not_found(kind, ident)
        found = await self.redis.zrangebylex(index, f"[{prefix}", f"[{prefix}\xff", start=0, num=11)
        candidates = [raw.decode() for raw in found]
        if not candidates:
            raise not_found(kind, ident)
        if len(candidates) > 1:
            raise Conflict(
                f"{kind} id prefix {ident!r} is ambiguous",
                code="ambiguous_id",
                details=[{"candidates": candidates[:10]}],
            )
        return str(candidates[0])

    async def page_runs(self, index: str, *, limit: int, offset: int) -> tuple[list[Run], int]:
        """Runs of a lexical index by position, newest first: (the page, how many the index holds)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(index)
            pipe.zrevrange(index, offset, offset + limit - 1)
            total, ids = await pipe.execute()
        raws = await self.redis.mget([keys.run(i.decode()) for i in ids]) if ids else []
        return [_decoders[Run].decode(raw) for raw in raws if raw is not None], int(total)

    async def list_runs(
        self,
        index: str,
        *,
        limit: int,
        before: str | None = None,
        after: str | None = None,
        lowest: str = "-",
        highest: str = "+",
        keep: Callable[[Run], bool] = lambda run: True,
    ) -> tuple[list[Run], bool]:
        """A page of runs from a lexical index, newest first, and whether more lie beyond it.

        `before`: runs older than that id (the next page); `after`: runs newer than it (the previous page).
        `lowest`/`highest` are lexical bounds (`-`, `+`, or `[id`; ULIDs start with their creation time).
        """
        newest_first = after is None
        if newest_first:
            upper = f"({before}" if before else highest
            bound = lowest
        else:
            upper = f"({after}"
            bound = highest
        found: list[Run] = []
        batch = max(limit * 2, 50)
        while len(found) <= limit:
            if newest_first:
                ids = await self.redis.zrevrangebylex(index, upper, bound, start=0, num=batch)
            else:
                ids = await self.redis.zrangebylex(index, upper, bound, start=0, num=batch)
            if not ids:
                break
            raws = await self.redis.mget([keys.run(i.decode()) for i in ids])
            for raw_id, raw in zip(ids, raws, strict=True):
                upper = f"({raw_id.decode()}"
                if raw is not None and keep(run := _decoders[Run].decode(raw)):
                    found.append(run)
                    if len(found) > limit:
                        break
            if len(ids) < batch:
                break
        more = len(found) > limit
        page = found[:limit]
        return (page if newest_first else page[::-1]), more

    # Builds --------------------------------------------------------------------------------------
    async def put_build(self, build: Build, *, durability: Durability = "all_or_nothing") -> None:
        """Persist a build (build.json first, atomically), then index it (see `put_run`)."""
        data = _encoder.encode(build)
        path = paths.build_dir(self.data_dir, build.id).record
        await self._persist(path, data, lambda pipe: index_build(pipe, build, data), durability)

    async def get_build(self, build_id: str) -> Build:
        return await self._get(
            Build,
            keys.build(build_id),
            "build",
            build_id,
            lambda: paths.build_dir(self.data_dir, build_id).record,
        )

    async def list_builds(self, index: str, *, limit: int, before: str | None = None) -> list[Build]:
        """Newest first."""
        upper = f"({before}" if before else "+"
        ids = await self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit)
        raws = await self.redis.mget([keys.build(i.decode()) for i in ids]) if ids else []
        return [_decoders[Build].decode(raw) for raw in raws if raw is not None]
