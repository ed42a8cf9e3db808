"""Identifiers: `<prefix>_<ulid>`. ULIDs sort by creation time, which the indexes rely on."""

from datetime import datetime

from ulid import ULID

WORKSPACE = "ws"
CONFIGURATION = "cfg"
RUN = "run"
BUILD = "build"
EVENT = "evt"
API_KEY = "key"
AUDIT = "aud"


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 27


def time_bound(prefix: str, moment: datetime, *, upper: bool) -> str:
    """The smallest (or largest) id of `prefix` created at `moment`: ULIDs start with their creation time,
    so a time range is a lexical range of ids."""
    ms = int(moment.timestamp() * 1000)
    randomness = (b"\xff" if upper else b"\x00") * 10
    return f"{prefix}_{ULID.from_bytes(ms.to_bytes(6, 'big') + randomness)}"


def created_at(ident: str) -> datetime:
    """When an id was made (millisecond precision): the time its ULID encodes."""
    return ULID.from_str(ident.rsplit("_", 1)[1]).datetime
