"""Runs: create (optionally answering with the run's SSE stream), read, list, events, stream tokens."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import Parameter
from litestar.response import File, Stream

from ade.api import auth
from ade.api.deps import API_PREFIX, Services
from ade.api.streams import (
    EventsFormat,
    EventsPage,
    events_response,
    resume_point,
    sse_response,
    wants_stream,
)
from ade.auth import Principal
from ade.errors import NotFound
from ade.events import StreamRef
from ade.models import Page, RunCreate, RunResource, RunStatus, StreamToken
from ade.runs import create_run


class RunController(Controller):
    tags = ["runs"]

    @post("/configurations/{configuration_id:str}/runs", status_code=201, summary="Create a run")
    async def create(
        self,
        configuration_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: RunCreate | None = None,
    ) -> Response[RunResource] | Stream:
        """`stream=true` (or `Accept: text/event-stream`) answers with the SSE stream from sequence 1."""
        body = data or RunCreate()
        cfg = await auth.configuration(services, principal, configuration_id, "operator")
        run = await create_run(services.settings, services.redis, services.arq, services.store, cfg, body)
        await services.audit.record(
            principal.actor, run.workspace_id, "run.create", run.id, {"configuration_id": cfg.id}
        )
        if body.stream or wants_stream(request, None):
            return await sse_response(
                services, principal, StreamRef.for_run(services.settings.data_dir, run.id), 0
            )
        return Response(RunResource.of(run, API_PREFIX), status_code=201)

    @get("/runs/{run_id:str}", summary="Get a run")
    async def read(self, run_id: str, services: Services, principal: Principal) -> RunResource:
        return RunResource.of(await auth.run(services, principal, run_id), API_PREFIX)

    @get("/workspaces/{workspace_id:str}/runs", summary="List a workspace's runs, newest first")
    async def list(
        self,
        workspace_id: str,
        services: Services,
        principal: Principal,
        status: list[RunStatus] | None = None,
        configuration_id: str | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
    ) -> Response[Page]:
        await auth.workspace(services, principal, workspace_id)
        runs, next_cursor = await services.store.list_runs(
            workspace_id,
            limit=limit,
            before=cursor,
            statuses=frozenset(status or ()),
            configuration_id=configuration_id,
        )
        page = Page(items=[RunResource.of(run, API_PREFIX) for run in runs], next_cursor=next_cursor)
        headers = {}
        if next_cursor:
            query = f"limit={limit}&cursor={next_cursor}"
            query += "".join(f"&status={s}" for s in status or ())
            if configuration_id:
                query += f"&configuration_id={configuration_id}"
            headers["Link"] = f'<{API_PREFIX}/workspaces/{workspace_id}/runs?{query}>; rel="next"'
        return Response(page, headers=headers)

    @get("/runs/{run_id:str}/events", summary="A run's events: SSE, JSON page or NDJSON")
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
        last_event_id: Annotated[str | None, Parameter(header="Last-Event-ID")] = None,
        token: Annotated[str | None, Parameter(description="a stream token, for EventSource")] = None,
    ) -> Response[EventsPage] | Stream:
        run = await auth.run(services, principal, run_id)
        return await events_response(
            services,
            principal,
            StreamRef.for_run(services.settings.data_dir, run.id),
            as_stream=wants_stream(request, stream),
            after_sequence=resume_point(after_sequence, last_event_id),
            limit=limit,
            format=format,
        )

    @post("/runs/{run_id:str}/stream-token", status_code=201, summary="A short-lived token for EventSource")
    async def stream_token(self, run_id: str, services: Services, principal: Principal) -> StreamToken:
        run = await auth.run(services, principal, run_id)
        token, expires_at = services.stream_tokens.issue(principal, run.workspace_id, run.id)
        return StreamToken(
            token=token,
            stream_id=run.id,
            expires_at=expires_at,
            events_url=f"{API_PREFIX}/runs/{run.id}/events?stream=true&token={token}",
        )

    @get("/runs/{run_id:str}/logfile", summary="The run's raw NDJSON event log")
    async def logfile(self, run_id: str, services: Services, principal: Principal) -> File:
        run = await auth.run(services, principal, run_id)
        path = StreamRef.for_run(services.settings.data_dir, run.id).log_path
        if not path.exists():
            raise NotFound(f"run {run_id!r} has no log yet", code="log_not_found")
        return File(path, media_type="application/x-ndjson", filename=f"{run.id}.ndjson")
