"""Runs: create (optionally answering with the run's SSE stream), read (id or unique prefix), list,
cancel, re-run, stream tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any, cast
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import HeaderParameter, Parameter
from litestar.response import Stream
from redis.exceptions import RedisError

from ade.api import auth
from ade.api.deps import API_PREFIX, Services
from ade.api.openapi import JSON, SSE, SSE_SCHEMA, Answer, documented
from ade.api.streams import sse_response, stream_token, wants_stream
from ade.core import ids, keys
from ade.core.errors import Invalid
from ade.core.models import (
    Configuration,
    Page,
    Run,
    RunCreate,
    RunRerun,
    RunResource,
    RunStatus,
    StreamToken,
)
from ade.events.envelope import StreamRef
from ade.lifecycle import queue, runs
from ade.lifecycle.builds import request_build
from ade.records import idempotency
from ade.records.artifacts import safe_input_name
from ade.records.auth import Principal

Limit = Annotated[int, Parameter(ge=1, le=100, description="runs per page")]
Before = Annotated[str | None, Parameter(description="cursor: runs older than this run id (`next_cursor`)")]
After = Annotated[str | None, Parameter(description="cursor: runs newer than this run id (`prev_cursor`)")]
IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", description="repeat-safe creation within 24 h")
]
PAGE_LINKS = '`<…?before=…>; rel="next"` (older runs), `<…?after=…>; rel="prev"` (newer runs)'
Statuses = Annotated[list[RunStatus] | None, Parameter(description="repeatable")]


def _id_bound(parameter: str, moment: datetime | None, *, upper: bool) -> str:
    """A `created_*` filter as a bound of the lexical range of run ids (open when the filter is absent)."""
    if moment is None:
        return "+" if upper else "-"
    try:
        return "[" + ids.time_bound(ids.RUN, moment, upper=upper)
    except (ValueError, OverflowError) as exc:  # also timestamp()'s own, for a naive moment near year 1
        raise Invalid(
            f"{parameter} is outside the times a run id can record",
            code="time_out_of_range",
            details=[{"key": parameter, "source": "query", "message": str(exc)}],
        ) from None


async def list_page(
    services: Services,
    request: Request[Any, Any, Any],
    index: str,
    *,
    limit: int,
    before: str | None,
    after: str | None,
    status: list[RunStatus] | None,
    configuration_id: str | None,
    branch: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> Response[Page]:
    """One page of runs, newest first, with `Link` headers to the next (older) and previous (newer) pages."""
    statuses = frozenset(status or ())

    def keep(run: Run) -> bool:
        return (
            (not statuses or run.status in statuses)
            and (configuration_id is None or run.configuration_id == configuration_id)
            and (branch is None or (run.commit is not None and run.commit.branch == branch))
        )

    found, more = await services.store.list_runs(
        index,
        limit=limit,
        before=before,
        after=after,
        lowest=_id_bound("created_after", created_after, upper=False),
        highest=_id_bound("created_before", created_before, upper=True),
        keep=keep,
    )
    older = found and (more if after is None else True)
    newer = found and (more if after is not None else before is not None)
    next_cursor = found[-1].id if older else None
    prev_cursor = found[0].id if newer else None
    base = [(k, v) for k, v in request.query_params.multi_items() if k not in ("before", "after")]
    links = []
    if next_cursor:
        links.append(f'<{request.url.path}?{urlencode([*base, ("before", next_cursor)])}>; rel="next"')
    if prev_cursor:
        links.append(f'<{request.url.path}?{urlencode([*base, ("after", prev_cursor)])}>; rel="prev"')
    page = Page(
        items=[RunResource.of(run, API_PREFIX) for run in found],
        next_cursor=next_cursor,
        prev_cursor=prev_cursor,
    )
    return Response(page, headers={"Link": ", ".join(links)} if links else {})


async def create_run(services: Services, principal: Principal, cfg: Configuration, body: RunCreate) -> Run:
    """A new run of a configuration the caller may run: inputs checked, build requested, queued, audited."""
    for item in body.options.input_artifacts:
        safe_input_name(item.name)
        await services.artifacts.get(cfg.workspace_id, item.key)
    run = runs.new_run(
        cfg,
        workspace_id=cfg.workspace_id,
        commit=body.commit,
        input_artifacts=body.options.input_artifacts,
    )
    if cfg.build is not None:  # start (or join, or reuse) the build its steps will run in
        build, mode = await request_build(
            services.settings,
            services.redis,
            services.arq,
            services.store,
            cfg,
            actor=principal.actor,
            force=False,
            record_reuse=False,
        )
        run.build_id, run.build_reused = build.environment_build_id, mode == "reused"
        await cast(Awaitable[int], services.redis.sadd(keys.build_users(run.build_id), run.id))
    await runs.submit_run(services.settings, services.redis, services.arq, services.store, run)
    await services.audit.record(
        principal.actor, run.workspace_id, "run.create", run.id, {"configuration_id": cfg.id}
    )
    return run


class RunController(Controller):
    tags = ["runs"]

    @post(
        "/configurations/{configuration_id:str}/runs",
        status_code=201,
        summary="Create a run",
        opt=documented(
            Answer(201, "The run, queued", {JSON: RunResource}),
            Answer(
                200,
                "With `stream: true` (or `Accept: text/event-stream`): the run's SSE stream from sequence 1",
                {SSE: SSE_SCHEMA},
            ),
            errors=(429,),
        ),
    )
    async def create(
        self,
        configuration_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: RunCreate | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[RunResource] | Stream:
        """`stream=true` (or `Accept: text/event-stream`) answers with the SSE stream from sequence 1.
        With `Idempotency-Key`, the same key and body within 24 h answer with the same run."""
        body = data or RunCreate()
        cfg = await auth.configuration(services, principal, configuration_id, "operator")
        scope = idempotency.scope_of(principal.actor, f"runs:{cfg.id}", idempotency_key)
        run = await idempotency.once(
            services.redis,
            scope,
            msgspec.json.encode(body),
            lambda: create_run(services, principal, cfg, body),
            services.store.get_run,
            lambda made: made.id,
        )
        if body.stream or wants_stream(request, None):
            return await sse_response(
                services, principal, StreamRef.for_run(services.settings.data_dir, run.id), 0
            )
        return Response(RunResource.of(run, API_PREFIX), status_code=201)

    @get("/runs/{run_id:str}", summary="Get a run (by id or a unique id prefix)")
    async def read(self, run_id: str, services: Services, principal: Principal) -> RunResource:
        run = await auth.run(services, principal, run_id)
        with contextlib.suppress(RedisError, OSError):  # while Redis is down the record alone answers
            return RunResource.of(run, API_PREFIX, await queue.waiting_for(services.redis, run))
        return RunResource.of(run, API_PREFIX)

    @get(
        "/workspaces/{workspace_id:str}/runs",
        summary="List a workspace's runs, newest first",
        opt=documented(
            Answer(200, "A page of runs, newest first", {JSON: Page}, {"Link": PAGE_LINKS}),
        ),
    )
    async def list_workspace_runs(
        self,
        workspace_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        status: Statuses = None,
        configuration_id: str | None = None,
        branch: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        before: Before = None,
        after: After = None,
        limit: Limit = 20,
    ) -> Response[Page]:
        await auth.workspace(services, principal, workspace_id)
        return await list_page(
            services,
            request,
            keys.workspace_runs(workspace_id),
            limit=limit,
            before=before,
            after=after,
            status=status,
            configuration_id=configuration_id,
            branch=branch,
            created_after=created_after,
            created_before=created_before,
        )

    @get(
        "/configurations/{configuration_id:str}/runs",
        summary="List a configuration's runs, newest first",
        opt=documented(
            Answer(200, "A page of runs, newest first", {JSON: Page}, {"Link": PAGE_LINKS}),
        ),
    )
    async def list_configuration_runs(
        self,
        configuration_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        status: Statuses = None,
        branch: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        before: Before = None,
        after: After = None,
        limit: Limit = 20,
    ) -> Response[Page]:
        cfg = await auth.configuration(services, principal, configuration_id)
        return await list_page(
            services,
            request,
            keys.configuration_runs(cfg.id),
            limit=limit,
            before=before,
            after=after,
            status=status,
            configuration_id=None,
            branch=branch,
            created_after=created_after,
            created_before=created_before,
        )

    @post("/runs/{run_id:str}/cancel", status_code=202, summary="Cancel a queued or running run")
    async def cancel(self, run_id: str, services: Services, principal: Principal) -> RunResource:
        """A queued run is cancelled at once and never starts; a running one gets `run.cancel_requested`,
        SIGTERM to its step's process group, SIGKILL after the grace period, then `cancelled`."""
        run = await auth.run(services, principal, run_id, "operator")
        run = await runs.cancel(services.settings, services.redis, services.store, run, principal.actor)
        await services.audit.record(
            principal.actor, run.workspace_id, "run.cancel", run.id, {"status": run.status}
        )
        return RunResource.of(run, API_PREFIX)

    @post(
        "/runs/{run_id:str}/rerun",
        status_code=201,
        summary="Re-run: a new attempt with the same plan and inputs (failed_only: only what failed)",
    )
    async def rerun(
        self, run_id: str, services: Services, principal: Principal, data: RunRerun | None = None
    ) -> RunResource:
        """The body is optional. `{"failed_only": true}` (a failed run only, else `409 run_not_failed`) keeps
        the steps that succeeded, with their outputs, and runs the failed, cancelled and skipped ones and
        everything downstream of them."""
        source = await auth.run(services, principal, run_id, "operator")
        failed_only = data is not None and data.failed_only
        run = await runs.rerun(
            services.settings, services.redis, services.arq, services.store, source, failed_only=failed_only
        )
        await services.audit.record(
            principal.actor,
            run.workspace_id,
            "run.rerun",
            run.id,
            {"rerun_of": source.id, "attempt": run.attempt, "failed_only": failed_only},
        )
        return RunResource.of(run, API_PREFIX)

    @post("/runs/{run_id:str}/stream-token", status_code=201, summary="A short-lived token for EventSource")
    async def stream_token(self, run_id: str, services: Services, principal: Principal) -> StreamToken:
        run = await auth.run(services, principal, run_id)
        return stream_token(
            services, principal, run.workspace_id, StreamRef.for_run(services.settings.data_dir, run.id)
        )
