"""Python client for the ADE API: `AdeClient` (sync) and `AsyncAdeClient` (async).

```python
from ade.client import AdeClient

with AdeClient() as ade:  # base_url from ADE_URL, token from ADE_TOKEN
    run = ade.create_run("cfg_…")
    for event in ade.events(run.id):  # exact: sequences 1..n, once each, across reconnects
        print(event.sequence, event.type)
    for run in ade.list_runs(workspace_id="ws_…", status="failed"):  # follows `next_cursor`
        ...
    build = ade.create_build("ws_…", "cfg_…", wait=True)  # reused, joined or built; ended
    for line in ade.build_logs(build.id):
        print(line)
    for line in ade.console(run.id, follow=True):  # console lines with their time, stream and step
        print(line.created_at, line.message)
```

Responses are decoded into the project's own msgspec structs (`ade.core.models`, `ade.core.views`,
`ade.events.envelope` and `ade.events.payloads`, `ade.records.summary`, `ade.records.outputs`); a few
response shapes that live in server modules (`ade.api.*`, `ade.records.artifacts`) are mirrored here, so
importing the client does not import the server stack. Unknown
response fields are ignored, so a newer server does not break an older client.

Every non-2xx answer raises `AdeApiError` (a subclass per status, e.g. `NotFoundError`), carrying the API's
error shape: `status`, `code` (e.g. `run_not_found`), `message`, `details`.

Event streams (`events` for a run, `build_events` for a build: one code path) reconnect on network errors,
server restarts and 5xx answers, resuming with `Last-Event-ID` = the last sequence they yielded. They yield
each event exactly once and in order: a duplicate is dropped, a jump (`sequence > last + 1`) closes the
connection and resumes from the last yielded event. A stream ends at the server's `event: end`. When the
server cannot be reached for `reconnect_timeout_s`, or keeps skipping a sequence, `AdeStreamError` is raised.

Both clients share the request building (`calls`), the paging (`paging`) and the stream bookkeeping
(`streams`); they differ only in I/O (`sync`, `aio`). The exceptions are in `errors`. Import from
`ade.client`: the modules are its internals.
"""

from __future__ import annotations

from ade.client.aio import AsyncAdeClient
from ade.client.calls import API_PREFIX as API_PREFIX
from ade.client.calls import DEFAULT_URL as DEFAULT_URL
from ade.client.calls import Artifact, EventsPage, WhoAmI
from ade.client.calls import ConsoleStream as ConsoleStream
from ade.client.calls import FileSource as FileSource
from ade.client.errors import (
    AdeApiError,
    AdeStreamError,
    ConflictError,
    ForbiddenError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    TooManyRequestsError,
    UnauthorizedError,
)
from ade.client.errors import api_error as api_error
from ade.client.sync import AdeClient
from ade.core.views import InputFile, OutputListing, RunDiagnostics, Timings
from ade.records.summary import ConsoleLine

__all__ = [
    "AdeApiError",
    "AdeClient",
    "AdeStreamError",
    "Artifact",
    "AsyncAdeClient",
    "ConflictError",
    "ConsoleLine",
    "EventsPage",
    "ForbiddenError",
    "GoneError",
    "InputFile",
    "InvalidRequestError",
    "NotFoundError",
    "OutputListing",
    "PayloadTooLargeError",
    "RunDiagnostics",
    "ServerError",
    "Timings",
    "TooManyRequestsError",
    "UnauthorizedError",
    "WhoAmI",
]
