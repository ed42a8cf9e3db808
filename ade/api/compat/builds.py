"""`/api/projects/{id}/builds`: a build is a run, created by the same service as `POST
/api/v1/configurations/{id}/runs` (so it is queued, executed and streamed exactly like one)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import Parameter

from ade.api import auth
from ade.api.compat.projects import project
from ade.api.compat.shapes import CompatBuild, CompatBuildCreate, CompatBuildPage, build_of, pagination
from ade.api.deps import Services
from ade.api.runs import create_run
from ade.core import keys
from ade.core.errors import NotFound, not_found
from ade.core.models import Commit, RunCreate
from ade.records.auth import Principal

Limit = Annotated[int, Parameter(ge=1, le=100, description="builds per page")]
Offset = Annotated[int, Parameter(ge=0, description="builds to skip (newest first)")]


def commit_of(data: CompatBuildCreate) -> Commit | None:
    commit = Commit(
        hash=data.commit_hash,
        repo_url=data.repo_url,
        branch=data.branch,
        message=data.commit_message,
        author=data.commit_author,
    )
    return None if commit == Commit() else commit


class CompatBuildController(Controller):
    path = "/projects/{project_id:str}/builds"
    tags = ["build server API"]

    @get("/", summary="A project's builds (runs), newest first")
    async def list(
        self, project_id: str, services: Services, principal: Principal, limit: Limit = 20, offset: Offset = 0
    ) -> CompatBuildPage:
        await project(services, principal, project_id)
        found, total = await services.store.page_runs(
            keys.workspace_runs(project_id), limit=limit, offset=offset
        )
        return CompatBuildPage(
            builds=[build_of(run) for run in found], pagination=pagination(total, limit, offset, len(found))
        )

    @post("/", status_code=201, summary="Create a build: a run of one of the project's workflows (operators)")
    async def create(
        self, project_id: str, data: CompatBuildCreate, services: Services, principal: Principal
    ) -> CompatBuild:
        await project(services, principal, project_id, "operator")
        try:
            cfg = await auth.configuration(services, principal, data.workflow_id, "operator")
        except NotFound:
            cfg = None
        if cfg is None or cfg.workspace_id != project_id:
            raise not_found("workflow", data.workflow_id)
        return build_of(await create_run(services, principal, cfg, RunCreate(commit=commit_of(data))))
