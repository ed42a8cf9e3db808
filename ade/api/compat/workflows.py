"""`/api/projects/{id}/workflows`: a workflow is a configuration; its steps map field by field
(`imageSlug`→`image`, `dependsOn`→`depends_on`, `runScript`→`script`, `cacheDirs`, `outputPaths`) and it
is checked and stored exactly as `POST /api/v1/workspaces/{ws}/configurations` does."""

from __future__ import annotations

from litestar import Controller, get, post

from ade.api.compat.projects import project
from ade.api.compat.shapes import CompatWorkflow, CompatWorkflowCreate, workflow_of
from ade.api.configurations import create_configuration
from ade.api.deps import Services
from ade.core.models import ConfigurationCreate, Step
from ade.records.auth import Principal


def configuration_of(data: CompatWorkflowCreate) -> ConfigurationCreate:
    return ConfigurationCreate(
        name=data.name,
        steps=[
            Step(
                name=step.name,
                script=step.run_script,
                image=step.image_slug,
                depends_on=step.depends_on,
                cache_dirs=step.cache_dirs,
                output_paths=step.output_paths,
            )
            for step in data.steps
        ],
        runs_on=data.runs_on,
    )


class CompatWorkflowController(Controller):
    path = "/projects/{project_id:str}/workflows"
    tags = ["build server API"]

    @get("/", summary="A project's workflows (configurations)")
    async def list(self, project_id: str, services: Services, principal: Principal) -> list[CompatWorkflow]:
        await project(services, principal, project_id)
        return [workflow_of(cfg) for cfg in await services.store.list_configurations(project_id)]

    @post("/", status_code=201, summary="Create a workflow (a configuration; admins)")
    async def create(
        self, project_id: str, data: CompatWorkflowCreate, services: Services, principal: Principal
    ) -> CompatWorkflow:
        await project(services, principal, project_id, "admin")
        return workflow_of(
            await create_configuration(services, principal, project_id, configuration_of(data))
        )
