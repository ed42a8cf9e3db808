"""Configurations: what a run executes."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put

from ade import ids
from ade.api.deps import Services
from ade.models import Configuration, ConfigurationCreate, utcnow


class ConfigurationController(Controller):
    tags = ["configurations"]

    @post("/workspaces/{workspace_id:str}/configurations", status_code=201, summary="Create a configuration")
    async def create(self, workspace_id: str, data: ConfigurationCreate, services: Services) -> Configuration:
        await services.store.get_workspace(workspace_id)
        now = utcnow()
        cfg = Configuration(
            id=ids.new_id(ids.CONFIGURATION),
            workspace_id=workspace_id,
            name=data.name,
            steps=data.steps,
            environment=data.environment,
            timeout_s=data.timeout_s,
            created_at=now,
            updated_at=now,
        )
        await services.store.put_configuration(cfg)
        return cfg

    @get("/workspaces/{workspace_id:str}/configurations", summary="List a workspace's configurations")
    async def list(self, workspace_id: str, services: Services) -> list[Configuration]:
        await services.store.get_workspace(workspace_id)
        return await services.store.list_configurations(workspace_id)

    @get("/configurations/{configuration_id:str}", summary="Get a configuration")
    async def read(self, configuration_id: str, services: Services) -> Configuration:
        return await services.store.get_configuration(configuration_id)

    @put("/configurations/{configuration_id:str}", summary="Replace a configuration")
    async def update(
        self, configuration_id: str, data: ConfigurationCreate, services: Services
    ) -> Configuration:
        current = await services.store.get_configuration(configuration_id)
        cfg = Configuration(
            id=current.id,
            workspace_id=current.workspace_id,
            name=data.name,
            steps=data.steps,
            environment=data.environment,
            timeout_s=data.timeout_s,
            created_at=current.created_at,
            updated_at=utcnow(),
        )
        await services.store.put_configuration(cfg)
        return cfg

    @delete("/configurations/{configuration_id:str}", status_code=204, summary="Delete a configuration")
    async def remove(self, configuration_id: str, services: Services) -> None:
        cfg = await services.store.get_configuration(configuration_id)
        await services.store.delete_configuration(cfg)
