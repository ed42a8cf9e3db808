"""Registered runners: remote executors that pull work over HTTP with a token of their own.

A runner belongs to one workspace, or to none (a global runner, registered with the bootstrap token, serves
every workspace). Its record is `runners/<id>.json` first, then Redis (like `records.store`); its token,
`rnr.<runner id>.<secret>`, is shown once and stored as a SHA-256 hash. Heartbeats are Redis only — each
runner sends one a second — in one hash (`keys.RUNNER_HEARTBEATS`) that every read of a runner joins in,
so `Runner.last_heartbeat_at` and `Runner.current_runs` are always the latest.

Plain functions over a `Store`; the HTTP side is `ade.api.runners`, the runner's own requests are the runner
protocol's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec

from ade.core import ids, keys, paths
from ade.core.errors import Invalid, Unauthorized, not_found
from ade.core.models import Runner, RunnerCreate, utcnow
from ade.records.store import Store, write_atomic

TOKEN_PREFIX = "rnr"  # a runner token: `rnr.<runner id>.<secret>`
ID_PATTERN = re.compile(rf"^{ids.RUNNER}_[0-9A-HJKMNP-TV-Z]{{26}}$")
INVALID_TOKEN = "invalid or revoked runner token"  # the one answer for unknown, revoked and malformed tokens
# Audit entries about global runners (they belong to no workspace) go under this name: the bootstrap
# token's `GET /audit-logs` shows them.
GLOBAL_AUDIT_SCOPE = "global"

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Runner)


class Heartbeat(msgspec.Struct, array_like=True):
    """What `keys.RUNNER_HEARTBEATS` holds for a runner: when it last reported, and its runs then."""

    at: float  # seconds since the epoch
    runs: list[str]


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def is_runner_token(secret: str) -> bool:
    return secret.startswith(f"{TOKEN_PREFIX}.")


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(runner_id: str) -> str:
    return f"{TOKEN_PREFIX}.{runner_id}.{secrets.token_urlsafe(32)}"


def _runner_id_of(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == TOKEN_PREFIX and ID_PATTERN.match(parts[1]):
        return parts[1]
    return None


def _index_key(runner: Runner) -> str:
    return keys.workspace_runners(runner.workspace_id) if runner.workspace_id else keys.GLOBAL_RUNNERS


def index_runner(pipe: Any, runner: Runner, data: bytes) -> None:
    """A runner's Redis record and index entries (also used by `ade reindex`)."""
    pipe.set(keys.runner(runner.id), data)
    pipe.zadd(_index_key(runner), {runner.id: 0})
    pipe.zadd(keys.ALL_RUNNERS, {runner.id: 0})


def decode_record(data: bytes) -> Runner:
    return _decoder.decode(data)


async def _save(store: Store, runner: Runner) -> None:
    """The record (without the heartbeat, which is Redis only) to its file, then Redis; if Redis fails,
    the previous file is put back and the error raised (nothing changes)."""
    stored = msgspec.structs.replace(runner, last_heartbeat_at=None, current_runs=[])
    data = _encoder.encode(stored)
    path = paths.runner_record(store.data_dir, runner.id)
    previous = path.read_bytes() if path.is_file() else None
    write_atomic(path, data)
    try:
        async with store.redis.pipeline(transaction=True) as pipe:
            index_runner(pipe, stored, data)
            await pipe.execute()
    except BaseException:
        if previous is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, previous)
        raise


def _with_heartbeat(runner: Runner, raw: bytes | None) -> Runner:
    if raw is None:
        return runner
    try:
        beat = _heartbeat_decoder.decode(raw)
    except msgspec.DecodeError:
        return runner
    runner.last_heartbeat_at = datetime.fromtimestamp(beat.at, UTC)
    runner.current_runs = beat.runs
    return runner


def validated(name: str, labels: list[str]) -> RunnerCreate:
    """A runner's name and labels, checked as the API checks them (`Invalid` otherwise); repeated labels
    are kept once."""
    try:
        body = msgspec.convert({"name": name, "labels": labels}, RunnerCreate)
    except msgspec.ValidationError as exc:
        raise Invalid(f"invalid runner: {exc}", details=[{"message": str(exc)}]) from exc
    return RunnerCreate(name=body.name, labels=list(dict.fromkeys(body.labels)))


async def register(
    store: Store, workspace_id: str | None, name: str, labels: list[str], created_by: str
) -> tuple[Runner, str]:
    """A new runner and its token (shown once: only its hash is kept); `workspace_id=None`: a global
    runner. `Invalid` for a bad name or labels (nothing is stored then)."""
    body = validated(name, labels)
    runner_id = ids.new_id(ids.RUNNER)
    token = _new_token(runner_id)
    runner = Runner(
        id=runner_id,
        workspace_id=workspace_id,
        name=body.name,
        labels=body.labels,
        created_at=utcnow(),
        created_by=created_by,
        token_sha256=token_sha256(token),
    )
    await _save(store, runner)
    return runner, token


async def _find(store: Store, runner_id: str) -> Runner | None:
    if not ID_PATTERN.match(runner_id):
        return None
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.get(keys.runner(runner_id))
        pipe.hget(keys.RUNNER_HEARTBEATS, runner_id)
        raw, beat = await pipe.execute()
    return None if raw is None else _with_heartbeat(_decoder.decode(raw), beat)


async def get(store: Store, runner_id: str) -> Runner:
    """A runner by id, with its last heartbeat; `NotFound` (`runner_not_found`) if there is none."""
    runner = await _find(store, runner_id)
    if runner is None:
        raise not_found("runner", runner_id)
    return runner


async def _many(store: Store, index_keys: list[str], include_revoked: bool) -> list[Runner]:
    found: set[str] = set()
    for index in index_keys:
        found.update(raw.decode() for raw in await store.redis.zrange(index, 0, -1))
    runner_ids = sorted(found)  # ids are ULIDs: oldest first
    if not runner_ids:
        return []
    async with store.redis.pipeline(transaction=False) as pipe:
        pipe.mget([keys.runner(runner_id) for runner_id in runner_ids])
        pipe.hmget(keys.RUNNER_HEARTBEATS, runner_ids)
        raws, beats = await pipe.execute()
    runners = [
        _with_heartbeat(_decoder.decode(raw), beat)
        for raw, beat in zip(raws, beats, strict=True)
        if raw is not None
    ]
    return [runner for runner in runners if include_revoked or runner.revoked_at is None]


async def list_for_workspace(
    store: Store, workspace_id: str, *, include_revoked: bool = False
) -> list[Runner]:
    """The runners that may serve a workspace: its own and the global ones, oldest first."""
    return await _many(store, [keys.workspace_runners(workspace_id), keys.GLOBAL_RUNNERS], include_revoked)


async def list_all(store: Store, *, include_revoked: bool = False) -> list[Runner]:
    """Every runner, oldest first."""
    return await _many(store, [keys.ALL_RUNNERS], include_revoked)


async def revoke(store: Store, runner_id: str, now: datetime) -> Runner:
    """Revoke a runner: its token stops working at once (every request reads the record). Revoking a
    revoked runner changes nothing. The runner, as it now is."""
    runner = await get(store, runner_id)
    if runner.revoked_at is None:
        runner.revoked_at = now
        await _save(store, runner)
    return runner


async def authenticate(store: Store, token: str) -> Runner:
    """The runner a presented token belongs to, or `Unauthorized` with one message for a token that is
    malformed, unknown or revoked (its hash is compared in constant time)."""
    runner_id = _runner_id_of(token)
    runner = await _find(store, runner_id) if runner_id else None
    expected = runner.token_sha256 if runner is not None else "0" * 64
    matches = hmac.compare_digest(expected, token_sha256(token))
    if runner is None or not matches or runner.revoked_at is not None:
        raise Unauthorized(INVALID_TOKEN, code="invalid_token")
    return runner


async def heartbeat(store: Store, runner_id: str, run_ids: list[str], now: datetime) -> None:
    """Record that a runner is alive and which runs it executes (one Redis write; no file)."""
    beat = _encoder.encode(Heartbeat(at=now.timestamp(), runs=list(run_ids)))
    redis: Any = store.redis  # redis-py's async hash commands are typed as maybe-not-awaitable
    await redis.hset(keys.RUNNER_HEARTBEATS, runner_id, beat)


def serves(runner: Runner, workspace_id: str) -> bool:
    """Whether a runner may execute a workspace's runs: not revoked, and global or that workspace's own."""
    return runner.revoked_at is None and runner.workspace_id in (None, workspace_id)


def audit_scope(runner: Runner) -> str:
    """The workspace an audit entry about this runner is filed under."""
    return runner.workspace_id or GLOBAL_AUDIT_SCOPE
