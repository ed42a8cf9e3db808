"""Builds: create (reuse, join or start one; optionally as SSE, or waiting for the end), list, read
(id or unique prefix), inspect, events, logs, cancel, stream tokens."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import HeaderParameter, Parameter
from litestar.response import Stream

from ade.api import auth
from ade.api.configurations import public_build
from ade.api.deps import API_PREFIX, Services
from ade.api.openapi import JSON, SSE, SSE_SCHEMA, TEXT, Answer, documented
from ade.api.run_views import EVENTS_ANSWER, TEXT_LINES
from ade.api.runs import IdempotencyKey
from ade.api.streams import (
    EventsFormat,
    EventsPage,
    events_response,
    logs_response,
    resume_point,
    sse_response,
    stream_token,
    wants_stream,
)
from ade.core import keys
from ade.core.errors import AdeError, Invalid, not_found
from ade.core.models import Build, BuildCreate, BuildResource, StreamToken
from ade.core.views import BuildInspection
from ade.events.follow import follow
from ade.lifecycle.builds import build_stream, cancel_build, request_build
from ade.records import idempotency
from ade.records.auth import Principal


class BuildExpired(AdeError):
    status_code = 410
    code = "build_expired"


def _not_expired(build: Build) -> None:
    if build.status == "expired":
        raise BuildExpired(f"build {build.id!r} expired: retention removed its logs and environment")


class BuildController(Controller):
    tags = ["builds"]

    @post(
        "/workspaces/{workspace_id:str}/configurations/{configuration_id:str}/builds",
        status_code=201,
        summary="Build a configuration's environment (or reuse / join the build with its fingerprint)",
        opt=documented(
            Answer(201, "The build (ended, with `options.wait`)", {JSON: BuildResource}),
            Answer(
                200,
                "With `stream: true` (or `Accept: text/event-stream`): the build's SSE stream",
                {SSE: SSE_SCHEMA},
            ),
            errors=(429,),
        ),
    )
    async def create(
        self,
        workspace_id: str,
        configuration_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        data: BuildCreate | None = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[BuildResource] | Stream:
        """A ready build with the same fingerprint is reused (a new build record whose `build.completed` says
        `reused`), unless `options.force`; a build of that fingerprint in progress is joined. `stream=true`
        answers with the build's SSE stream; `options.wait` answers once the build has ended."""
        body = data or BuildCreate()
        await auth.workspace(services, principal, workspace_id)
        cfg = await auth.configuration(services, principal, configuration_id, "operator")
        if cfg.workspace_id != workspace_id:
            raise not_found("configuration", configuration_id)
        if cfg.build is None:
            raise Invalid(
                "this configuration has no build spec", code="no_build_spec", details=[{"key": "build"}]
            )

        async def create() -> Build:
            assert cfg is not None
            build, mode = await request_build(
                services.settings,
                services.redis,
                services.arq,
                services.store,
                cfg,
                actor=principal.actor,
                force=body.options.force,
                record_reuse=True,
            )
            details = {"mode": mode, "force": body.options.force}
            await services.audit.record(principal.actor, cfg.workspace_id, "build.create", build.id, details)
            return build

        scope = idempotency.scope_of(principal.actor, f"builds:{cfg.id}", idempotency_key)
        body_bytes = msgspec.json.encode(body)
        build = await idempotency.once(
            services.redis, scope, body_bytes, create, services.store.get_build, lambda made: made.id
        )
        stream = build_stream(services.settings, build.id)
        if body.stream or wants_stream(request, None):
            return await sse_response(services, principal, stream, 0)
        if body.options.wait:
            settings = services.settings
            async for _ in follow(services.hub, stream, 0, idle_s=settings.sse_keepalive_s, page_events=1000):
                pass
            build = await services.store.get_build(build.id)
        return Response(BuildResource.of(build, API_PREFIX), status_code=201)

    @get("/configurations/{configuration_id:str}/builds", summary="A configuration's builds, newest first")
    async def list(
        self,
        configuration_id: str,
        services: Services,
        principal: Principal,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        before: Annotated[str | None, Parameter(description="builds older than this build id")] = None,
    ) -> list[BuildResource]:
        cfg = await auth.configuration(services, principal, configuration_id)
        found = await services.store.list_builds(
            keys.configuration_builds(cfg.id), limit=limit, before=before
        )
        return [BuildResource.of(build, API_PREFIX) for build in found]

    @get("/builds/{build_id:str}", summary="Get a build (by id or a unique id prefix)")
    async def read(self, build_id: str, services: Services, principal: Principal) -> BuildResource:
        return BuildResource.of(await auth.build(services, principal, build_id), API_PREFIX)

    @get("/builds/{build_id:str}/inspect", summary="Constructor, owner, fingerprint, flags, reused from")
    async def inspect(self, build_id: str, services: Services, principal: Principal) -> BuildInspection:
        build = await auth.build(services, principal, build_id)
        spec = public_build(build.spec)
        assert spec is not None
        return BuildInspection(
            id=build.id,
            status=build.status,
            constructor=build.spec.constructor,
            owner=build.owner,
            fingerprint=build.fingerprint,
            flags={"force": build.force, "reused": build.reused_from is not None},
            reused_from=build.reused_from,
            interpreter=build.interpreter,
            spec=spec,
            created_at=build.created_at,
            started_at=build.started_at,
            completed_at=build.completed_at,
            last_used_at=build.last_used_at,
            failure=build.failure,
        )

    @get(
        "/builds/{build_id:str}/events",
        summary="A build's events: SSE, JSON page or NDJSON (410 once expired)",
        opt=documented(EVENTS_ANSWER, errors=(410, 429)),
    )
    async def events(
        self,
        build_id: str,
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
        build = await auth.build(services, principal, build_id)
        _not_expired(build)
        return await events_response(
            services,
            principal,
            build_stream(services.settings, build.id),
            as_stream=wants_stream(request, stream),
            after_sequence=resume_point(after_sequence, last_event_id),
            limit=limit,
            format=format,
        )

    @get(
        "/builds/{build_id:str}/logs",
        summary="The build's console as text/plain (follow=true streams); 204 once expired",
        media_type="text/plain",
        opt=documented(
            Answer(
                200, "The build's console lines (`follow=true`: until the build ends)", {TEXT: TEXT_LINES}
            ),
            Answer(204, "The build expired: retention removed its logs"),
            errors=(429,),
        ),
    )
    async def logs(
        self,
        build_id: str,
        services: Services,
        principal: Principal,
        follow: bool = False,
        token: Annotated[str | None, Parameter(description="a stream token, for EventSource")] = None,
    ) -> Response[bytes] | Stream:
        build = await auth.build(services, principal, build_id)
        if build.status == "expired":
            return Response(b"", status_code=204, media_type="text/plain")
        answer = await logs_response(
            services,
            principal,
            build_stream(services.settings, build.id),
            after_sequence=0,
            limit=1000,
            console_stream=None,
            as_text=True,
            follow=follow,
        )
        assert isinstance(answer, Stream)
        return answer

    @post("/builds/{build_id:str}/cancel", status_code=202, summary="Cancel a queued or building build")
    async def cancel(self, build_id: str, services: Services, principal: Principal) -> BuildResource:
        build = await auth.build(services, principal, build_id, "operator")
        build = await cancel_build(services.settings, services.redis, services.store, build, principal.actor)
        await services.audit.record(
            principal.actor, build.workspace_id, "build.cancel", build.id, {"status": build.status}
        )
        return BuildResource.of(build, API_PREFIX)

    @post(
        "/builds/{build_id:str}/stream-token", status_code=201, summary="A short-lived token for EventSource"
    )
    async def stream_token(self, build_id: str, services: Services, principal: Principal) -> StreamToken:
        build = await auth.build(services, principal, build_id)
        return stream_token(
            services, principal, build.workspace_id, build_stream(services.settings, build.id)
        )
