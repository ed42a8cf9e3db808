"""The event envelope, the catalog, the streams events belong to, and the one encoder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from ade.core import keys

Source = Literal["api", "worker", "engine"]

# Catalog (DESIGN.md §4). `engine.<name>` events come from steps through ADE_EVENTS_FD.
RUN_QUEUED = "run.queued"
RUN_WAITING_FOR_BUILD = "run.waiting_for_build"
RUN_STARTED = "run.started"
RUN_STEP_STARTED = "run.step.started"
RUN_STEP_COMPLETED = "run.step.completed"
RUN_CANCEL_REQUESTED = "run.cancel_requested"
RUN_COMPLETED = "run.completed"
BUILD_QUEUED = "build.queued"
BUILD_STARTED = "build.started"
BUILD_PHASE_STARTED = "build.phase.started"
BUILD_PHASE_COMPLETED = "build.phase.completed"
BUILD_CANCEL_REQUESTED = "build.cancel_requested"
BUILD_COMPLETED = "build.completed"
CONSOLE_LINE = "console.line"
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
    payload: dict[str, Any] = {}


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
    directory: Path

    @classmethod
    def for_run(cls, data_dir: Path, run_id: str) -> StreamRef:
        return cls("run", run_id, data_dir / "runs" / run_id)

    @classmethod
    def for_build(cls, data_dir: Path, build_id: str) -> StreamRef:
        return cls("build", build_id, data_dir / "builds" / build_id)

    @property
    def log_path(self) -> Path:
        return self.directory / "logs" / "events.ndjson"

    @property
    def channel(self) -> str:
        return keys.stream_channel(self.id)

    @property
    def lease_key(self) -> str:
        return keys.stream_lease(self.id)

    @property
    def terminal_type(self) -> str:
        """The event after which this stream never grows again."""
        return RUN_COMPLETED if self.kind == "run" else BUILD_COMPLETED
