"""`ade reindex`: rebuild every Redis record and index from the data directory, which is the durable copy
(DESIGN.md invariant 6) — after a FLUSHALL, or a Redis that lost its data."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis

from ade.core import keys, paths
from ade.core.models import (
    TERMINAL_RUN_STATUSES,
    ApiKey,
    AuditEntry,
    Build,
    Configuration,
    DockerImage,
    Run,
    Runner,
    Workspace,
)
from ade.records.artifacts import ArtifactStore
from ade.records.images import count_slug_uses, index_image
from ade.records.runners import index_runner
from ade.records.store import index_build, index_run

T = TypeVar("T")
_BATCH = 500


@dataclass
class Counts:
    workspaces: int = 0
    configurations: int = 0
    api_keys: int = 0
    runs: int = 0
    builds: int = 0
    audit_entries: int = 0
    artifacts: int = 0
    docker_images: int = 0
    runners: int = 0
    unreadable: list[str] = field(default_factory=list)


def _records(paths: Iterator[Path], cls: type[T], counts: Counts) -> Iterator[tuple[T, bytes]]:
    decoder = msgspec.json.Decoder(cls)
    for path in sorted(paths):
        try:
            data = path.read_bytes()
            yield decoder.decode(data), data
        except (OSError, msgspec.DecodeError):
            counts.unreadable.append(str(path))


async def reindex(redis: Redis, data_dir: Path) -> Counts:
    counts = Counts()
    pipe: Any = redis.pipeline(transaction=False)
    pending = 0

    async def flush(force: bool = False) -> None:
        nonlocal pending, pipe
        if pending and (force or pending >= _BATCH):
            await pipe.execute()
            pipe = redis.pipeline(transaction=False)
            pending = 0

    for workspace, data in _records(paths.workspaces_dir(data_dir).glob("*.json"), Workspace, counts):
        pipe.set(keys.workspace(workspace.id), data)
        if workspace.account_id is not None:
            pipe.zadd(keys.account_workspaces(workspace.account_id), {workspace.id: 0})
        counts.workspaces += 1
        pending += 1
    for cfg, data in _records(paths.configurations_dir(data_dir).glob("*.json"), Configuration, counts):
        pipe.set(keys.configuration(cfg.id), data)
        pipe.zadd(keys.workspace_configurations(cfg.workspace_id), {cfg.id: 0})
        counts.configurations += 1
        pending += 1
    for key, data in _records(paths.api_keys_dir(data_dir).glob("*.json"), ApiKey, counts):
        pipe.set(keys.api_key(key.id), data)
        pipe.zadd(keys.workspace_api_keys(key.workspace_id), {key.id: 0})
        counts.api_keys += 1
        pending += 1
    slug_uses: Counter[str] = Counter()
    for image, data in _records(paths.docker_images_dir(data_dir).glob("*.json"), DockerImage, counts):
        index_image(pipe, image, data)
        slug_uses[image.slug] += 1
        counts.docker_images += 1
        pending += 1
        await flush()
    for runner, data in _records(paths.runners_dir(data_dir).glob("*.json"), Runner, counts):
        index_runner(pipe, runner, data)
        counts.runners += 1
        pending += 1
        await flush()
    await flush(force=True)
    await count_slug_uses(redis, dict(slug_uses))

    attempts: dict[str, int] = defaultdict(int)
    for run, data in _records(paths.runs_dir(data_dir).glob(f"*/{paths.RUN_RECORD}"), Run, counts):
        index_run(pipe, run, data)
        attempts[run.original_run_id or run.id] = max(attempts[run.original_run_id or run.id], run.attempt)
        if run.build_id and run.status not in TERMINAL_RUN_STATUSES:
            pipe.sadd(keys.build_users(run.build_id), run.id)
        if run.status in ("running", "waiting_for_build"):  # it holds a slot of its workspace's fair share
            pipe.sadd(keys.workspace_running(run.workspace_id), run.id)
            pipe.hset(keys.RUNNING_RUNS, run.id, run.workspace_id)
        counts.runs += 1
        pending += 1
        await flush()
    for original, attempt in attempts.items():
        if attempt > 1:
            pipe.set(keys.run_attempts(original), attempt)
    ready: dict[str, Build] = {}
    for build, data in _records(paths.builds_dir(data_dir).glob(f"*/{paths.BUILD_RECORD}"), Build, counts):
        index_build(pipe, build, data)
        if (
            build.status == "ready"
            and build.reused_from is None
            and paths.build_dir(data_dir, build.id).ready_marker.exists()
        ):
            newest = ready.get(build.fingerprint)
            if newest is None or build.id > newest.id:
                ready[build.fingerprint] = build
        counts.builds += 1
        pending += 1
        await flush()
    for fingerprint, build in ready.items():
        pipe.set(keys.build_ready(fingerprint), build.id)
    await flush(force=True)

    everything: list[tuple[str, bytes]] = []
    for path in sorted(paths.audit_dir(data_dir).glob("*.ndjson")):
        workspace_id = path.stem
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        await redis.delete(keys.audit(workspace_id))
        for start in range(0, len(lines), _BATCH):
            await redis.rpush(keys.audit(workspace_id), *lines[start : start + _BATCH])  # type: ignore[misc]
        decoder = msgspec.json.Decoder(AuditEntry)
        everything += [(decoder.decode(line).id, line) for line in lines]
        counts.audit_entries += len(lines)
    await redis.delete(keys.audit(None))
    everything.sort()  # ids are ULIDs: time order across workspaces
    for start in range(0, len(everything), _BATCH):
        await redis.rpush(keys.audit(None), *[line for _, line in everything[start : start + _BATCH]])  # type: ignore[misc]
    counts.artifacts = await ArtifactStore(redis, data_dir).reindex()
    return counts
