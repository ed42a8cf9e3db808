"""`/api/docker-images`: the images steps name by `imageSlug`.

Whose an image is follows from the key that creates it: a workspace key's image belongs to its workspace
(admins; private unless `public`, which takes the bootstrap token). The bootstrap token belongs to no
workspace, so what it creates here is a public image (visible to every workspace), owned by the reserved
`PUBLIC_IMAGE_OWNER`; it must say `"public": true` (a private image with no workspace would be visible to
no one: 403 otherwise). Listing: a workspace key sees its own and the public images; the bootstrap token
the public ones.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import Parameter

from ade.api.compat.projects import project
from ade.api.compat.shapes import CompatDockerImage, CompatDockerImageCreate, docker_image_of
from ade.api.deps import Services
from ade.api.docker_images import register_image
from ade.core.errors import Forbidden
from ade.core.models import DockerImageCreate
from ade.records.auth import Principal
from ade.records.images import ImageRegistry

PUBLIC_IMAGE_OWNER = "ws_public"  # the owner of the public images the bootstrap token creates here
PublicFilter = Annotated[bool | None, Parameter(description="true: public images only; false: private only")]


class CompatDockerImageController(Controller):
    path = "/docker-images"
    tags = ["build server API"]

    @get("/", summary="Docker images the caller may name (its workspace's and the public ones)")
    async def list(
        self, services: Services, principal: Principal, public: PublicFilter = None
    ) -> list[CompatDockerImage]:
        registry = ImageRegistry.of(services.store)
        if principal.workspace_id is None:
            images = await registry.public()
        else:
            images = await registry.visible(principal.workspace_id)
        return [
            docker_image_of(image, owner_shown=image.workspace_id != PUBLIC_IMAGE_OWNER)
            for image in images
            if public is None or image.public == public
        ]

    @post("/", status_code=201, summary="Register a docker image (in the key's workspace; public: bootstrap)")
    async def create(
        self, data: CompatDockerImageCreate, services: Services, principal: Principal
    ) -> CompatDockerImage:
        if principal.workspace_id is None:
            if not data.public:
                raise Forbidden(
                    "the bootstrap token creates public images only; a private image belongs to a project: "
                    "create it with that project's key",
                    code="private_image_needs_project_key",
                    details=[{"key": "public", "message": "must be true with the bootstrap token"}],
                )
            owner = PUBLIC_IMAGE_OWNER
        else:
            owner = (await project(services, principal, principal.workspace_id, "admin")).id
        native = DockerImageCreate(slug=data.slug, image_url=data.image_url, public=data.public)
        image = await register_image(services, principal, owner, native)
        return docker_image_of(image, owner_shown=owner != PUBLIC_IMAGE_OWNER)
