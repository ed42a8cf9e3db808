"""Docker images: container images a step names by `slug` (its `image`). Admins register and remove their
workspace's images; public ones (visible to every workspace) take the bootstrap token."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import Parameter

from ade.api import auth
from ade.api.deps import Services
from ade.core.errors import Forbidden, Invalid, not_found
from ade.core.models import BUILD_IMAGE, DockerImage, DockerImageCreate, utcnow
from ade.records.auth import Principal
from ade.records.images import ImageRegistry, new_image_id

PublicFilter = Annotated[
    bool | None, Parameter(description="true: public images only; false: the workspace's private ones only")
]


def _bootstrap_only(principal: Principal, what: str) -> None:
    if principal.workspace_id is not None:
        raise Forbidden(f"{what} takes the bootstrap token", code="bootstrap_only")


async def _image(services: Services, principal: Principal, image_id: str) -> DockerImage:
    """An image the caller may see (its workspace's, or a public one); another workspace's is a 404."""
    image = await ImageRegistry.of(services.store).get(image_id)
    if principal.stream_id is not None or not (image.public or principal.sees(image.workspace_id)):
        raise not_found("docker_image", image_id)
    return image


async def register_image(
    services: Services, principal: Principal, workspace_id: str, data: DockerImageCreate
) -> DockerImage:
    """Register an image owned by `workspace_id` (the caller may administer it); a public one takes the
    bootstrap token; `409 slug_taken` if the slug is taken in the workspace's view."""
    if data.public:
        _bootstrap_only(principal, "a public docker image")
    if data.slug == BUILD_IMAGE:
        raise Invalid(
            f"the slug {BUILD_IMAGE!r} is reserved: a step's `image: build` names its build's image",
            code="slug_reserved",
            details=[{"key": "slug", "message": "reserved"}],
        )
    image = DockerImage(
        id=new_image_id(),
        workspace_id=workspace_id,
        slug=data.slug,
        image_url=data.image_url,
        public=data.public,
        created_at=utcnow(),
        created_by=principal.actor,
    )
    await ImageRegistry.of(services.store).create(image)
    await services.audit.record(
        principal.actor,
        workspace_id,
        "docker_image.create",
        image.id,
        {"slug": image.slug, "image_url": image.image_url, "public": image.public},
    )
    return image


class DockerImageController(Controller):
    tags = ["docker images"]

    @post(
        "/workspaces/{workspace_id:str}/docker-images",
        status_code=201,
        summary="Register a docker image (public ones take the bootstrap token)",
    )
    async def create(
        self, workspace_id: str, data: DockerImageCreate, services: Services, principal: Principal
    ) -> DockerImage:
        await auth.workspace(services, principal, workspace_id, "admin")
        return await register_image(services, principal, workspace_id, data)

    @get(
        "/workspaces/{workspace_id:str}/docker-images",
        summary="List the docker images a workspace may name: its own and the public ones",
    )
    async def list_visible(
        self, workspace_id: str, services: Services, principal: Principal, public: PublicFilter = None
    ) -> list[DockerImage]:
        await auth.workspace(services, principal, workspace_id)
        images = await ImageRegistry.of(services.store).visible(workspace_id)
        return [image for image in images if public is None or image.public == public]

    @get("/docker-images/{image_id:str}", summary="Get a docker image")
    async def read(self, image_id: str, services: Services, principal: Principal) -> DockerImage:
        return await _image(services, principal, image_id)

    @delete(
        "/docker-images/{image_id:str}",
        status_code=204,
        summary="Remove a docker image (a public one takes the bootstrap token)",
    )
    async def remove(self, image_id: str, services: Services, principal: Principal) -> None:
        image = await _image(services, principal, image_id)
        principal.require("admin")
        if image.public:
            _bootstrap_only(principal, "removing a public docker image")
        await ImageRegistry.of(services.store).delete(image)
        await services.audit.record(
            principal.actor,
            image.workspace_id,
            "docker_image.delete",
            image.id,
            {"slug": image.slug, "image_url": image.image_url, "public": image.public},
        )
