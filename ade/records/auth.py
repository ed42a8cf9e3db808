"""Who is calling: API keys (hashed, constant-time compared), the bootstrap token, and short-lived signed
stream tokens for browsers' EventSource. Plain functions; the HTTP side is `ade.api.auth`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

from ade.core import paths
from ade.core.errors import Forbidden, Unauthorized
from ade.core.models import ROLE_RANK, ApiKey, Role
from ade.events.follow import Stop

log = logging.getLogger(__name__)

BOOTSTRAP_ACTOR = "bootstrap"
KEY_PREFIX = "ade"


@dataclass(frozen=True, slots=True)
class Principal:
    actor: str  # the API key id, "bootstrap", or the runner id
    role: Role
    workspace_id: str | None  # None: every workspace (the bootstrap token)
    stream_id: str | None = None  # set for stream tokens: that one stream, read-only
    runner_id: str | None = None  # set for runner tokens: only the runner protocol's endpoints take them

    def sees(self, workspace_id: str) -> bool:
        return self.workspace_id is None or self.workspace_id == workspace_id

    def require(self, role: Role) -> None:
        if ROLE_RANK[self.role] < ROLE_RANK[role]:
            raise Forbidden(f"this needs the {role} role; the key has {self.role}", code="role_too_weak")


SUPERUSER = Principal(actor=BOOTSTRAP_ACTOR, role="admin", workspace_id=None)


def new_key_secret(key_id: str) -> str:
    return f"{KEY_PREFIX}.{key_id}.{secrets.token_urlsafe(32)}"


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_id_of(secret: str) -> str | None:
    parts = secret.split(".")
    return parts[1] if len(parts) == 3 and parts[0] == KEY_PREFIX else None


def check_key(key: ApiKey | None, secret: str, now: datetime) -> Principal:
    """The principal of a presented key secret, or Unauthorized. Every failure says the same thing."""
    expected = key.secret_sha256 if key is not None else "0" * 64
    matches = hmac.compare_digest(expected, secret_sha256(secret))
    if key is None or not matches or key.revoked_at is not None or (key.expires_at and key.expires_at <= now):
        raise Unauthorized("invalid, expired or revoked API key", code="invalid_token")
    return Principal(actor=key.id, role=key.role, workspace_id=key.workspace_id)


def check_bootstrap(secret: str, bootstrap_token: str | None) -> bool:
    return bootstrap_token is not None and hmac.compare_digest(secret.encode(), bootstrap_token.encode())


def load_signing_key(data_dir: Path) -> bytes:
    """ADE_SECRET_KEY, else a random key kept in the shared data directory (created once, mode 0600)."""
    from_env = os.environ.get("ADE_SECRET_KEY")
    if from_env:
        return from_env.encode()
    path = paths.secret_key(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    return path.read_bytes()


class StreamTokens:
    """Signed, expiring tokens for one stream's read-only streaming endpoints (`?token=`).

    A token names the key that minted it (`a`: the key id, or `bootstrap`); it is only as good as that key:
    the API checks the key on every use and while a stream it opened is open (`KeyValidity`).
    """

    def __init__(self, signing_key: bytes, ttl_s: float) -> None:
        self._serializer = URLSafeSerializer(signing_key, salt="ade-stream-token")
        self.ttl_s = ttl_s
        self.keys = KeyValidity()  # this process's cache of the minting keys' validity
        self.watch = KeyWatch(self.keys)  # the keys behind this process's open streams

    def issue(self, principal: Principal, workspace_id: str, stream_id: str) -> tuple[str, datetime]:
        expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl_s)
        token = self._serializer.dumps(
            {"a": principal.actor, "w": workspace_id, "s": stream_id, "e": expires_at.timestamp()}
        )
        return token, expires_at

    def verify(self, token: str, stream_id: str) -> Principal:
        try:
            claims = self._serializer.loads(token)
        except BadSignature as exc:
            raise Unauthorized("invalid stream token", code="invalid_token") from exc
        if not isinstance(claims, dict) or claims.get("e", 0) < datetime.now(UTC).timestamp():
            raise Unauthorized("the stream token has expired", code="token_expired")
        if claims.get("s") != stream_id:
            raise Unauthorized("the stream token is for another stream", code="token_out_of_scope")
        return Principal(
            actor=str(claims["a"]), role="viewer", workspace_id=str(claims["w"]), stream_id=stream_id
        )


FindKey = Callable[[str], Awaitable[ApiKey | None]]


class KeyValidity:
    """API keys as this process last read them: each key's record is asked of the store at most once per
    `cache_s` (so many requests and streams of one key cost one lookup a half second, and a revoked key
    stops working within that, in every process); an expiry time is compared with the clock on every
    check, never cached. The bootstrap token is always valid (it is configuration, not a key)."""

    def __init__(self, cache_s: float = 0.5, max_entries: int = 10_000) -> None:
        self._cache_s = cache_s
        self._max_entries = max_entries
        self._known: dict[str, tuple[float, ApiKey | None]] = {}  # id -> (read at, the record)

    async def lookup(self, find: FindKey, key_id: str) -> ApiKey | None:
        """The key's record, read from the store at most once per `cache_s`."""
        now = time.monotonic()
        known = self._known.get(key_id)
        if known is None or now - known[0] > self._cache_s:
            known = (now, await find(key_id))
            if len(self._known) >= self._max_entries:
                self._known = {k: v for k, v in self._known.items() if now - v[0] <= self._cache_s}
            self._known[key_id] = known
        return known[1]

    def forget(self, key_id: str) -> None:
        self._known.pop(key_id, None)

    async def valid(self, find: FindKey, actor: str) -> bool:
        if actor == BOOTSTRAP_ACTOR:
            return True
        key = await self.lookup(find, actor)
        if key is None or key.revoked_at is not None:
            return False
        return key.expires_at is None or key.expires_at > datetime.now(UTC)


class KeyWatch:
    """The keys behind this process's open streams, checked by one task every `interval_s` (not a task per
    stream): when a key is revoked or expires, every stream it opened is told to stop (`Stop.request`).
    While the store cannot answer, streams go on (new requests get 503) and are checked again next time."""

    def __init__(self, keys: KeyValidity, interval_s: float = 0.5, timeout_s: float = 2.0) -> None:
        self._keys, self._interval_s, self._timeout_s = keys, interval_s, timeout_s
        self._open: dict[str, set[Stop]] = {}  # key id -> the stops of its open streams
        self._find: FindKey | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def stop_for(self, actor: str, find: FindKey) -> Stop | None:
        """A Stop for a stream opened by `actor` (None for the bootstrap token, which is never revoked)."""
        if actor == BOOTSTRAP_ACTOR:
            return None
        stops = self._open.setdefault(actor, set())
        stop = Stop(on_close=lambda: self._forget(actor, stop))
        stops.add(stop)
        self._find = find
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._check_forever(), name="key-watch")
        return stop

    @property
    def watched(self) -> int:
        return sum(len(stops) for stops in self._open.values())

    def _forget(self, actor: str, stop: Stop) -> None:
        stops = self._open.get(actor)
        if stops is not None:
            stops.discard(stop)
            if not stops:
                del self._open[actor]

    async def _check_forever(self) -> None:
        while self._open:
            await asyncio.sleep(self._interval_s)
            assert self._find is not None
            for actor in list(self._open):
                try:
                    valid = await asyncio.wait_for(self._keys.valid(self._find, actor), self._timeout_s)
                except Exception as exc:  # the store is away (or worse): streams go on, checked next time
                    if not self._failing:
                        log.warning("cannot check the keys of open streams (%r)", exc)
                    self._failing = True
                    break
                self._failing = False
                if not valid:
                    for stop in list(self._open.pop(actor, ())):
                        stop.request()
