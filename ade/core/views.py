"""Response shapes of the run and build views (`ade.api.run_views`, `ade.api.builds`), shared by the server
and the client.

Light on purpose (msgspec and domain structs only): `ade.client` decodes into these without importing the
server stack.

The structs carry no docstrings on purpose: the OpenAPI schema would take them as descriptions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from ade.core.models import BuildSpec, BuildStatus, Failure, Step

__all__ = ["BuildInspection", "InputFile", "OutputListing", "RunDiagnostics", "Timings"]


# An input artifact of a run.


class OutputFile(msgspec.Struct, kw_only=True):
    path: str  # relative to the output directory, POSIX separators
    size: int
    content_type: str
    sha256: str  # hex digest
    step: str | None = None  # the step that produced it; None when unknown (README "Outputs")


class InputFile(msgspec.Struct, kw_only=True):
    name: str
    key: str
    size: int
    content_type: str
    download_url: str


# A run's output files.
class OutputListing(msgspec.Struct, kw_only=True):
    items: list[OutputFile]
    download_urls: dict[str, str]


class Timings(msgspec.Struct, kw_only=True):
    queued_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    queue_wait_ms: int | None
    run_ms: int | None


# Attempt, worker, timings, environment (no secrets), failure of a run.
class RunDiagnostics(msgspec.Struct, kw_only=True):
    run_id: str
    status: str
    attempt: int
    rerun_of: str | None
    worker: str | None
    timings: Timings
    environment: dict[str, Any]
    steps: list[Step]
    failure: Failure | None
    cancel_requested_by: str | None
    log_bytes: int
    last_sequence: int


class BuildInspection(msgspec.Struct, kw_only=True):
    id: str
    status: BuildStatus
    constructor: str
    owner: str
    fingerprint: str
    flags: dict[str, bool]
    reused_from: str | None
    interpreter: str | None
    spec: BuildSpec
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_used_at: datetime | None
    failure: Failure | None
