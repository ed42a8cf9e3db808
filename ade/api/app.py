"""The app factory: services in the lifespan, routes, and the one place errors become HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ade.api.artifacts import ArtifactController
from ade.api.audit import AuditController
from ade.api.auth import PUBLIC_PATHS, AuthMiddleware, provide_principal, provide_runner
from ade.api.builds import BuildController
from ade.api.caches import CacheController
from ade.api.compat import COMPAT_HANDLERS, COMPAT_PREFIX
from ade.api.compat.runner import StepModeController
from ade.api.configurations import ConfigurationController
from ade.api.deps import API_PREFIX, Services
from ade.api.docker_images import DockerImageController
from ade.api.health import HealthController, MetricsController
from ade.api.keys import ApiKeyController
from ade.api.openapi import OfflineSwaggerUI, make_exact, operation_id
from ade.api.run_views import RunViewController
from ade.api.runner_protocol import RunnerProtocolController
from ade.api.runners import RunnerController
from ade.api.runs import RunController
from ade.api.stream_slots import StreamSlots
from ade.api.workspaces import WorkspaceController
from ade.core import keys
from ade.core.errors import AdeError, Invalid
from ade.core.jsondepth import json_depth
from ade.core.outage import REDIS, arq_pool
from ade.core.settings import Settings, get_settings
from ade.events.hub import Hub
from ade.records.artifacts import ArtifactStore
from ade.records.audit import AuditLog
from ade.records.auth import StreamTokens, load_signing_key
from ade.records.store import Store
from ade.records.summary import Summaries
from ade.web import route_handlers as web_console

log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def error_body(message: str, code: str, details: list[Any] | None = None) -> bytes:
    """The API's error shape as JSON, ending with a newline (so `curl` leaves the prompt on its own line)."""
    return msgspec.json.encode({"error": message, "code": code, "details": details or []}) + b"\n"


def _handle_ade_error(_: Request[Any, Any, Any], exc: AdeError) -> Response[bytes]:
    if exc.status_code >= 500:
        log.error("request failed: %s", exc.message)
    return Response(
        error_body(exc.message, exc.code, exc.details), status_code=exc.status_code, headers=exc.headers
    )


def _handle_validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    details = exc.extra if isinstance(exc.extra, list) else ([exc.extra] if exc.extra else [])
    return Response(error_body(str(exc.detail), "invalid_request", details), status_code=400)


def _handle_http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
    return Response(error_body(str(exc.detail), code), status_code=exc.status_code, headers=exc.headers)


def _handle_redis(request: Request[Any, Any, Any], exc: RedisError) -> Response[bytes]:
    REDIS.lost(exc, f"answering {request.method} {request.url.path}")  # one log line per outage
    return Response(error_body(f"Redis is unavailable: {exc}", "redis_unavailable"), status_code=503)


def _handle_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unexpected error", exc_info=exc)
    return Response(error_body("internal server error", "internal_error"), status_code=500)


class DepthCheckedRequest(Request[Any, Any, Any]):
    """A request whose JSON body is refused (400 too_deep) when nested deeper than ADE_MAX_JSON_DEPTH,
    measured before decoding: a deep body would exhaust the decoder's stack."""

    async def json(self) -> Any:
        services: Services = self.app.state.services
        depth_limit = services.settings.max_json_depth
        if json_depth(await self.body()) > depth_limit:
            raise Invalid(
                f"the JSON body nests deeper than {depth_limit} levels (ADE_MAX_JSON_DEPTH)", code="too_deep"
            )
        return await super().json()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Nothing here waits for Redis: the API starts while it is down (mutations answer 503, /readyz
        # too) and every client connects on first use.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        redis = Redis.from_url(settings.redis_url, health_check_interval=10)
        arq = arq_pool(settings.redis_url, queue_name=keys.QUEUE_NAME)
        hub = Hub(
            Redis.from_url(settings.redis_url),
            subscriber_queue_events=settings.subscriber_queue_events,
            coalesce_max_s=settings.sse_coalesce_max_ms / 1000,
        )
        await hub.start()
        stream_slots = StreamSlots(redis, settings.max_streams_per_key)
        app.state.services = Services(
            settings=settings,
            redis=redis,
            arq=arq,
            store=Store(redis, settings.data_dir),
            hub=hub,
            audit=AuditLog(redis, settings.data_dir),
            stream_tokens=StreamTokens(load_signing_key(settings.data_dir), settings.stream_token_ttl_s),
            artifacts=ArtifactStore(redis, settings.data_dir),
            summaries=Summaries(),
            stream_slots=stream_slots,
        )
        keeping_slots = asyncio.ensure_future(stream_slots.keep_forever())
        try:
            yield
        finally:
            keeping_slots.cancel()
            await hub.stop()
            await arq.aclose()
            await redis.aclose()

    def provide_services(state: State) -> Services:
        services: Services = state.services
        return services

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            WorkspaceController,
            ConfigurationController,
            RunController,
            RunViewController,
            BuildController,
            ArtifactController,
            ApiKeyController,
            AuditController,
            DockerImageController,
            CacheController,
            RunnerController,
            RunnerProtocolController,
        ],
        dependencies={
            "principal": Provide(provide_principal, sync_to_thread=False),
            "runner": Provide(provide_runner),  # the runner protocol's handlers (opt=auth.RUNNER_ROUTES)
        },
        security=[{"bearer": []}],
    )
    app = Litestar(
        route_handlers=[
            api,
            HealthController,
            Router(
                path="/",
                route_handlers=[MetricsController, StepModeController],
                dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
            ),
            *web_console,
            Router(  # the build server's API at its own paths (README "Build server API")
                path=COMPAT_PREFIX,
                route_handlers=COMPAT_HANDLERS,
                dependencies={"principal": Provide(provide_principal, sync_to_thread=False)},
                security=[{"bearer": []}],
            ),
        ],
        lifespan=[lifespan],
        # Process logging is ade.core.logs (one format, ADE_LOG_FORMAT, ADE_LOG_LEVEL); Litestar's default
        # config would replace the root handler with its own format.
        logging_config=None,
        middleware=[DefineMiddleware(AuthMiddleware, exclude=PUBLIC_PATHS)],
        request_max_body_size=settings.max_request_bytes,
        request_class=DepthCheckedRequest,
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers={
            AdeError: _handle_ade_error,
            ValidationException: _handle_validation,
            HTTPException: _handle_http,
            RedisConnectionError: _handle_redis,
            RedisTimeoutError: _handle_redis,
            Exception: _handle_unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="ADE",
            version="0.1.0",
            path="/schema",
            # The docs page works offline: its files are served here (`ade.api.openapi.docs_page`).
            render_plugins=[OfflineSwaggerUI(), JsonRenderPlugin(), YamlRenderPlugin()],
            operation_id_creator=operation_id,
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http", scheme="bearer", description="an API key or bootstrap token"
                    )
                }
            ),
        ),
    )
    make_exact(app, PUBLIC_PATHS)
    return app
