"""What a run shows: events, console logs, the raw log file, summary, plan, inputs, outputs, diagnostics."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from datetime import datetime
from functools import partial
from io import FileIO
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio
import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import HeaderParameter, Parameter
from litestar.response import File, Stream

from ade.api import auth
from ade.api.configurations import public_environment, public_steps
from ade.api.deps import API_PREFIX, Services
from ade.api.openapi import (
    BINARY,
    JSON,
    NDJSON,
    NDJSON_DESCRIPTION,
    SSE,
    SSE_SCHEMA,
    TEXT,
    Answer,
    documented,
)
from ade.api.streams import (
    EventsFormat,
    EventsPage,
    events_response,
    logs_response,
    resume_point,
    wants_stream,
)
from ade.core import paths, step_ids
from ade.core.errors import Invalid, NotFound
from ade.core.models import InputArtifact, Plan, Run
from ade.core.views import InputFile, OutputListing, RunDiagnostics, Timings
from ade.events import eventlog
from ade.events.envelope import Event, StreamRef
from ade.lifecycle import transitions
from ade.records.auth import Principal
from ade.records.outputs import (
    ARCHIVE_MEDIA_TYPES,
    ArchiveFormat,
    content_type_of,
    list_outputs,
    open_output,
    outputs_size,
    owners_of,
    parse_range,
    tar_gz_pieces,
    zip_pieces,
)
from ade.records.summary import ConsolePage, RunSummary, StepSummary

ConsoleStream = Literal["stdout", "stderr"]

# What the events endpoints (a run's, a build's) answer: one status, three media types.
EVENTS_ANSWER = Answer(
    200,
    "The stream's events after `after_sequence`: a JSON page (`format=json`, the default), NDJSON "
    f"(`format=ndjson`: {NDJSON_DESCRIPTION}) or, with `stream=true` or `Accept: text/event-stream`, the "
    "live SSE stream, which ends after the stream's last event.",
    {JSON: EventsPage, NDJSON: Event, SSE: SSE_SCHEMA},
)
EVENTS_DOC = documented(EVENTS_ANSWER, errors=(429,))
TEXT_LINES: dict[str, Any] = {"type": "string", "description": "console lines, one per line"}
ATTACHMENT = {"Content-Disposition": "`attachment`, with the file's name"}

StepFilter = Annotated[str | None, Parameter(description="only the outputs this step produced")]
_CHUNK_BYTES = 256 * 1024


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    return round((end - start).total_seconds() * 1000) if start and end else None


def stream_of(services: Services, run: Run) -> StreamRef:
    return StreamRef.for_run(services.settings.data_dir, run.id)


class RunViewController(Controller):
    tags = ["runs"]

    @get("/runs/{run_id:str}/events", summary="A run's events: SSE, JSON page or NDJSON", opt=EVENTS_DOC)
    async def events(
        self,
        run_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        stream: bool | None = None,
        after_sequence: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 1000,
        format: EventsFormat = "json",
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID")] = None,
        token: Annotated[str | None, Parameter(description="a stream token, for EventSource")] = None,
    ) -> Response[EventsPage] | Stream:
        run = await auth.run(services, principal, run_id)
        return await events_response(
            services,
            principal,
            stream_of(services, run),
            as_stream=wants_stream(request, stream),
            after_sequence=resume_point(after_sequence, last_event_id),
            limit=limit,
            format=format,
        )

    @get(
        "/runs/{run_id:str}/logs",
        summary="Console lines: a JSON page, or text (follow=true streams)",
        opt=documented(
            Answer(
                200,
                "A JSON page of console lines, or (`format=text`, `follow=true`) `text/plain`: the lines' "
                "text, one per line; `follow=true` streams new lines until the run ends.",
                {JSON: ConsolePage, TEXT: TEXT_LINES},
            ),
            errors=(429,),
        ),
    )
    async def logs(
        self,
        run_id: str,
        services: Services,
        principal: Principal,
        after_sequence: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 1000,
        stream: ConsoleStream | None = None,
        format: Literal["json", "text"] = "json",
        follow: bool = False,
        token: Annotated[str | None, Parameter(description="a stream token, for EventSource")] = None,
    ) -> Response[ConsolePage] | Stream:
        """`format=text` (or `follow=true`) answers `text/plain`, one console line per line; `follow=true`
        keeps the response open and streams new lines until the run ends."""
        run = await auth.run(services, principal, run_id)
        return await logs_response(
            services,
            principal,
            stream_of(services, run),
            after_sequence=after_sequence,
            limit=limit,
            console_stream=stream,
            as_text=format == "text" or follow,
            follow=follow,
        )

    @get(
        "/runs/{run_id:str}/logfile",
        summary="The run's raw NDJSON event log",
        media_type="application/x-ndjson",
        opt=documented(
            Answer(200, f"The log's complete lines. {NDJSON_DESCRIPTION}", {NDJSON: Event}, ATTACHMENT)
        ),
    )
    async def logfile(self, run_id: str, services: Services, principal: Principal) -> Stream:
        """The log's complete lines as they are when asked. The log is opened without following links (a
        step may have replaced it with one): a log that is a link, or not a regular file, is absent."""
        run = await auth.run(services, principal, run_id)
        try:
            fd = eventlog.open_for_reading(stream_of(services, run).log_path)
        except FileNotFoundError:
            raise NotFound(f"run {run_id!r} has no log yet", code="log_not_found") from None
        handle = os.fdopen(fd, "rb", buffering=0)
        try:
            size = eventlog.complete_size(fd)
        except BaseException:
            handle.close()
            raise
        headers = {"Content-Length": str(size), "Content-Disposition": _attachment(f"{run.id}.ndjson")}
        return Stream(_file_slice(handle, 0, size - 1), media_type="application/x-ndjson", headers=headers)

    @get("/runs/{run_id:str}/summary", summary="Status, timings, steps, event counts, progress, outputs")
    async def summary(self, run_id: str, services: Services, principal: Principal) -> RunSummary:
        run = await auth.run(services, principal, run_id)
        fold = services.summaries.fold(stream_of(services, run).log_path)
        data_dir = services.settings.data_dir
        outputs_dir = paths.run_dir(data_dir, run.id).outputs
        _, outputs_count = await anyio.to_thread.run_sync(partial(outputs_size, outputs_dir, root=data_dir))
        return RunSummary(
            run_id=run.id,
            status=run.status,
            attempt=run.attempt,
            duration_ms=_ms(run.started_at, run.completed_at),
            exit_code=run.exit_code,
            failure=msgspec.to_builtins(run.failure) if run.failure else None,
            steps=[
                StepSummary.of(state, step, step_ids.step_id(run.id, index))
                for index, (state, step) in enumerate(
                    zip(transitions.steps_of(run), run.plan.steps, strict=True)
                )
            ],
            events=services.summaries.counts(fold),
            last_progress=fold.last_progress,
            summary=fold.summary,
            outputs_count=outputs_count,
        )

    @get("/runs/{run_id:str}/plan", summary="The configuration snapshot the run executes")
    async def plan(self, run_id: str, services: Services, principal: Principal) -> Plan:
        run = await auth.run(services, principal, run_id)
        return msgspec.structs.replace(
            run.plan,
            environment=public_environment(run.plan.environment),
            steps=public_steps(run.plan.steps),
        )

    @get("/runs/{run_id:str}/inputs", summary="The input artifacts placed in the run's inputs/")
    async def inputs(self, run_id: str, services: Services, principal: Principal) -> list[InputFile]:
        run = await auth.run(services, principal, run_id)
        return [await _input_file(services, run, item) for item in run.input_artifacts]

    @get("/runs/{run_id:str}/outputs", summary="The run's outputs, each with the step that produced it")
    async def outputs(
        self, run_id: str, services: Services, principal: Principal, step: StepFilter = None
    ) -> OutputListing:
        """Files its steps wrote to `$ADE_OUTPUT_DIR` and the files their `output_paths` matched (copied
        there), with path, size, content type, sha256 and `step` (null: unknown); `step=` lists one step's."""
        run = await auth.run(services, principal, run_id)
        owners = _owners(run, step)
        data_dir = services.settings.data_dir
        items = await anyio.to_thread.run_sync(
            partial(list_outputs, paths.run_dir(data_dir, run.id).outputs, root=data_dir, owners=owners)
        )
        if step is not None:
            items = [item for item in items if item.step == step]
        base = f"{API_PREFIX}/runs/{run.id}/outputs"
        urls = {item.path: f"{base}/{quote(item.path)}" for item in items}
        return OutputListing(items=items, download_urls=urls)

    @get(
        "/runs/{run_id:str}/outputs.tar.gz",
        summary="All the run's outputs as one gzip-compressed tar, streamed",
        media_type=ARCHIVE_MEDIA_TYPES["tar.gz"],
        opt=documented(
            Answer(
                200,
                "a gzip-compressed tar of the outputs (Content-Disposition names it)",
                {ARCHIVE_MEDIA_TYPES["tar.gz"]: BINARY},
                ATTACHMENT,
            )
        ),
    )
    async def outputs_tar_gz(
        self, run_id: str, services: Services, principal: Principal, step: StepFilter = None
    ) -> Stream:
        """Every output (or one step's, `step=`) in a tar (pax) compressed with gzip, made while it is sent:
        memory stays bounded whatever the outputs' size. Files are read without following links."""
        return await _archive(services, principal, run_id, "tar.gz", step)

    @get(
        "/runs/{run_id:str}/outputs.zip",
        summary="All the run's outputs as one zip, streamed",
        media_type=ARCHIVE_MEDIA_TYPES["zip"],
        opt=documented(
            Answer(
                200,
                "a zip of the outputs (Content-Disposition names it)",
                {ARCHIVE_MEDIA_TYPES["zip"]: BINARY},
                ATTACHMENT,
            )
        ),
    )
    async def outputs_zip(
        self, run_id: str, services: Services, principal: Principal, step: StepFilter = None
    ) -> Stream:
        """Every output (or one step's, `step=`) in a zip (deflate, ZIP64 when needed, sizes after each
        entry's data), made while it is sent: memory stays bounded. Files are read without following links."""
        return await _archive(services, principal, run_id, "zip", step)

    @get(
        "/runs/{run_id:str}/outputs/{path:path}",
        summary="Download an output (Range supported)",
        opt=documented(
            Answer(
                200,
                "The whole file, in the media type its name implies",
                {"*/*": BINARY},
                {**ATTACHMENT, "Accept-Ranges": "`bytes`"},
            ),
            Answer(
                206,
                "The bytes the `Range` header selected",
                {"*/*": BINARY},
                {"Content-Range": "`bytes <first>-<last>/<size>`", "Accept-Ranges": "`bytes`"},
            ),
            errors=(416,),
        ),
    )
    async def output(
        self,
        run_id: str,
        path: str,
        services: Services,
        principal: Principal,
        range_header: Annotated[str | None, HeaderParameter(name="Range")] = None,
    ) -> File | Stream:
        run = await auth.run(services, principal, run_id)
        data_dir = services.settings.data_dir
        requested = path.lstrip("/")
        handle = await anyio.to_thread.run_sync(
            partial(open_output, paths.run_dir(data_dir, run.id).outputs, requested, root=data_dir)
        )
        try:  # from here on, only the open file is read: what was checked is what is served
            size = os.fstat(handle.fileno()).st_size
            name = requested.rsplit("/", 1)[-1]
            content_type = content_type_of(name)
            wanted = parse_range(range_header, size)
        except BaseException:
            handle.close()
            raise
        headers = {"Accept-Ranges": "bytes"}
        if wanted is None:
            headers |= {"Content-Length": str(size), "Content-Disposition": _attachment(name)}
            return Stream(_file_slice(handle, 0, size - 1), media_type=content_type, headers=headers)
        start, end = wanted
        headers |= {"Content-Range": f"bytes {start}-{end}/{size}", "Content-Length": str(end - start + 1)}
        body = _file_slice(handle, start, end)
        return Stream(body, status_code=206, media_type=content_type, headers=headers)

    @get(
        "/runs/{run_id:str}/diagnostics",
        summary="Attempt, worker, timings, environment (no secrets), failure",
    )
    async def diagnostics(self, run_id: str, services: Services, principal: Principal) -> RunDiagnostics:
        run = await auth.run(services, principal, run_id)
        log_path = stream_of(services, run).log_path
        tail = eventlog.tail(log_path)
        return RunDiagnostics(
            run_id=run.id,
            status=run.status,
            attempt=run.attempt,
            rerun_of=run.rerun_of,
            worker=run.worker,
            timings=Timings(
                queued_at=run.created_at,
                started_at=run.started_at,
                completed_at=run.completed_at,
                queue_wait_ms=_ms(run.created_at, run.started_at),
                run_ms=_ms(run.started_at, run.completed_at),
            ),
            environment=msgspec.to_builtins(public_environment(run.plan.environment)),
            steps=public_steps(run.plan.steps),
            failure=run.failure,
            cancel_requested_by=run.cancel_requested_by,
            log_bytes=_log_bytes(log_path),
            last_sequence=tail.sequence if tail else 0,
        )


async def _input_file(services: Services, run: Run, item: InputArtifact) -> InputFile:
    artifact = await services.artifacts.get(run.workspace_id, item.key)
    return InputFile(
        name=item.name,
        key=item.key,
        size=artifact.size,
        content_type=artifact.content_type,
        download_url=f"{API_PREFIX}/artifacts/{item.key}",
    )


def _owners(run: Run, step: str | None) -> dict[str, str]:
    """Which step produced each output (`StepState.outputs`); `step`, when given, must be one of the run's."""
    if step is not None and step not in {planned.name for planned in run.plan.steps}:
        raise Invalid(
            f"run {run.id!r} has no step {step[:100]!r}",
            code="unknown_step",
            details=[{"key": "step", "source": "query", "message": "not a step of the run's plan"}],
        )
    return owners_of(transitions.steps_of(run))


async def _archive(
    services: Services, principal: Principal, run_id: str, kind: ArchiveFormat, step: str | None
) -> Stream:
    run = await auth.run(services, principal, run_id)
    owners = _owners(run, step)
    data_dir = services.settings.data_dir
    make = tar_gz_pieces if kind == "tar.gz" else zip_pieces
    include = None if step is None else (lambda path: owners.get(path) == step)
    pieces = make(paths.run_dir(data_dir, run.id).outputs, root=data_dir, include=include)
    name = f"{run.id}-outputs{'' if step is None else '-' + step}.{kind}"
    headers = {"Content-Disposition": _attachment(name)}
    return Stream(_in_thread(pieces), media_type=ARCHIVE_MEDIA_TYPES[kind], headers=headers)


async def _in_thread(pieces: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """A blocking generator's pieces, each made in a worker thread; closed (its files with it) however the
    response ends."""
    try:
        while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
            if piece:
                yield piece
    finally:
        pieces.close()


def _attachment(name: str) -> str:
    quoted = quote(name)
    return f'attachment; filename="{name}"' if quoted == name else f"attachment; filename*=utf-8''{quoted}"


def _log_bytes(log_path: Path) -> int:
    try:
        fd = eventlog.open_for_reading(log_path)
    except FileNotFoundError:
        return 0
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


async def _file_slice(handle: FileIO, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes `start`..`end` (inclusive) of an open file, then the file is closed. (Never started, the
    generator drops its file, which closes itself.)"""
    with handle:
        fd, position = handle.fileno(), start
        while position <= end:
            wanted = min(end - position + 1, _CHUNK_BYTES)
            chunk = await anyio.to_thread.run_sync(os.pread, fd, wanted, position)
            if not chunk:
                return  # the file shrank since it was measured: the response ends short
            position += len(chunk)
            yield chunk
