"""The audit log, scoped to the caller's workspace (admins only)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from ade.api import auth
from ade.api.deps import Services
from ade.api.openapi import documented
from ade.core.models import AuditPage
from ade.records.auth import Principal


async def audit_page(
    services: Services,
    principal: Principal,
    workspace_id: str | None,
    *,
    action: str | None,
    limit: int,
    offset: int,
) -> AuditPage:
    """Admins only. A workspace key sees its own workspace (another's is a 404); the bootstrap token sees
    every workspace unless it names one."""
    workspace_id = workspace_id or principal.workspace_id
    if workspace_id is not None:
        await auth.workspace(services, principal, workspace_id, "admin")
    return await services.audit.page(workspace_id, action=action, limit=limit, offset=offset)


class AuditController(Controller):
    tags = ["audit"]

    @get(
        "/audit-logs",
        summary="Audit entries, newest first",
        opt=documented(errors=(404,)),  # `workspace_id` names a workspace the key does not see
    )
    async def list(
        self,
        services: Services,
        principal: Principal,
        workspace_id: str | None = None,
        action: str | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, Parameter(ge=0)] = 0,
    ) -> AuditPage:
        """A workspace key sees its own workspace; the bootstrap token sees all unless it names one."""
        return await audit_page(services, principal, workspace_id, action=action, limit=limit, offset=offset)
