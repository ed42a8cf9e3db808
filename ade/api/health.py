"""Liveness and readiness."""

from __future__ import annotations

import os

import msgspec
from litestar import Controller, Response, get
from redis.exceptions import RedisError

from ade.api.deps import Services
from ade.api.openapi import JSON, Answer, documented
from ade.core import keys
from ade.core.errors import Forbidden
from ade.records import metrics
from ade.records.auth import Principal


class Readiness(msgspec.Struct, kw_only=True):
    ready: bool
    checks: dict[str, str]


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz", summary="Liveness: the process answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/readyz",
        summary="Readiness: Redis, the data directory and a live worker",
        opt=documented(
            Answer(200, "Ready: every check is `ok`", {JSON: Readiness}),
            Answer(503, "Not ready: the checks say what is not `ok`", {JSON: Readiness}),
        ),
    )
    async def readyz(self, services: Services) -> Response[Readiness]:
        checks: dict[str, str] = {}
        try:
            await services.redis.ping()
            checks["redis"] = "ok"
            checks["worker"] = "ok" if await _live_worker(services) else "no live worker"
        except (RedisError, OSError) as exc:
            checks["redis"] = f"unreachable: {exc}"
            checks["worker"] = "unknown"
        data_dir = services.settings.data_dir
        checks["data_dir"] = "ok" if os.access(data_dir, os.W_OK) else f"not writable: {data_dir}"
        checks["hub"] = "ok" if services.hub.connected else "not connected"
        ready = all(value == "ok" for value in checks.values())
        return Response(Readiness(ready=ready, checks=checks), status_code=200 if ready else 503)


class MetricsController(Controller):
    tags = ["health"]

    @get("/metrics", summary="Prometheus metrics (bootstrap token)", media_type="text/plain; version=0.0.4")
    async def metrics(self, services: Services, principal: Principal) -> Response[bytes]:
        if principal.workspace_id is not None:
            raise Forbidden("metrics cover every workspace: use the bootstrap token", code="bootstrap_only")
        body = await metrics.render(
            services.redis,
            sse_subscribers=services.hub.subscriber_count,
            hub_backlog_events=services.hub.largest_backlog,
            hub_lag_s=services.hub.lag_s,
        )
        return Response(body, media_type="text/plain; version=0.0.4")


async def _live_worker(services: Services) -> bool:
    async for _ in services.redis.scan_iter(match=keys.WORKER_PATTERN, count=100):
        return True
    return False
