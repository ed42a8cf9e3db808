"""Identifiers: `<prefix>_<ulid>`. ULIDs sort by creation time, which the indexes rely on."""

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
