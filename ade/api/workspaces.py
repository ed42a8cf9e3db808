"""Workspaces (tenants). Creating one, and changing its cap on runs executing at once, take the bootstrap
token."""

from __future__ import annotations

import contextlib

from litestar import Controller, get, patch, post
from redis.exceptions import RedisError

from ade.api import auth
from ade.api.deps import Services
from ade.core import ids
from ade.core.errors import Forbidden
from ade.core.models import Workspace, WorkspaceCreate, WorkspaceUpdate, utcnow
from ade.lifecycle import queue
from ade.records.auth import Principal


async def create_workspace(
    services: Services, principal: Principal, name: str, account_id: str | None = None
) -> Workspace:
    """A new workspace (the bootstrap token only); `account_id` is a build server project's account."""
    if principal.workspace_id is not None:
        raise Forbidden("creating workspaces takes the bootstrap token", code="bootstrap_only")
    workspace = Workspace(id=ids.new_id(ids.WORKSPACE), name=name, created_at=utcnow(), account_id=account_id)
    await services.store.put_workspace(workspace)
    details = {"name": name} if account_id is None else {"name": name, "account_id": account_id}
    await services.audit.record(principal.actor, workspace.id, "workspace.create", workspace.id, details)
    return workspace


class WorkspaceController(Controller):
    path = "/workspaces"
    tags = ["workspaces"]

    @post("/", status_code=201, summary="Create a workspace (bootstrap token only)")
    async def create(self, data: WorkspaceCreate, services: Services, principal: Principal) -> Workspace:
        return await create_workspace(services, principal, data.name)

    @get("/{workspace_id:str}", summary="Get a workspace")
    async def read(self, workspace_id: str, services: Services, principal: Principal) -> Workspace:
        return await auth.workspace(services, principal, workspace_id)

    @patch(
        "/{workspace_id:str}",
        summary="Change a workspace's cap on runs executing at once (bootstrap token only)",
        description="`max_running_runs`: at most this many of the workspace's runs execute at once, across "
        "all workers (`0`: no cap); `null`: `ADE_MAX_RUNNING_PER_WORKSPACE` applies. Runs waiting on the "
        "old cap are reconsidered at once.",
    )
    async def update(
        self, workspace_id: str, data: WorkspaceUpdate, services: Services, principal: Principal
    ) -> Workspace:
        workspace = await auth.workspace(services, principal, workspace_id)
        if principal.workspace_id is not None:
            raise Forbidden("changing a workspace's cap takes the bootstrap token", code="bootstrap_only")
        before = workspace.max_running_runs
        workspace.max_running_runs = data.max_running_runs
        await services.store.put_workspace(workspace)
        await services.audit.record(
            principal.actor,
            workspace.id,
            "workspace.update",
            workspace.id,
            {"max_running_runs": data.max_running_runs, "previous_max_running_runs": before},
        )
        with contextlib.suppress(RedisError, OSError):  # else they are reconsidered within queue.PARK_S
            await queue.reconsider(services.redis, workspace.id)
        return workspace
