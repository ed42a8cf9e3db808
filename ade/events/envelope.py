"""The event envelope, the catalog, the streams events belong to, and the one encoder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from ade.core import keys, paths
from ade.events.payloads import BuildCompleted, RunCompleted

Source = Literal["api", "worker", "runner", "engine"]

# The catalog's payloads are `ade.events.payloads`; `engine.<name>` events come from steps (ADE_EVENTS_FD).
ENGINE_PREFIX = "engine."
RESERVED_PREFIXES = ("run.", "build.", "console.", "ade.")


class Event(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str
    sequence: int
    event_id: str
    created_at: datetime
    source: Source
    workspace_id: str
    configuration_id: str | None = None
    run_id: str | None = None
    build_id: str | None = None
    payload: Any = {}  # a catalog struct when emitted, a dict when decoded (`payloads.payload_of`)


class EventHead(msgspec.Struct):
    """The two fields readers need from a log line; decoding skips everything else."""

    sequence: int
    type: str


ENCODER = msgspec.json.Encoder()
EVENT_DECODER = msgspec.json.Decoder(Event)
HEAD_DECODER = msgspec.json.Decoder(EventHead)


def encode_event(event: Event) -> bytes:
    """Encode once: these exact bytes go to the NDJSON log, to pub/sub and into SSE `data:`."""
    return ENCODER.encode(event)


@dataclass(frozen=True, slots=True)
class StreamRef:
    """A sequenced stream: a run's or a build's. Everything streaming is written against this."""

    kind: Literal["run", "build"]
    id: str
    log_path: Path

    @classmethod
    def for_run(cls, data_dir: Path, run_id: str) -> StreamRef:
        return cls("run", run_id, paths.run_dir(data_dir, run_id).log)

    @classmethod
    def for_build(cls, data_dir: Path, build_id: str) -> StreamRef:
        return cls("build", build_id, paths.build_dir(data_dir, build_id).log)

    @property
    def channel(self) -> str:
        return keys.stream_channel(self.id)

    @property
    def lease_key(self) -> str:
        return keys.stream_lease(self.id)

    @property
    def terminal_type(self) -> str:
        """The event after which this stream never grows again."""
        return RunCompleted.TYPE if self.kind == "run" else BuildCompleted.TYPE
