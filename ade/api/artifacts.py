"""Artifacts: uploads (raw body or multipart), content-addressed and deduplicated; downloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.response import File

from ade.api import auth
from ade.api.deps import Services
from ade.api.openapi import BINARY, Answer, documented
from ade.core.errors import Invalid, TooLarge, not_found
from ade.records.artifacts import Artifact
from ade.records.auth import Principal

_CHUNK_BYTES = 64 * 1024


async def _multipart_file(request: Request[Any, Any, Any]) -> tuple[AsyncIterator[bytes], str, str | None]:
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise Invalid("a multipart upload needs a `file` part", details=[{"key": "file", "source": "body"}])

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await upload.read(_CHUNK_BYTES):
            yield chunk

    return chunks(), upload.content_type or "application/octet-stream", upload.filename


class ArtifactController(Controller):
    tags = ["artifacts"]

    @post(
        "/workspaces/{workspace_id:str}/artifacts",
        status_code=201,
        summary="Upload an artifact (raw body, or multipart with a `file` part)",
        request_max_body_size=None,  # bounded by ADE_MAX_ARTIFACT_BYTES while streaming instead
        opt=documented(
            request={
                "application/octet-stream": BINARY,
                "multipart/form-data": {
                    "type": "object",
                    "properties": {"file": BINARY},
                    "required": ["file"],
                },
            }
        ),
    )
    async def upload(
        self,
        workspace_id: str,
        request: Request[Any, Any, Any],
        services: Services,
        principal: Principal,
        filename: Annotated[str | None, Parameter(description="name for a raw-body upload")] = None,
    ) -> Artifact:
        await auth.workspace(services, principal, workspace_id, "operator")
        content_type = request.headers.get("content-type", "application/octet-stream")
        limit = services.settings.max_artifact_bytes
        if content_type.startswith("multipart/form-data"):
            declared = int(request.headers.get("content-length") or 0)
            if declared > limit + 64 * 1024:  # a multipart body is parsed in memory: refuse it up front
                raise TooLarge(
                    f"the upload exceeds {limit} bytes (ADE_MAX_ARTIFACT_BYTES)", code="artifact_too_large"
                )
            chunks, content_type, filename = await _multipart_file(request)
        else:
            chunks = request.stream()
        artifact = await services.artifacts.save(
            workspace_id, chunks, max_bytes=limit, content_type=content_type, filename=filename
        )
        await services.audit.record(
            principal.actor, workspace_id, "artifact.upload", artifact.key, {"size": artifact.size}
        )
        return artifact

    @get(
        "/artifacts/{key:str}",
        summary="Download an artifact",
        opt=documented(
            Answer(
                200,
                "The artifact's bytes, in the media type it was uploaded with",
                {"*/*": BINARY},
                {
                    "Content-Disposition": "`attachment`, with the name it was uploaded with",
                    "X-Content-SHA256": "the bytes' sha256 (hex)",
                },
            )
        ),
    )
    async def download(
        self,
        key: str,
        services: Services,
        principal: Principal,
        workspace_id: Annotated[str | None, Parameter(description="needed with the bootstrap token")] = None,
    ) -> File:
        workspace_id = workspace_id or principal.workspace_id
        if workspace_id is None:  # artifacts belong to workspaces: the bootstrap token must name one
            raise not_found("artifact", key)
        await auth.workspace(services, principal, workspace_id)
        artifact = await services.artifacts.get(workspace_id, key)
        return File(
            services.artifacts.path_of(artifact.key),
            media_type=artifact.content_type,
            filename=artifact.filename or artifact.key.replace(":", "-"),
            headers={"X-Content-SHA256": artifact.key.removeprefix("sha256:")},
        )
