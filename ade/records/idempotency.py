"""`Idempotency-Key` on creating runs and builds: the same key and body within 24 h answer with the same
resource; the same key with another body is a 409. Keys are scoped to the caller and the endpoint."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from redis.asyncio import Redis

from ade.core import keys
from ade.core.errors import Conflict, Invalid

T = TypeVar("T")
TTL_S = 24 * 3600
_PENDING = ""


class Record(msgspec.Struct):
    body_sha256: str
    resource_id: str


_decoder = msgspec.json.Decoder(Record)


def scope_of(actor: str, endpoint: str, key: str | None) -> str | None:
    """Where a key's record lives (None without a key: the request is not idempotent)."""
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise Invalid("Idempotency-Key must be 1-200 printable characters", code="invalid_idempotency_key")
    return keys.idempotency(hashlib.sha256(f"{actor}\n{endpoint}\n{key}".encode()).hexdigest())


async def claim(redis: Redis, scope: str, body: bytes) -> str | None:
    """None: this request goes ahead and must `finish`. Otherwise the id created for the same key and body."""
    digest = hashlib.sha256(body).hexdigest()
    pending = msgspec.json.encode(Record(body_sha256=digest, resource_id=_PENDING))
    for _ in range(100):
        if await redis.set(scope, pending, nx=True, ex=TTL_S):
            return None
        raw = await redis.get(scope)
        if raw is None:
            continue
        record = _decoder.decode(raw)
        if record.body_sha256 != digest:
            raise Conflict("this Idempotency-Key was used with another body", code="idempotency_key_reused")
        if record.resource_id != _PENDING:
            return record.resource_id
        await asyncio.sleep(0.05)  # the first request with this key is still creating it
    raise Conflict("a request with this Idempotency-Key is still in progress", code="idempotency_in_progress")


async def finish(redis: Redis, scope: str, body: bytes, resource_id: str) -> None:
    record = Record(body_sha256=hashlib.sha256(body).hexdigest(), resource_id=resource_id)
    await redis.set(scope, msgspec.json.encode(record), ex=TTL_S)


async def abandon(redis: Redis, scope: str) -> None:
    """The create failed: let a retry with the same key go ahead."""
    await redis.delete(scope)


async def once(
    redis: Redis,
    scope: str | None,
    body: bytes,
    create: Callable[[], Awaitable[T]],
    fetch: Callable[[str], Awaitable[T]],
    ident: Callable[[T], str],
) -> T:
    """`create()` once per (scope, body); a repeat fetches what the first one made. No scope: just create."""
    if scope is None:
        return await create()
    existing = await claim(redis, scope, body)
    if existing is not None:
        return await fetch(existing)
    try:
        made = await create()
    except BaseException:
        await asyncio.shield(abandon(redis, scope))
        raise
    await finish(redis, scope, body, ident(made))
    return made
