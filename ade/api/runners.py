"""Registered runners: a workspace's admins register runners for it, the bootstrap token global ones that
serve every workspace. A runner's token is shown once; lists show each runner's labels, status and last
heartbeat. Deleting a runner revokes it: its token stops working at once.

What a runner does with its token (claim runs, send logs, heartbeat) is the runner protocol's."""

from __future__ import annotations

from litestar import Controller, delete, get, post

from ade.api import auth
from ade.api.deps import Services
from ade.core.errors import Forbidden, not_found
from ade.core.models import Runner, RunnerCreate, RunnerCreated, RunnerView, utcnow
from ade.records import runners
from ade.records.auth import Principal


def _bootstrap_only(principal: Principal, what: str) -> None:
    if principal.workspace_id is not None:
        raise Forbidden(f"{what} takes the bootstrap token", code="bootstrap_only")


async def _visible_runner(services: Services, principal: Principal, runner_id: str) -> Runner:
    """A runner the caller may see (its workspace's, or a global one); another workspace's is a 404."""
    runner = await runners.get(services.store, runner_id)
    if principal.stream_id is not None or not (
        runner.workspace_id is None or principal.sees(runner.workspace_id)
    ):
        raise not_found("runner", runner_id)
    return runner


def _views(services: Services, found: list[Runner]) -> list[RunnerView]:
    now = utcnow()
    return [RunnerView.of(runner, now, services.settings.runner_lost_after_s) for runner in found]


async def _register(
    services: Services, principal: Principal, workspace_id: str | None, data: RunnerCreate
) -> RunnerCreated:
    runner, token = await runners.register(
        services.store, workspace_id, data.name, data.labels, principal.actor
    )
    await services.audit.record(
        principal.actor,
        runners.audit_scope(runner),
        "runner.register",
        runner.id,
        {"name": runner.name, "labels": ",".join(runner.labels), "global": workspace_id is None},
    )
    view = RunnerView.of(runner, utcnow(), services.settings.runner_lost_after_s)
    return RunnerCreated(token=token, **{f: getattr(view, f) for f in RunnerView.__struct_fields__})


class RunnerController(Controller):
    tags = ["runners"]

    @post(
        "/workspaces/{workspace_id:str}/runners",
        status_code=201,
        summary="Register a runner for a workspace (its token is shown once)",
    )
    async def register_for_workspace(
        self, workspace_id: str, data: RunnerCreate, services: Services, principal: Principal
    ) -> RunnerCreated:
        await auth.workspace(services, principal, workspace_id, "admin")
        return await _register(services, principal, workspace_id, data)

    @post(
        "/runners",
        status_code=201,
        summary="Register a global runner, serving every workspace (bootstrap token; token shown once)",
    )
    async def register_global(
        self, data: RunnerCreate, services: Services, principal: Principal
    ) -> RunnerCreated:
        _bootstrap_only(principal, "registering a global runner")
        return await _register(services, principal, None, data)

    @get(
        "/workspaces/{workspace_id:str}/runners",
        summary="List the runners that serve a workspace: its own and the global ones",
    )
    async def list_for_workspace(
        self, workspace_id: str, services: Services, principal: Principal
    ) -> list[RunnerView]:
        await auth.workspace(services, principal, workspace_id)
        return _views(services, await runners.list_for_workspace(services.store, workspace_id))

    @get("/runners", summary="List every runner (bootstrap token)")
    async def list_all(self, services: Services, principal: Principal) -> list[RunnerView]:
        _bootstrap_only(principal, "listing every runner")
        return _views(services, await runners.list_all(services.store))

    @get("/runners/{runner_id:str}", summary="Get a runner (never its token)")
    async def read(self, runner_id: str, services: Services, principal: Principal) -> RunnerView:
        return _views(services, [await _visible_runner(services, principal, runner_id)])[0]

    @delete(
        "/runners/{runner_id:str}",
        status_code=204,
        summary="Revoke a runner: its token stops working at once (a global one takes the bootstrap token)",
    )
    async def revoke(self, runner_id: str, services: Services, principal: Principal) -> None:
        runner = await _visible_runner(services, principal, runner_id)
        principal.require("admin")
        if runner.workspace_id is None:
            _bootstrap_only(principal, "revoking a global runner")
        if runner.revoked_at is None:
            await runners.revoke(services.store, runner.id, utcnow())
            details = {"name": runner.name}
            scope = runners.audit_scope(runner)
            await services.audit.record(principal.actor, scope, "runner.revoke", runner.id, details)
