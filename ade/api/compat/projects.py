"""`/api/projects`: a project is a workspace, with the account (`accountId`) it was created for."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import QueryParameter

from ade.api import auth
from ade.api.compat.shapes import CompatProject, CompatProjectCreate, project_of
from ade.api.deps import Services
from ade.api.workspaces import create_workspace
from ade.core.errors import NotFound, not_found
from ade.core.models import Role, Workspace
from ade.records.auth import Principal

AccountQuery = Annotated[
    str, QueryParameter(name="accountId", min_length=1, max_length=200, description="the account's projects")
]


async def project(
    services: Services, principal: Principal, project_id: str, role: Role = "viewer"
) -> Workspace:
    """The workspace a project id names, if the caller sees it (else `404 project_not_found`, whether it
    does not exist or belongs to another workspace); then the role (403)."""
    try:
        return await auth.workspace(services, principal, project_id, role)
    except NotFound:
        raise not_found("project", project_id) from None


class CompatProjectController(Controller):
    path = "/projects"
    tags = ["build server API"]

    @get("/", summary="Projects of an account (a workspace key: its own workspace, if it is the account's)")
    async def list(
        self, account_id: AccountQuery, services: Services, principal: Principal
    ) -> list[CompatProject]:
        workspaces = await services.store.list_account_workspaces(account_id)
        return [project_of(workspace) for workspace in workspaces if principal.sees(workspace.id)]

    @post("/", status_code=201, summary="Create a project: a workspace of an account (bootstrap token only)")
    async def create(
        self, data: CompatProjectCreate, services: Services, principal: Principal
    ) -> CompatProject:
        workspace = await create_workspace(services, principal, data.name, account_id=data.account_id)
        return project_of(workspace)
