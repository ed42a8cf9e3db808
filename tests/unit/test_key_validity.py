"""Whether the key behind a stream token is still valid: revoked, expired, missing; the short cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from ade.core.models import ApiKey
from ade.records.auth import BOOTSTRAP_ACTOR, KeyValidity

pytestmark = pytest.mark.anyio


def key(**changes: object) -> ApiKey:
    fields: dict[str, object] = {
        "id": "key_1", "workspace_id": "ws_1", "name": "k", "role": "viewer", "secret_sha256": "0" * 64,
        "created_at": datetime.now(UTC), "created_by": "bootstrap",
    }  # fmt: skip
    return ApiKey(**(fields | changes))  # type: ignore[arg-type]


async def test_revocation_is_seen_once_the_cache_lapses() -> None:
    stored = {"key_1": key()}
    lookups = 0

    async def find(key_id: str) -> ApiKey | None:
        nonlocal lookups
        lookups += 1
        return stored.get(key_id)

    validity = KeyValidity(cache_s=0.2)
    assert await validity.valid(find, "key_1") and await validity.valid(find, "key_1")
    assert lookups == 1  # cached
    stored["key_1"] = key(revoked_at=datetime.now(UTC))
    await anyio.sleep(0.25)
    assert not await validity.valid(find, "key_1")
    assert not await validity.valid(find, "key_gone")
    assert await validity.valid(find, BOOTSTRAP_ACTOR)


async def test_expiry_is_compared_with_the_clock_on_every_check() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.2)

    async def find(key_id: str) -> ApiKey | None:
        return key(expires_at=soon)

    validity = KeyValidity(cache_s=60)
    assert await validity.valid(find, "key_1")
    await anyio.sleep(0.25)
    assert not await validity.valid(find, "key_1")
