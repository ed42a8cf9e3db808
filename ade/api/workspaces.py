"""Workspaces (tenants)."""

from __future__ import annotations

from litestar import Controller, get, post

from ade import ids
from ade.api.deps import Services
from ade.models import Workspace, WorkspaceCreate, utcnow


class WorkspaceController(Controller):
    path = "/workspaces"
    tags = ["workspaces"]

    @post("/", status_code=201, summary="Create a workspace")
    async def create(self, data: WorkspaceCreate, services: Services) -> Workspace:
        workspace = Workspace(id=ids.new_id(ids.WORKSPACE), name=data.name, created_at=utcnow())
        await services.store.put_workspace(workspace)
        return workspace

    @get("/{workspace_id:str}", summary="Get a workspace")
    async def read(self, workspace_id: str, services: Services) -> Workspace:
        return await services.store.get_workspace(workspace_id)
