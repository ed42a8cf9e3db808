"""`/api/audit-logs`: the audit log (admins), as `GET /api/v1/audit-logs` answers it. A workspace key sees
its own project's entries (another project's id is a 404); the bootstrap token every project's, unless it
names one."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter, QueryParameter

from ade.api.audit import audit_page
from ade.api.compat.shapes import CompatAuditPage, audit_log_of, pagination
from ade.api.deps import Services
from ade.api.openapi import documented
from ade.core.errors import NotFound, not_found
from ade.records.auth import Principal

ProjectFilter = Annotated[str | None, QueryParameter(name="projectId", description="one project's entries")]
Limit = Annotated[int, Parameter(ge=1, le=1000, description="entries per page")]
Offset = Annotated[int, Parameter(ge=0, description="entries to skip (newest first)")]


class CompatAuditLogController(Controller):
    path = "/audit-logs"
    tags = ["build server API"]

    @get(
        "/",
        summary="Audit entries, newest first",
        opt=documented(errors=(404,)),  # `projectId` names a project the key does not see
    )
    async def list(
        self,
        services: Services,
        principal: Principal,
        project_id: ProjectFilter = None,
        action: str | None = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> CompatAuditPage:
        try:
            page = await audit_page(
                services, principal, project_id, action=action, limit=limit, offset=offset
            )
        except NotFound:
            raise not_found("project", project_id or "") from None
        return CompatAuditPage(
            audit_logs=[audit_log_of(entry) for entry in page.audit_logs],
            pagination=pagination(page.pagination.total, limit, offset, len(page.audit_logs)),
        )
