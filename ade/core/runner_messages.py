"""What a runner and the API say to each other (README "Runners"): msgspec structs on the wire, snake_case
JSON like the rest of `/api/v1`. The protocol itself is `ade.api.runner_protocol` (the API's side) and
`workers.runner` with `ade.execution.remote` (the runner's)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ade.core.models import Labels, Run

MAX_CHUNK_REPORTS = 2000


class Claim(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A runner asks for a run (a long poll: the answer comes once there is one, or after `wait_s`)."""

    labels: Labels = msgspec.field(default_factory=list)  # empty: all its registered labels; else a subset
    wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 20.0


class InputFile(msgspec.Struct, kw_only=True):
    name: str  # where it goes in the run's inputs directory
    index: int  # GET /runner/runs/{run_id}/inputs/{index} gives its bytes


class Assignment(msgspec.Struct, kw_only=True):
    """A run a runner took: the record (its plan, secrets included: the runner executes it), the images its
    steps name (slug → image reference, resolved in the run's workspace), its input files."""

    run: Run
    images: dict[str, str]
    inputs: list[InputFile]
    heartbeat_s: float  # how often the runner must be heard from while it runs the run
    lost_after_s: float  # not heard from this long, the run fails `runner_lost`


class Report(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One event the runner's engine produced. `id` becomes the event's `event_id` in the run's log: the
    API tells from the log's tail whether a report was applied."""

    id: str  # `evt_` + 26 of Crockford's base32 (checked by `is_event_id`: a regex per report cost more
    # than the rest of decoding it)
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    payload: dict[str, Any]
    source: Literal["runner", "engine"] = "runner"


_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def is_event_id(text: str) -> bool:
    return len(text) == 30 and text.startswith("evt_") and _CROCKFORD.issuperset(text[4:])


class Chunk(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Reports `offset`, `offset + 1`, … of a run (counted from 0 over everything the runner reported for
    it). A chunk sent again is applied once: the API skips the reports it already applied."""

    offset: Annotated[int, msgspec.Meta(ge=0)]
    reports: Annotated[list[Report], msgspec.Meta(min_length=1, max_length=MAX_CHUNK_REPORTS)]


class ChunkAnswer(msgspec.Struct, kw_only=True):
    applied: int  # reports applied so far: the next chunk starts there
    cancel_requested: bool


class Heartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    runs: Annotated[list[str], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=list)


class HeartbeatAnswer(msgspec.Struct, kw_only=True):
    cancel: list[str]  # of `runs`, the ones to cancel now
    unknown: list[str]  # of `runs`, the ones this runner may not report (ended, or never given to it)


class UploadedOutput(msgspec.Struct, kw_only=True):
    path: str
    size: int
