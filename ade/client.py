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
```

Responses are decoded into the project's own msgspec structs (`ade.models`, `ade.events`, `ade.summary`,
`ade.outputs`); a few response shapes that live in server modules (`ade.api.*`, `ade.artifacts`) are
mirrored here, so importing the client does not import the server stack. Unknown response fields are
ignored, so a newer server does not break an older client.

Every non-2xx answer raises `AdeApiError` (a subclass per status, e.g. `NotFoundError`), carrying the API's
error shape: `status`, `code` (e.g. `run_not_found`), `message`, `details`.

Event streams (`events` for a run, `build_events` for a build: one code path) reconnect on network errors,
server restarts and 5xx answers, resuming with `Last-Event-ID` = the last sequence they yielded. They yield
each event exactly once and in order: a duplicate is dropped, a jump (`sequence > last + 1`) closes the
connection and resumes from the last yielded event. A stream ends at the server's `event: end`. When the
server cannot be reached for `reconnect_timeout_s`, or keeps skipping a sequence, `AdeStreamError` is raised.

Both clients share the request building, the paging and the stream bookkeeping below; they differ only in
I/O.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx
import msgspec
from httpx_sse import EventSource, ServerSentEvent, SSEError

from ade.events import Event
from ade.models import (
    TERMINAL_BUILD_STATUSES,
    TERMINAL_RUN_STATUSES,
    ApiKeyCreated,
    ApiKeyResource,
    BuildCreate,
    BuildInspection,
    BuildOptions,
    BuildResource,
    Commit,
    Configuration,
    ConfigurationCreate,
    Failure,
    InputArtifact,
    Page,
    Plan,
    Role,
    RunCreate,
    RunOptions,
    RunResource,
    RunStatus,
    Step,
    Workspace,
    WorkspaceCreate,
)
from ade.outputs import OutputFile
from ade.summary import ConsolePage, RunSummary

__all__ = [
    "AdeApiError",
    "AdeClient",
    "AdeStreamError",
    "Artifact",
    "AsyncAdeClient",
    "ConflictError",
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
]

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
ConsoleStream = Literal["stdout", "stderr"]
FileSource = bytes | str | os.PathLike[str]

T = TypeVar("T")
P = TypeVar("P")
_Params = list[tuple[str, str | int | float | bool | None]]


# Errors -------------------------------------------------------------------------------------------


class AdeApiError(Exception):
    """A non-2xx answer, built from the API's error shape `{"error", "code", "details"}`.

    Match on `code` (`run_not_found`, `invalid_request`, `too_many_streams`, …) or on the subclass for the
    status (`NotFoundError`, …).
    """

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.details: list[Any] = details or []


class InvalidRequestError(AdeApiError):
    """400: the request (body, parameter, header) is invalid; `details` names the fields."""


class UnauthorizedError(AdeApiError):
    """401: no, bad, revoked or expired credentials."""


class ForbiddenError(AdeApiError):
    """403: the key's role is too weak for this."""


class NotFoundError(AdeApiError):
    """404: unknown id (or another workspace's, which looks the same)."""


class ConflictError(AdeApiError):
    """409: the resource is not in a state that allows this."""


class GoneError(AdeApiError):
    """410: the resource is gone for good, e.g. `build_expired` (retention removed its logs)."""


class PayloadTooLargeError(AdeApiError):
    """413: a request body or an upload exceeds a server limit."""


class TooManyRequestsError(AdeApiError):
    """429: e.g. `too_many_streams` (ADE_MAX_STREAMS_PER_KEY)."""


class ServerError(AdeApiError):
    """5xx: the server failed (`internal_error`) or a dependency is down (`redis_unavailable`)."""


_ERRORS_BY_STATUS: dict[int, type[AdeApiError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    429: TooManyRequestsError,
}


class AdeStreamError(Exception):
    """An event stream could not be continued: the server stayed unreachable for `reconnect_timeout_s`,
    kept skipping a sequence, or answered with something that is not an event stream."""


class _ErrorBody(msgspec.Struct):
    error: str
    code: str
    details: list[Any] = []


def api_error(response: httpx.Response) -> AdeApiError:
    """The exception for a non-2xx response (its body must have been read)."""
    status = response.status_code
    cls = _ERRORS_BY_STATUS.get(status, ServerError if status >= 500 else AdeApiError)
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
    except msgspec.MsgspecError:  # not the API's shape: a proxy's page, a crash
        text = response.content[:500].decode(errors="replace").strip()
        return cls(status, "http_error", text or response.reason_phrase or f"HTTP {status}")
    return cls(status, body.code, body.error, body.details)


# Response shapes defined in server modules (mirrored: importing those would import the server) --------


class Artifact(msgspec.Struct, kw_only=True):
    """An uploaded artifact (`ade.artifacts.Artifact`)."""

    key: str  # "sha256:<hex>"
    workspace_id: str
    size: int
    content_type: str
    filename: str | None
    created_at: datetime


class EventsPage(msgspec.Struct, kw_only=True):
    """A JSON page of events (`ade.api.streams.EventsPage`)."""

    items: list[Event]
    next_after_sequence: int


class InputFile(msgspec.Struct, kw_only=True):
    """An input artifact of a run (`ade.api.run_views.InputFile`)."""

    name: str
    key: str
    size: int
    content_type: str
    download_url: str


class OutputListing(msgspec.Struct, kw_only=True):
    """A run's output files (`ade.api.run_views.OutputListing`)."""

    items: list[OutputFile]
    download_urls: dict[str, str]


class Timings(msgspec.Struct, kw_only=True):
    queued_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    queue_wait_ms: int | None
    run_ms: int | None


class RunDiagnostics(msgspec.Struct, kw_only=True):
    """`ade.api.run_views.RunDiagnostics`."""

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


# Requests, shared by both clients ------------------------------------------------------------------

_JSON = {"Content-Type": "application/json"}
_CHUNK_BYTES = 64 * 1024


def _decoder(kind: type[T]) -> Callable[[httpx.Response], T]:
    def decode(response: httpx.Response) -> T:
        return msgspec.json.decode(response.content, type=kind)

    return decode


def _no_content(_: httpx.Response) -> None:
    return None


def _content(response: httpx.Response) -> bytes:
    return response.content


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    """One request and how to decode its 2xx answer."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: _Params = field(default_factory=list)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json_call(method: str, path: str, kind: type[T], body: object = None, **params: Any) -> _Call[T]:
    return _Call(
        method,
        path,
        _decoder(kind),
        params=[(k, v) for k, v in params.items() if v is not None],
        body=None if body is None else msgspec.json.encode(body),
        headers=_JSON if body is not None else {},
    )


def _seg(value: str) -> str:
    """An id as one path segment (ids never contain `/`; this keeps a stray one from changing the route)."""
    return quote(value, safe="")


def _configuration_body(config: ConfigurationCreate | Mapping[str, Any]) -> ConfigurationCreate:
    """A configuration as the API takes it; a mapping is validated here, with the server's own rules."""
    if isinstance(config, ConfigurationCreate):
        return config
    return msgspec.convert(dict(config), ConfigurationCreate)


def _run_body(
    options: RunOptions | None, input_artifacts: Sequence[InputArtifact] | None, commit: Commit | None
) -> RunCreate:
    options = options or RunOptions()
    if input_artifacts:
        options = RunOptions(input_artifacts=[*options.input_artifacts, *input_artifacts])
    return RunCreate(options=options, commit=commit)


def _list_runs_call(
    workspace_id: str | None,
    configuration_id: str | None,
    statuses: Sequence[RunStatus],
    branch: str | None,
    page_size: int,
    before: str | None,
) -> _Call[Page]:
    if workspace_id is not None:
        path = f"/workspaces/{_seg(workspace_id)}/runs"
    else:
        assert configuration_id is not None  # _list_runs_pages checked
        path = f"/configurations/{_seg(configuration_id)}/runs"
    params: _Params = [("limit", page_size)]
    params += [("status", status) for status in statuses]
    if workspace_id is not None and configuration_id is not None:
        params.append(("configuration_id", configuration_id))
    if branch is not None:
        params.append(("branch", branch))
    if before is not None:
        params.append(("before", before))
    return _Call("GET", path, _decoder(Page), params=params)


def _statuses(status: RunStatus | Sequence[RunStatus] | None) -> list[RunStatus]:
    if status is None:
        return []
    if isinstance(status, str):
        return [status]
    return list(status)


def _runs_page(page: Page, asked: int) -> tuple[list[RunResource], str | None]:
    return page.items, page.next_cursor


@dataclass(slots=True)
class _Pages(Generic[P, T]):
    """A newest-first listing fetched a page at a time, at most `limit` items: the request for the next page
    and the items of each answer. Shared by both clients, which only send the requests."""

    call: Callable[[int, str | None], _Call[P]]  # (page size, before) -> the request
    split: Callable[[P, int], tuple[list[T], str | None]]  # (answer, size asked) -> items, next `before`
    limit: int | None
    page_size: int
    before: str | None = None
    count: int = 0
    asked: int = 0
    done: bool = False

    def next_call(self) -> _Call[P] | None:
        """The request for the next page; None when the listing is complete."""
        remaining = self.page_size if self.limit is None else self.limit - self.count
        self.asked = min(self.page_size, remaining)
        return None if self.done or self.asked <= 0 else self.call(self.asked, self.before)

    def take(self, answer: P) -> list[T]:
        items, self.before = self.split(answer, self.asked)
        self.count += len(items)
        self.done = self.before is None or not items
        return items


def _list_runs_pages(
    workspace_id: str | None,
    configuration_id: str | None,
    status: RunStatus | Sequence[RunStatus] | None,
    branch: str | None,
    limit: int | None,
    page_size: int,
) -> _Pages[Page, RunResource]:
    if workspace_id is None and configuration_id is None:
        raise ValueError("list_runs needs workspace_id or configuration_id")
    call = partial(_list_runs_call, workspace_id, configuration_id, _statuses(status), branch)
    return _Pages(call, _runs_page, limit, page_size)


# Builds: the requests, shared by both clients


def _build_path(build_id: str, tail: str = "") -> str:
    return f"/builds/{_seg(build_id)}{tail}"


def _create_build_call(workspace_id: str, configuration_id: str, force: bool) -> _Call[BuildResource]:
    path = f"/workspaces/{_seg(workspace_id)}/configurations/{_seg(configuration_id)}/builds"
    return _json_call("POST", path, BuildResource, BuildCreate(options=BuildOptions(force=force)))


def _list_builds_call(
    configuration_id: str, page_size: int, before: str | None
) -> _Call[list[BuildResource]]:
    path = f"/configurations/{_seg(configuration_id)}/builds"
    return _json_call("GET", path, list[BuildResource], limit=page_size, before=before)


def _builds_page(items: list[BuildResource], asked: int) -> tuple[list[BuildResource], str | None]:
    """The endpoint answers a plain list: a full page may have older builds after its last one."""
    return items, items[-1].id if len(items) >= asked else None


def _list_builds_pages(
    configuration_id: str, limit: int | None, page_size: int
) -> _Pages[list[BuildResource], BuildResource]:
    return _Pages(partial(_list_builds_call, configuration_id), _builds_page, limit, min(page_size, 100))


def _build_logs_request(build_id: str) -> tuple[str, dict[str, str]]:
    return _build_path(build_id, "/logs"), {"Accept": "text/plain"}


class _Lines:
    """Text split at `\\n` only (a console line may hold a `\\r`, which `iter_lines` would split at)."""

    def __init__(self) -> None:
        self._rest = ""

    def feed(self, text: str) -> list[str]:
        *lines, self._rest = (self._rest + text).split("\n")
        return lines

    def end(self) -> list[str]:
        return [self._rest] if self._rest else []


def _upload_call(
    workspace_id: str, filename: str | None, content_type: str | None, size: int | None
) -> _Call[Artifact]:
    headers = {"Content-Type": content_type or "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    return _Call(
        "POST",
        f"/workspaces/{_seg(workspace_id)}/artifacts",
        _decoder(Artifact),
        params=[("filename", filename)] if filename else [],
        headers=headers,
    )


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def _iter_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            yield chunk


async def _aiter_file(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(_CHUNK_BYTES):
            yield chunk


def _console_message(event: Event, stream: ConsoleStream | None) -> str | None:
    if event.type != "console.line":
        return None
    if stream is not None and event.payload.get("stream") != stream:
        return None
    return str(event.payload.get("message", ""))


def _console_lines(events: Iterator[Event], stream: ConsoleStream | None = None) -> Iterator[str]:
    """The console lines among a run's or a build's events (for the `follow=True` logs)."""
    for event in events:
        if (message := _console_message(event, stream)) is not None:
            yield message


async def _aconsole_lines(
    events: AsyncIterator[Event], stream: ConsoleStream | None = None
) -> AsyncIterator[str]:
    async for event in events:
        if (message := _console_message(event, stream)) is not None:
            yield message


# Event streams: the bookkeeping that makes them exact -------------------------------------------------

_EVENT_DECODER = msgspec.json.Decoder(Event)
_FIRST_RETRY_S = 0.05
_MAX_GAPS = 10


class _Gap(Exception):
    """The server sent a sequence after a hole: reconnect from the last yielded event."""


class _Retry(Exception):
    """A 5xx answer or a stream that closed before `event: end`: reconnect."""


class _Resume:
    """Where a stream consumer stands: the last sequence yielded, whether the stream ended, and the
    reconnect policy (backoff capped by the server's `retry:`; give up after `timeout_s` unreachable)."""

    def __init__(self, after_sequence: int, timeout_s: float) -> None:
        self.last = after_sequence
        self.ended = False
        self.timeout_s = timeout_s
        self.retry_s = 2.0
        self.failures = 0
        self.gaps = 0
        self.down_since: float | None = None

    def request(self) -> tuple[dict[str, str | int], dict[str, str]]:
        params: dict[str, str | int] = {"stream": "true", "after_sequence": self.last}
        headers = {
            "Accept": "text/event-stream",
            "Cache-Control": "no-store",
            "Last-Event-ID": str(self.last),
        }
        return params, headers

    def connected(self, response: httpx.Response) -> None:
        """Raise for an answer that is not a stream: `AdeApiError` for 4xx, `_Retry` for 5xx."""
        if response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}")
        if response.status_code >= 300:
            raise api_error(response)
        self.down_since = None

    def accept(self, sse: ServerSentEvent) -> Event | None:
        """The event to yield for this SSE message, if any; raises `_Gap` on a jump."""
        if sse.retry is not None:
            self.retry_s = max(sse.retry / 1000, _FIRST_RETRY_S)
        if sse.event == "end":
            self.ended = True
            return None
        if sse.event != "ade.event":
            return None
        try:
            event = _EVENT_DECODER.decode(sse.data)
        except msgspec.MsgspecError as exc:
            raise AdeStreamError(f"a malformed event after sequence {self.last}: {exc}") from exc
        if event.sequence <= self.last:
            return None  # already yielded
        if event.sequence != self.last + 1:
            raise _Gap(f"sequence {event.sequence} after {self.last}")
        self.last = event.sequence
        self.failures = self.gaps = 0
        return event

    def failed(self, exc: Exception) -> float:
        """Seconds to wait before reconnecting; raises `AdeStreamError` when it is time to give up."""
        now = time.monotonic()
        if isinstance(exc, _Gap):
            self.gaps += 1
            if self.gaps > _MAX_GAPS:
                raise AdeStreamError(f"the server keeps skipping events: {exc}") from exc
            return 0.0
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
        elif now - self.down_since > self.timeout_s:
            raise AdeStreamError(
                f"the event stream was lost after sequence {self.last} and could not be resumed "
                f"for {self.timeout_s:g} s: {exc!r}"
            ) from exc
        return float(min(self.retry_s, _FIRST_RETRY_S * 2 ** (self.failures - 1)))


_RECONNECT = (httpx.TransportError, _Retry, _Gap)


def _sse_error(exc: SSEError) -> AdeStreamError:
    return AdeStreamError(f"the answer is not an event stream: {exc}")


# Shared settings ----------------------------------------------------------------------------------


def _settings(
    base_url: str | None, token: str | None, timeout_s: float, stream_read_timeout_s: float
) -> tuple[str, dict[str, str], httpx.Timeout, httpx.Timeout]:
    url = (base_url or os.environ.get("ADE_URL") or DEFAULT_URL).rstrip("/")
    if not url.endswith(API_PREFIX):
        url += API_PREFIX
    token = token if token is not None else os.environ.get("ADE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stream_timeout = httpx.Timeout(timeout_s, read=stream_read_timeout_s)
    return url, headers, httpx.Timeout(timeout_s), stream_timeout


# The sync client ------------------------------------------------------------------------------------


class AdeClient:
    """A synchronous client. `base_url` defaults to `ADE_URL` (else http://127.0.0.1:8000), `token` to
    `ADE_TOKEN`. Use it as a context manager, or call `close()`.

    `stream_read_timeout_s` bounds the silence on an event stream (the server sends a keepalive every
    ADE_SSE_KEEPALIVE_S, 15 s by default) before it is treated as lost; `reconnect_timeout_s` is how long
    a lost stream keeps trying to reconnect before `AdeStreamError`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, headers, timeout, self._stream_timeout = _settings(
            base_url, token, timeout_s, stream_read_timeout_s
        )
        self.base_url = url
        self.reconnect_timeout_s = reconnect_timeout_s
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T], content: Iterable[bytes] | None = None) -> T:
        response = self._http.request(
            call.method,
            call.path,
            params=call.params,
            content=call.body if content is None else content,
            headers=call.headers,
        )
        if not response.is_success:
            raise api_error(response)
        return call.decode(response)

    # Workspaces and API keys

    def create_workspace(self, name: str) -> Workspace:
        """Create a workspace (the bootstrap token only)."""
        return self._send(_json_call("POST", "/workspaces", Workspace, WorkspaceCreate(name=name)))

    def get_workspace(self, workspace_id: str) -> Workspace:
        return self._send(_json_call("GET", f"/workspaces/{_seg(workspace_id)}", Workspace))

    def create_api_key(
        self, workspace_id: str, name: str, role: Role, *, expires_at: datetime | None = None
    ) -> ApiKeyCreated:
        """Create an API key; its `secret` is in this answer only."""
        body = {"name": name, "role": role, **({"expires_at": expires_at} if expires_at else {})}
        path = f"/workspaces/{_seg(workspace_id)}/api-keys"
        return self._send(_json_call("POST", path, ApiKeyCreated, body))

    def list_api_keys(self, workspace_id: str) -> list[ApiKeyResource]:
        path = f"/workspaces/{_seg(workspace_id)}/api-keys"
        return self._send(_json_call("GET", path, list[ApiKeyResource]))

    def revoke_api_key(self, key_id: str) -> None:
        self._send(_Call("DELETE", f"/api-keys/{_seg(key_id)}", _no_content))

    # Configurations

    def create_configuration(
        self, workspace_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        """Create a configuration; a mapping is validated locally first (`msgspec.ValidationError`)."""
        path = f"/workspaces/{_seg(workspace_id)}/configurations"
        return self._send(_json_call("POST", path, Configuration, _configuration_body(config)))

    def list_configurations(self, workspace_id: str) -> list[Configuration]:
        path = f"/workspaces/{_seg(workspace_id)}/configurations"
        return self._send(_json_call("GET", path, list[Configuration]))

    def get_configuration(self, configuration_id: str) -> Configuration:
        return self._send(_json_call("GET", f"/configurations/{_seg(configuration_id)}", Configuration))

    def replace_configuration(
        self, configuration_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        """Replace a configuration (`PUT`): a secret sent as `{"secret": true}` keeps its stored value."""
        path = f"/configurations/{_seg(configuration_id)}"
        return self._send(_json_call("PUT", path, Configuration, _configuration_body(config)))

    def delete_configuration(self, configuration_id: str) -> None:
        self._send(_Call("DELETE", f"/configurations/{_seg(configuration_id)}", _no_content))

    # Artifacts

    def upload_artifact(
        self,
        workspace_id: str,
        source: FileSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Artifact:
        """Upload `bytes`, or the file at a path (streamed; `filename` defaults to its base name)."""
        if isinstance(source, bytes):
            return self._send(_upload_call(workspace_id, filename, content_type, None), [source])
        path = Path(source)
        name = filename or path.name
        call = _upload_call(workspace_id, name, content_type or _guess_type(name), path.stat().st_size)
        return self._send(call, _iter_file(path))

    def download_artifact(self, key: str, *, workspace_id: str | None = None) -> bytes:
        """An artifact's bytes (`workspace_id` is needed with the bootstrap token only)."""
        params: _Params = [("workspace_id", workspace_id)] if workspace_id else []
        return self._send(_Call("GET", f"/artifacts/{_seg(key)}", _content, params=params))

    # Runs

    def create_run(
        self,
        configuration_id: str,
        *,
        options: RunOptions | None = None,
        input_artifacts: Sequence[InputArtifact] | None = None,
        commit: Commit | None = None,
    ) -> RunResource:
        """Create (queue) a run. `input_artifacts` are added to `options.input_artifacts`."""
        body = _run_body(options, input_artifacts, commit)
        path = f"/configurations/{_seg(configuration_id)}/runs"
        return self._send(_json_call("POST", path, RunResource, body))

    def get_run(self, run_id: str) -> RunResource:
        """A run, by id or by a unique prefix of its id."""
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}", RunResource))

    def cancel_run(self, run_id: str) -> RunResource:
        """Cancel: a queued run ends `cancelled` at once; a running one once its step is stopped."""
        return self._send(_json_call("POST", f"/runs/{_seg(run_id)}/cancel", RunResource))

    def rerun(self, run_id: str) -> RunResource:
        """A new attempt with the same plan and inputs."""
        return self._send(_json_call("POST", f"/runs/{_seg(run_id)}/rerun", RunResource))

    def list_runs(
        self,
        *,
        workspace_id: str | None = None,
        configuration_id: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        branch: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[RunResource]:
        """Runs, newest first, fetched a page at a time (following `next_cursor`), at most `limit`."""
        return self._paged(_list_runs_pages(workspace_id, configuration_id, status, branch, limit, page_size))

    def _paged(self, pages: _Pages[P, T]) -> Iterator[T]:
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._send(call))

    def wait_for_run(self, run_id: str) -> RunResource:
        """Wait for a run (id or unique prefix) to end, following its events from where it stands now."""
        run = self.get_run(run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            return run
        after = self.get_run_diagnostics(run.id).last_sequence
        for _ in self.events(run.id, after_sequence=after):
            pass
        return self.get_run(run.id)

    def get_run_summary(self, run_id: str) -> RunSummary:
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}/summary", RunSummary))

    def get_run_plan(self, run_id: str) -> Plan:
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}/plan", Plan))

    def list_run_inputs(self, run_id: str) -> list[InputFile]:
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}/inputs", list[InputFile]))

    def list_run_outputs(self, run_id: str) -> list[OutputFile]:
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}/outputs", OutputListing)).items

    def download_run_output(self, run_id: str, path: str) -> bytes:
        """An output file's bytes; `path` as listed (relative to the output directory)."""
        url = f"/runs/{_seg(run_id)}/outputs/{quote(path.lstrip('/'))}"
        return self._send(_Call("GET", url, _content))

    def get_run_diagnostics(self, run_id: str) -> RunDiagnostics:
        return self._send(_json_call("GET", f"/runs/{_seg(run_id)}/diagnostics", RunDiagnostics))

    # Events and logs

    def events_page(self, run_id: str, *, after_sequence: int = 0, limit: int = 1000) -> EventsPage:
        """One JSON page of a run's events (no waiting for new ones)."""
        path = f"/runs/{_seg(run_id)}/events"
        call = _json_call("GET", path, EventsPage, after_sequence=after_sequence, limit=limit)
        return self._send(call)

    def events(self, run_id: str, *, after_sequence: int = 0) -> Iterator[Event]:
        """A run's events after `after_sequence`, live, each exactly once and in order, until it ends.

        Reconnects (with `Last-Event-ID`) on network errors, server restarts and 5xx answers.
        """
        return self._follow(f"/runs/{_seg(run_id)}/events", after_sequence)

    def logs(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> Iterator[str]:
        """A run's console lines (both streams, or `stream` only), without their line ends.

        `follow=False`: the lines logged so far (JSON pages of `GET /runs/{id}/logs`). `follow=True`: all of
        them and then new ones until the run ends, read from `events()` (filtering `console.line`), so a
        follow survives reconnects exactly like `events()` does.
        """
        if follow:
            yield from _console_lines(self.events(run_id), stream)
            return
        after = 0
        while True:
            page = self._send(_console_page_call(run_id, after, stream))
            for item in page.items:
                yield item.message
            if page.next_after_sequence <= after:
                return
            after = page.next_after_sequence

    def _follow(self, path: str, after_sequence: int) -> Iterator[Event]:
        resume = _Resume(after_sequence, self.reconnect_timeout_s)
        while True:
            params, headers = resume.request()
            try:
                with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=self._stream_timeout
                ) as response:
                    if not response.is_success:
                        response.read()
                    resume.connected(response)
                    for sse in EventSource(response).iter_sse():
                        if (event := resume.accept(sse)) is not None:
                            yield event
                        elif resume.ended:
                            return
                raise _Retry("the stream closed before its end")
            except SSEError as exc:
                raise _sse_error(exc) from exc
            except _RECONNECT as exc:
                delay = resume.failed(exc)
            time.sleep(delay)

    # Builds

    def create_build(
        self, workspace_id: str, configuration_id: str, *, force: bool = False, wait: bool = False
    ) -> BuildResource:
        """Build a configuration's environment: a ready build with the same fingerprint is reused (a new
        record with `reused_from`), one being prepared is joined, else one starts; `force` rebuilds.

        `wait=True` returns once the build has ended, followed on its event stream (reconnecting like
        `build_events`) rather than by holding the request open.
        """
        build = self._send(_create_build_call(workspace_id, configuration_id, force))
        return self.wait_for_build(build.id) if wait else build

    def list_builds(
        self, configuration_id: str, *, limit: int | None = None, page_size: int = 100
    ) -> Iterator[BuildResource]:
        """A configuration's builds, newest first, a page at a time (`before` = the last one's id), at most
        `limit`."""
        return self._paged(_list_builds_pages(configuration_id, limit, page_size))

    def get_build(self, build_id: str) -> BuildResource:
        """A build, by id or by a unique prefix of its id."""
        return self._send(_json_call("GET", _build_path(build_id), BuildResource))

    def inspect_build(self, build_id: str) -> BuildInspection:
        """Constructor, owner, fingerprint, flags, reused from, interpreter, spec (without secrets)."""
        return self._send(_json_call("GET", _build_path(build_id, "/inspect"), BuildInspection))

    def cancel_build(self, build_id: str) -> BuildResource:
        """Cancel a queued (at once) or building build; `ConflictError` (`build_finished`) once it ended."""
        return self._send(_json_call("POST", _build_path(build_id, "/cancel"), BuildResource))

    def wait_for_build(self, build_id: str) -> BuildResource:
        """Wait for a build (id or unique prefix) to end (`ready`, `failed`, `cancelled`)."""
        build = self.get_build(build_id)
        if build.status not in TERMINAL_BUILD_STATUSES:
            for _ in self.build_events(build.id):
                pass
            build = self.get_build(build.id)
        return build

    def build_events(self, build_id: str, *, after_sequence: int = 0) -> Iterator[Event]:
        """A build's events after `after_sequence`, exactly like `events()` for a run: live, each once and in
        order, resumed with `Last-Event-ID` across reconnects, until `build.completed`. `GoneError`
        (`build_expired`) once retention removed the build's logs."""
        return self._follow(_build_path(build_id, "/events"), after_sequence)

    def build_logs(self, build_id: str, *, follow: bool = False) -> Iterator[str]:
        """A build's console lines, without their line ends; nothing once the build expired.

        `follow=False`: the lines logged so far (`GET /builds/{id}/logs`, text). `follow=True`: all of them
        and then new ones until the build ends, read from `build_events()` like `logs(follow=True)` for a
        run: the text stream has no sequence to resume from, and sends nothing while a phase is silent.
        """
        if follow:
            with contextlib.suppress(GoneError):  # expired: no lines, like the text endpoint's 204
                yield from _console_lines(self.build_events(build_id))
            return
        path, headers = _build_logs_request(build_id)
        with self._http.stream("GET", path, headers=headers) as response:
            if not response.is_success:
                response.read()
                raise api_error(response)
            lines = _Lines()
            for text in response.iter_text():
                yield from lines.feed(text)
            yield from lines.end()


def _console_page_call(run_id: str, after: int, stream: ConsoleStream | None) -> _Call[ConsolePage]:
    return _json_call(
        "GET", f"/runs/{_seg(run_id)}/logs", ConsolePage, after_sequence=after, limit=1000, stream=stream
    )


# The async client -----------------------------------------------------------------------------------


class AsyncAdeClient:
    """The asynchronous twin of `AdeClient`: the same methods, awaitable; iterators are async iterators.

    Close an async iterator you leave early (`contextlib.aclosing`) to release its connection promptly.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers, timeout, self._stream_timeout = _settings(
            base_url, token, timeout_s, stream_read_timeout_s
        )
        self.base_url = url
        self.reconnect_timeout_s = reconnect_timeout_s
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T], content: AsyncIterator[bytes] | bytes | None = None) -> T:
        response = await self._http.request(
            call.method,
            call.path,
            params=call.params,
            content=call.body if content is None else content,
            headers=call.headers,
        )
        if not response.is_success:
            raise api_error(response)
        return call.decode(response)

    # Workspaces and API keys

    async def create_workspace(self, name: str) -> Workspace:
        return await self._send(_json_call("POST", "/workspaces", Workspace, WorkspaceCreate(name=name)))

    async def get_workspace(self, workspace_id: str) -> Workspace:
        return await self._send(_json_call("GET", f"/workspaces/{_seg(workspace_id)}", Workspace))

    async def create_api_key(
        self, workspace_id: str, name: str, role: Role, *, expires_at: datetime | None = None
    ) -> ApiKeyCreated:
        body = {"name": name, "role": role, **({"expires_at": expires_at} if expires_at else {})}
        path = f"/workspaces/{_seg(workspace_id)}/api-keys"
        return await self._send(_json_call("POST", path, ApiKeyCreated, body))

    async def list_api_keys(self, workspace_id: str) -> list[ApiKeyResource]:
        path = f"/workspaces/{_seg(workspace_id)}/api-keys"
        return await self._send(_json_call("GET", path, list[ApiKeyResource]))

    async def revoke_api_key(self, key_id: str) -> None:
        await self._send(_Call("DELETE", f"/api-keys/{_seg(key_id)}", _no_content))

    # Configurations

    async def create_configuration(
        self, workspace_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        path = f"/workspaces/{_seg(workspace_id)}/configurations"
        return await self._send(_json_call("POST", path, Configuration, _configuration_body(config)))

    async def list_configurations(self, workspace_id: str) -> list[Configuration]:
        path = f"/workspaces/{_seg(workspace_id)}/configurations"
        return await self._send(_json_call("GET", path, list[Configuration]))

    async def get_configuration(self, configuration_id: str) -> Configuration:
        return await self._send(_json_call("GET", f"/configurations/{_seg(configuration_id)}", Configuration))

    async def replace_configuration(
        self, configuration_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        path = f"/configurations/{_seg(configuration_id)}"
        return await self._send(_json_call("PUT", path, Configuration, _configuration_body(config)))

    async def delete_configuration(self, configuration_id: str) -> None:
        await self._send(_Call("DELETE", f"/configurations/{_seg(configuration_id)}", _no_content))

    # Artifacts

    async def upload_artifact(
        self,
        workspace_id: str,
        source: FileSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Artifact:
        if isinstance(source, bytes):
            return await self._send(_upload_call(workspace_id, filename, content_type, None), source)
        path = Path(source)
        name = filename or path.name
        size = (await anyio.Path(path).stat()).st_size
        call = _upload_call(workspace_id, name, content_type or _guess_type(name), size)
        return await self._send(call, _aiter_file(path))

    async def download_artifact(self, key: str, *, workspace_id: str | None = None) -> bytes:
        params: _Params = [("workspace_id", workspace_id)] if workspace_id else []
        return await self._send(_Call("GET", f"/artifacts/{_seg(key)}", _content, params=params))

    # Runs

    async def create_run(
        self,
        configuration_id: str,
        *,
        options: RunOptions | None = None,
        input_artifacts: Sequence[InputArtifact] | None = None,
        commit: Commit | None = None,
    ) -> RunResource:
        body = _run_body(options, input_artifacts, commit)
        path = f"/configurations/{_seg(configuration_id)}/runs"
        return await self._send(_json_call("POST", path, RunResource, body))

    async def get_run(self, run_id: str) -> RunResource:
        return await self._send(_json_call("GET", f"/runs/{_seg(run_id)}", RunResource))

    async def cancel_run(self, run_id: str) -> RunResource:
        return await self._send(_json_call("POST", f"/runs/{_seg(run_id)}/cancel", RunResource))

    async def rerun(self, run_id: str) -> RunResource:
        return await self._send(_json_call("POST", f"/runs/{_seg(run_id)}/rerun", RunResource))

    def list_runs(
        self,
        *,
        workspace_id: str | None = None,
        configuration_id: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        branch: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[RunResource]:
        return self._paged(_list_runs_pages(workspace_id, configuration_id, status, branch, limit, page_size))

    async def _paged(self, pages: _Pages[P, T]) -> AsyncIterator[T]:
        while (call := pages.next_call()) is not None:
            for item in pages.take(await self._send(call)):
                yield item

    async def wait_for_run(self, run_id: str) -> RunResource:
        run = await self.get_run(run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            return run
        after = (await self.get_run_diagnostics(run.id)).last_sequence
        async for _ in self.events(run.id, after_sequence=after):
            pass
        return await self.get_run(run.id)

    async def get_run_summary(self, run_id: str) -> RunSummary:
        return await self._send(_json_call("GET", f"/runs/{_seg(run_id)}/summary", RunSummary))

    async def get_run_plan(self, run_id: str) -> Plan:
        return await self._send(_json_call("GET", f"/runs/{_seg(run_id)}/plan", Plan))

    async def list_run_inputs(self, run_id: str) -> list[InputFile]:
        return await self._send(_json_call("GET", f"/runs/{_seg(run_id)}/inputs", list[InputFile]))

    async def list_run_outputs(self, run_id: str) -> list[OutputFile]:
        call = _json_call("GET", f"/runs/{_seg(run_id)}/outputs", OutputListing)
        return (await self._send(call)).items

    async def download_run_output(self, run_id: str, path: str) -> bytes:
        url = f"/runs/{_seg(run_id)}/outputs/{quote(path.lstrip('/'))}"
        return await self._send(_Call("GET", url, _content))

    async def get_run_diagnostics(self, run_id: str) -> RunDiagnostics:
        return await self._send(_json_call("GET", f"/runs/{_seg(run_id)}/diagnostics", RunDiagnostics))

    # Events and logs

    async def events_page(self, run_id: str, *, after_sequence: int = 0, limit: int = 1000) -> EventsPage:
        path = f"/runs/{_seg(run_id)}/events"
        call = _json_call("GET", path, EventsPage, after_sequence=after_sequence, limit=limit)
        return await self._send(call)

    def events(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[Event]:
        """See `AdeClient.events`."""
        return self._follow(f"/runs/{_seg(run_id)}/events", after_sequence)

    async def logs(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> AsyncIterator[str]:
        """See `AdeClient.logs`."""
        if follow:
            async for line in _aconsole_lines(self.events(run_id), stream):
                yield line
            return
        after = 0
        while True:
            page = await self._send(_console_page_call(run_id, after, stream))
            for item in page.items:
                yield item.message
            if page.next_after_sequence <= after:
                return
            after = page.next_after_sequence

    async def _follow(self, path: str, after_sequence: int) -> AsyncIterator[Event]:
        resume = _Resume(after_sequence, self.reconnect_timeout_s)
        while True:
            params, headers = resume.request()
            try:
                async with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=self._stream_timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                    resume.connected(response)
                    async for sse in EventSource(response).aiter_sse():
                        if (event := resume.accept(sse)) is not None:
                            yield event
                        elif resume.ended:
                            return
                raise _Retry("the stream closed before its end")
            except SSEError as exc:
                raise _sse_error(exc) from exc
            except _RECONNECT as exc:
                delay = resume.failed(exc)
            await anyio.sleep(delay)

    # Builds (see AdeClient)

    async def create_build(
        self, workspace_id: str, configuration_id: str, *, force: bool = False, wait: bool = False
    ) -> BuildResource:
        build = await self._send(_create_build_call(workspace_id, configuration_id, force))
        return await self.wait_for_build(build.id) if wait else build

    def list_builds(
        self, configuration_id: str, *, limit: int | None = None, page_size: int = 100
    ) -> AsyncIterator[BuildResource]:
        return self._paged(_list_builds_pages(configuration_id, limit, page_size))

    async def get_build(self, build_id: str) -> BuildResource:
        return await self._send(_json_call("GET", _build_path(build_id), BuildResource))

    async def inspect_build(self, build_id: str) -> BuildInspection:
        return await self._send(_json_call("GET", _build_path(build_id, "/inspect"), BuildInspection))

    async def cancel_build(self, build_id: str) -> BuildResource:
        return await self._send(_json_call("POST", _build_path(build_id, "/cancel"), BuildResource))

    async def wait_for_build(self, build_id: str) -> BuildResource:
        build = await self.get_build(build_id)
        if build.status not in TERMINAL_BUILD_STATUSES:
            async for _ in self.build_events(build.id):
                pass
            build = await self.get_build(build.id)
        return build

    def build_events(self, build_id: str, *, after_sequence: int = 0) -> AsyncIterator[Event]:
        return self._follow(_build_path(build_id, "/events"), after_sequence)

    async def build_logs(self, build_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        if follow:
            with contextlib.suppress(GoneError):
                async for line in _aconsole_lines(self.build_events(build_id)):
                    yield line
            return
        path, headers = _build_logs_request(build_id)
        async with self._http.stream("GET", path, headers=headers) as response:
            if not response.is_success:
                await response.aread()
                raise api_error(response)
            lines = _Lines()
            async for text in response.aiter_text():
                for line in lines.feed(text):
                    yield line
            for line in lines.end():
                yield line
