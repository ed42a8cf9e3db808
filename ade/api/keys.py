"""API keys: created by a workspace's admins (or the bootstrap token), shown once, stored as a hash."""

from __future__ import annotations

import msgspec
from litestar import Controller, delete, get, post

from ade.api import auth
from ade.api.deps import Services
from ade.core import ids
from ade.core.errors import Invalid, not_found
from ade.core.models import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyResource, utcnow
from ade.records.auth import Principal, new_key_secret, secret_sha256


class WhoAmI(msgspec.Struct, kw_only=True):
    actor: str
    role: str
    workspace_id: str | None  # None: the bootstrap token (every workspace)


class ApiKeyController(Controller):
    tags = ["api keys"]

    @get("/whoami", summary="The caller: key id, role and workspace")
    async def whoami(self, principal: Principal) -> WhoAmI:
        return WhoAmI(actor=principal.actor, role=principal.role, workspace_id=principal.workspace_id)

    @post(
        "/workspaces/{workspace_id:str}/api-keys", status_code=201, summary="Create an API key (shown once)"
    )
    async def create(
        self, workspace_id: str, data: ApiKeyCreate, services: Services, principal: Principal
    ) -> ApiKeyCreated:
        await auth.workspace(services, principal, workspace_id, "admin")
        now = utcnow()
        if data.expires_at is not None and data.expires_at <= now:
            raise Invalid(
                "expires_at must be in the future", details=[{"key": "expires_at", "message": "in the past"}]
            )
        key_id = ids.new_id(ids.API_KEY)
        secret = new_key_secret(key_id)
        key = ApiKey(
            id=key_id,
            workspace_id=workspace_id,
            name=data.name,
            role=data.role,
            secret_sha256=secret_sha256(secret),
            created_at=now,
            created_by=principal.actor,
            expires_at=data.expires_at,
        )
        await services.store.put_api_key(key)
        await services.audit.record(
            principal.actor, workspace_id, "api_key.create", key.id, {"name": key.name, "role": key.role}
        )
        return ApiKeyCreated(secret=secret, **{f: getattr(key, f) for f in ApiKeyResource.__struct_fields__})

    @get("/workspaces/{workspace_id:str}/api-keys", summary="List a workspace's API keys (no secrets)")
    async def list(self, workspace_id: str, services: Services, principal: Principal) -> list[ApiKeyResource]:
        await auth.workspace(services, principal, workspace_id, "admin")
        return [ApiKeyResource.of(key) for key in await services.store.list_api_keys(workspace_id)]

    @delete("/api-keys/{key_id:str}", status_code=204, summary="Revoke an API key")
    async def revoke(self, key_id: str, services: Services, principal: Principal) -> None:
        key = await services.store.find_api_key(key_id)
        if key is None or not principal.sees(key.workspace_id) or principal.stream_id is not None:
            raise not_found("api_key", key_id)
        principal.require("admin")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            await services.store.put_api_key(key)
            services.stream_tokens.keys.forget(key.id)  # here at once; other API processes within 0.5 s
            await services.audit.record(
                principal.actor, key.workspace_id, "api_key.revoke", key.id, {"name": key.name}
            )
