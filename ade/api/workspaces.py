"""Workspaces (tenants). Creating one takes the bootstrap token."""

from __future__ import annotations

from litestar import Controller, get, post

from ade import ids
from ade.api import auth
from ade.api.deps import Services
from ade.auth import Principal
from ade.errors import Forbidden
from ade.models import Workspace, WorkspaceCreate, utcnow


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
