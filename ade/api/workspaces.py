"""Workspaces (tenants). Creating one takes the bootstrap token."""

from __future__ import annotations

from litestar import Controller, get, post

from ade.api import auth
from ade.api.deps import Services
from ade.core import ids
from ade.core.errors import Forbidden
from ade.core.models import Workspace, WorkspaceCreate, utcnow
from ade.records.auth import Principal


class WorkspaceController(Controller):
    path = "/workspaces"
    tags = ["workspaces"]

    @post("/", status_code=201, summary="Create a workspace (bootstrap token only)")
    async def create(self, data: WorkspaceCreate, services: Services, principal: Principal) -> Workspace:
        if principal.workspace_id is not None:
            raise Forbidden("creating workspaces takes the bootstrap token", code="bootstrap_only")
        workspace = Workspace(id=ids.new_id(ids.WORKSPACE), name=data.name, created_at=utcnow())
        await services.store.put_workspace(workspace)
        await services.audit.record(
            principal.actor, workspace.id, "workspace.create", workspace.id, {"name": data.name}
        )
        return workspace

    @get("/{workspace_id:str}", summary="Get a workspace")
    async def read(self, workspace_id: str, services: Services, principal: Principal) -> Workspace:
        return await auth.workspace(services, principal, workspace_id)
