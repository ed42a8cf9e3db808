"""Identifiers: `<prefix>_<ulid>`. ULIDs sort by creation time, which the indexes rely on."""

import os
import time
from datetime import datetime

from ulid import ULID

WORKSPACE = "ws"
CONFIGURATION = "cfg"
RUN = "run"
BUILD = "build"
EVENT = "evt"
API_KEY = "key"
AUDIT = "aud"
RUNNER = "rnr"
ULID_TIME_LIMIT_MS = 2**48  # a ULID's time is 48 bits of milliseconds since 1970


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


def time_bound(prefix: str, moment: datetime, *, upper: bool) -> str:
    """The smallest (or largest) id of `prefix` created at `moment`: ULIDs start with their creation time,
    so a time range is a lexical range of ids. ValueError for a moment a ULID cannot encode (before 1970,
    or past its 48 bits of milliseconds)."""
    ms = int(moment.timestamp() * 1000)
    if not 0 <= ms < ULID_TIME_LIMIT_MS:
        raise ValueError(f"{moment.isoformat()} is outside the times an id can record (1970 to 10889)")
    randomness = (b"\xff" if upper else b"\x00") * 10
    return f"{prefix}_{ULID.from_bytes(ms.to_bytes(6, 'big') + randomness)}"


def created_at(ident: str) -> datetime:
    """When an id was made (millisecond precision): the time its ULID encodes."""
    return ULID.from_str(ident.rsplit("_", 1)[1]).datetime


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ULID-format ids for one batch, in increasing order: one fresh ULID's time and first 30
    random bits, then a zero-padded decimal counter as the last 10 characters (decimal digits are Crockford
    base32 digits). About 30x cheaper per id than a ULID each, which matters at a million events.
    The random bits are fresh for every batch (python-ulid's `ULID()` keeps them within a millisecond and
    counts up at the end instead, which would give two batches of one millisecond the same ids)."""
    if count == 1:
        return [new_id(prefix)]
    now_ms = time.time_ns() // 1_000_000
    head = f"{prefix}_{str(ULID.from_bytes(now_ms.to_bytes(6, 'big') + os.urandom(10)))[:16]}"
    return [f"{head}{index:010d}" for index in range(count)]
