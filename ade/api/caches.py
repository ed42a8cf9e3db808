"""A workspace's step caches (README "Caches"): listed by any of its keys, removed by operators and admins.
Another workspace's id is a 404, as everywhere; nothing here ever reaches another workspace's caches."""

from __future__ import annotations

import asyncio
from typing import Annotated

from litestar import Controller, delete, get
from litestar.params import Parameter

from ade.api import auth
from ade.api.deps import Services
from ade.execution import caches
from ade.records.auth import Principal

ConfigurationFilter = Annotated[str | None, Parameter(description="only the caches of this configuration")]
StepFilter = Annotated[str | None, Parameter(description="only the caches of steps of this name")]
KeyFilter = Annotated[
    str | None, Parameter(description="only the caches saved under this key (as evaluated)")
]


class CacheController(Controller):
    tags = ["caches"]

    @get(
        "/workspaces/{workspace_id:str}/caches",
        summary="List a workspace's step caches, most recently used first",
    )
    async def list_caches(
        self, workspace_id: str, services: Services, principal: Principal
    ) -> caches.CacheList:
        await auth.workspace(services, principal, workspace_id)
        return await asyncio.to_thread(caches.list_caches, services.settings, workspace_id)

    @delete(
        "/workspaces/{workspace_id:str}/caches",
        status_code=204,
        summary="Remove a workspace's step caches: all of them, or those matching every filter given",
    )
    async def delete_caches(
        self,
        workspace_id: str,
        services: Services,
        principal: Principal,
        configuration_id: ConfigurationFilter = None,
        step: StepFilter = None,
        key: KeyFilter = None,
    ) -> None:
        await auth.workspace(services, principal, workspace_id, "operator")
        removed = await asyncio.to_thread(
            caches.delete_caches,
            services.settings,
            workspace_id,
            configuration_id=configuration_id,
            step=step,
            key=key,
        )
        filters = {"configuration_id": configuration_id, "step": step, "key": key}
        details = {name: value for name, value in filters.items() if value is not None}
        await services.audit.record(
            principal.actor, workspace_id, "cache.delete", workspace_id, {**details, "removed": removed}
        )
