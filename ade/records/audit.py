"""The audit log: every mutation, with actor, workspace, action, target and details.

Durable like everything else: appended to `audit/<ws>.ndjson` in the data directory, then indexed in Redis.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import msgspec
from redis.asyncio import Redis

from ade.core import ids, keys, paths
from ade.core.models import AuditEntry, AuditPage, Pagination, utcnow

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AuditEntry)


class AuditLog:
    def __init__(self, redis: Redis, data_dir: Path) -> None:
        self._redis = redis
        self._dir = paths.audit_dir(data_dir)

    async def record(
        self, actor: str, workspace_id: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> AuditEntry:
        entry = AuditEntry(
            id=ids.new_id(ids.AUDIT),
            created_at=utcnow(),
            workspace_id=workspace_id,
            actor=actor,
            action=action,
            target=target,
            details=details or {},
        )
        line = _encoder.encode(entry)
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._dir / f"{workspace_id}.ndjson", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(keys.audit(workspace_id), line)
            pipe.rpush(keys.audit(None), line)
            await pipe.execute()
        return entry

    async def page(
        self, workspace_id: str | None, *, action: str | None, limit: int, offset: int
    ) -> AuditPage:
        """Newest first; `workspace_id=None` pages through every workspace's entries (bootstrap token)."""
        key = keys.audit(workspace_id)
        if action is None:
            total = await cast(Awaitable[int], self._redis.llen(key))
            # Newest first: index -1 - offset backwards.
            start, stop = -(offset + limit), -(offset + 1)
            raws = (
                list(reversed(await cast(Awaitable[list[bytes]], self._redis.lrange(key, start, stop))))
                if offset < total
                else []
            )
            entries = [_decoder.decode(raw) for raw in raws]
        else:
            matching = [
                e
                for e in map(
                    _decoder.decode, await cast(Awaitable[list[bytes]], self._redis.lrange(key, 0, -1))
                )
                if e.action == action
            ]
            matching.reverse()
            total = len(matching)
            entries = matching[offset : offset + limit]
        return AuditPage(
            audit_logs=entries,
            pagination=Pagination(
                total=total, limit=limit, offset=offset, has_more=offset + len(entries) < total
            ),
        )
