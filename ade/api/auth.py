"""Authentication (a middleware: a request without valid credentials is a 401 before anything else) and
access checks (one place: another workspace's things are 404, a weak role is 403).

Runner tokens (`rnr.…`) open only the route handlers marked `opt=RUNNER_ROUTES` (the runner protocol's);
everywhere else they are a 403 `runner_token_not_allowed`, decided here, before any handler runs. Those
handlers take the runner from `provide_runner`, which refuses every other credential."""

from __future__ import annotations

import logging
import re
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from ade.api.deps import API_PREFIX, Services
from ade.core.errors import Forbidden, NotFound, Unauthorized, not_found
from ade.core.models import Build, Configuration, Role, Run, Runner, Workspace, utcnow
from ade.records import runners
from ade.records.auth import (
    SUPERUSER,
    Principal,
    check_bootstrap,
    check_key,
    key_id_of,
)

log = logging.getLogger(__name__)

# The web console's page and files are public; all its data comes from the authenticated API.
PUBLIC_PATHS = ["^/healthz$", "^/readyz$", "^/schema", "^/$", "^/static/"]
# How often an open stream checks that the key behind it is still valid (with KeyValidity's cache of the
# same length, a revocation ends the stream within about a second; an expiry within half a second).
# Read-only streaming endpoints, the only ones a stream token opens.
STREAMING_PATH = re.compile(rf"^{API_PREFIX}/(?:runs|builds)/(?P<stream_id>[^/]+)/(?:events|logs)$")
# Route handlers (or their controller or router) with `opt=RUNNER_ROUTES` take runner tokens, and only them.
RUNNER_PROTOCOL_OPT = "runner_protocol"
RUNNER_ROUTES = {RUNNER_PROTOCOL_OPT: True}


class AuthMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        services: Services = connection.app.state.services
        header = connection.headers.get("authorization", "")
        token = connection.query_params.get("token")
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise Unauthorized("use `Authorization: Bearer <key>`", code="invalid_token")
            secret = secret.strip()
            bootstrap = check_bootstrap(secret, services.settings.bootstrap_token)
            if runners.is_runner_token(secret) and not bootstrap:
                runner = await authenticate_runner(services, secret, connection)
                return AuthenticationResult(user=runner_principal(runner), auth=runner)
            principal = await authenticate_key(services, secret)
        elif token:
            match = STREAMING_PATH.match(connection.scope["path"])
            if match is None or connection.scope.get("method") != "GET":
                raise Unauthorized("stream tokens only open streaming endpoints", code="token_out_of_scope")
            principal = services.stream_tokens.verify(token, match["stream_id"])
            if not await key_still_valid(services, principal):
                raise Unauthorized(
                    "the API key that minted this stream token was revoked or has expired",
                    code="invalid_token",
                )
        else:
            raise Unauthorized("authentication required: `Authorization: Bearer <key>`", code="missing_token")
        return AuthenticationResult(user=principal, auth=None)


async def authenticate_runner(
    services: Services, token: str, connection: ASGIConnection[Any, Any, Any, Any]
) -> Runner:
    """The runner of a valid runner token, on a route that takes one. Read from Redis on every request,
    so a revoked runner is refused at once."""
    runner = await runners.authenticate(services.store, token)
    if not connection.route_handler.opt.get(RUNNER_PROTOCOL_OPT):
        raise Forbidden(
            "a runner token only opens the runner protocol's endpoints; use an API key",
            code="runner_token_not_allowed",
        )
    return runner


def runner_principal(runner: Runner) -> Principal:
    return Principal(actor=runner.id, role="viewer", workspace_id=runner.workspace_id, runner_id=runner.id)


async def authenticate_key(services: Services, secret: str) -> Principal:
    if check_bootstrap(secret, services.settings.bootstrap_token):
        return SUPERUSER
    key_id = key_id_of(secret)
    key = await services.stream_tokens.keys.lookup(services.store.find_api_key, key_id) if key_id else None
    return check_key(key, secret, utcnow())


async def key_still_valid(services: Services, principal: Principal) -> bool:
    """The key behind a principal (a stream token's minting key) exists, is not revoked, has not expired."""
    return await services.stream_tokens.keys.valid(services.store.find_api_key, principal.actor)


def provide_principal(request: Request[Principal, Any, Any], services: Services) -> Principal:
    """The caller (dependency `principal`). It names `services` only to come after it: Litestar resolves
    dependencies that do not depend on each other concurrently, in a task group per request, which cost
    more than the request's own work."""
    return request.user


async def provide_runner(request: Request[Principal, Any, Any]) -> Runner:
    """The runner making a runner-protocol request (dependency `runner`): 403 `runner_token_required` for
    any other credential, 401 for a revoked runner."""
    principal = request.user
    if principal.runner_id is None:
        raise Forbidden("this endpoint takes a runner token (`rnr.…`)", code="runner_token_required")
    runner = request.auth
    if not isinstance(runner, Runner) or runner.id != principal.runner_id:
        services: Services = request.app.state.services
        runner = await runners.get(services.store, principal.runner_id)
    if runner.revoked_at is not None:
        raise Unauthorized(runners.INVALID_TOKEN, code="invalid_token")
    return runner


# Access: fetch a thing and check the caller may see it (404 otherwise), then the role (403).


async def workspace(
    services: Services, principal: Principal, workspace_id: str, role: Role = "viewer"
) -> Workspace:
    if not principal.sees(workspace_id) or principal.stream_id is not None:
        raise not_found("workspace", workspace_id)
    found = await services.store.get_workspace(workspace_id)
    principal.require(role)
    return found


async def configuration(
    services: Services, principal: Principal, configuration_id: str, role: Role = "viewer"
) -> Configuration:
    cfg = await services.store.get_configuration(configuration_id)
    if not principal.sees(cfg.workspace_id) or principal.stream_id is not None:
        raise not_found("configuration", configuration_id)
    principal.require(role)
    return cfg


async def run(services: Services, principal: Principal, run_id: str, role: Role = "viewer") -> Run:
    """A run by id or unique id prefix (resolved among the runs the caller can see). An exact id is one
    Redis read; only a miss looks for a prefix."""
    try:
        found = await services.store.get_run(run_id)
    except NotFound:
        found = await services.store.get_run(
            await services.store.resolve_run_id(run_id, principal.workspace_id)
        )
    if not principal.sees(found.workspace_id) or principal.stream_id not in (None, found.id):
        raise not_found("run", run_id)
    principal.require(role)
    return found


async def build(services: Services, principal: Principal, build_id: str, role: Role = "viewer") -> Build:
    """A build by id or unique id prefix (resolved among the builds the caller can see)."""
    found = await services.store.get_build(
        await services.store.resolve_build_id(build_id, principal.workspace_id)
    )
    if not principal.sees(found.workspace_id) or principal.stream_id not in (None, found.id):
        raise not_found("build", build_id)
    principal.require(role)
    return found
