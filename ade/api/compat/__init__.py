"""The build server's API (`shared/reference/003_…`, README "Build server API"), served at its own paths
and in its own camelCase shapes: a thin adapter over the same services as `/api/v1` (project = workspace,
workflow = configuration, build = run). `/api/runner/*` is served by the runner modules."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from ade.api.compat.audit_logs import CompatAuditLogController
from ade.api.compat.builds import CompatBuildController
from ade.api.compat.docker_images import CompatDockerImageController
from ade.api.compat.projects import CompatProjectController
from ade.api.compat.workflows import CompatWorkflowController

COMPAT_PREFIX = "/api"
COMPAT_HANDLERS: list[ControllerRouterHandler] = [
    CompatProjectController,
    CompatWorkflowController,
    CompatBuildController,
    CompatDockerImageController,
    CompatAuditLogController,
]
