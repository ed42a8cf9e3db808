"""Docker images steps may name by slug: `docker_images/<id>.json` first, then Redis (like `records.store`).

A slug names exactly one image in a workspace's view — its own images and the public ones (public images
are made with the bootstrap token and visible to every workspace): a workspace's slugs are distinct, and a
public slug is used by no other image anywhere. Slugs are claimed with an optimistic Redis transaction
(WATCH on the slug indexes), so concurrent creates from any number of API processes cannot both win.
`resolve_image` turns a step's slug into the reference a container engine pulls.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from ade.core import ids, keys, paths
from ade.core.errors import Conflict, NotFound, not_found
from ade.core.models import DockerImage
from ade.records.store import Store, write_atomic

T = TypeVar("T")

ID_PREFIX = "img"  # `img_<ulid>`
ID_PATTERN = re.compile(rf"^{ID_PREFIX}_[0-9A-HJKMNP-TV-Z]{{26}}$")
_WATCH_TRIES = 50  # optimistic transactions retried while other image writes keep racing them

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DockerImage)


def new_image_id() -> str:
    return ids.new_id(ID_PREFIX)


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def index_image(pipe: Any, image: DockerImage, data: bytes) -> None:
    """An image's Redis record and index entries, except the slug use count (also used by `ade reindex`)."""
    pipe.set(keys.docker_image(image.id), data)
    pipe.zadd(keys.workspace_docker_images(image.workspace_id), {image.id: 0})
    pipe.hset(keys.workspace_image_slugs(image.workspace_id), image.slug, image.id)
    if image.public:
        pipe.zadd(keys.PUBLIC_DOCKER_IMAGES, {image.id: 0})
        pipe.hset(keys.PUBLIC_IMAGE_SLUGS, image.slug, image.id)


class ImageRegistry:
    """The docker image records of one Redis and data directory."""

    def __init__(self, redis: Redis, data_dir: Path) -> None:
        self.redis = redis
        self.data_dir = data_dir
        self.disk_fallback = True  # reads answer from the data directory while Redis is unreachable

    @classmethod
    def of(cls, store: Store) -> ImageRegistry:
        return cls(store.redis, store.data_dir)

    async def _transaction(self, watched: list[str], body: Callable[[Any], Awaitable[T]]) -> T:
        """`body(pipe)` with `watched` keys under WATCH; it reads, then queues commands after `pipe.multi()`
        and executes them. Run again if a watched key changed meanwhile."""
        for _ in range(_WATCH_TRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(*watched)
                try:
                    return await body(pipe)
                except WatchError:
                    continue
        raise Conflict(
            "docker images are being changed concurrently; try again", code="image_write_contended"
        )

    async def create(self, image: DockerImage) -> None:
        """Claim the slug and store the image; `409 slug_taken` if the workspace already sees that slug (its
        own image, or a public one), or — for a public image — if any workspace uses it."""
        path = paths.docker_image_record(self.data_dir, image.id)
        data = _encoder.encode(image)
        own_slugs = keys.workspace_image_slugs(image.workspace_id)
        written = False

        async def claim(pipe: Any) -> None:
            nonlocal written
            taken_here = await pipe.hexists(own_slugs, image.slug)
            taken_public = await pipe.hexists(keys.PUBLIC_IMAGE_SLUGS, image.slug)
            uses = int(await pipe.hget(keys.IMAGE_SLUG_USES, image.slug) or 0)
            if taken_here or taken_public or (image.public and uses > 0):
                where = (
                    "this workspace"
                    if taken_here
                    else "a public image"
                    if taken_public
                    else "another workspace (a public slug must be unused everywhere)"
                )
                raise Conflict(
                    f"the docker image slug {image.slug!r} is taken by {where}",
                    code="slug_taken",
                    details=[{"key": "slug", "message": f"taken by {where}"}],
                )
            if not written:  # the durable copy first; taken back below if the claim fails
                write_atomic(path, data)
                written = True
            pipe.multi()
            index_image(pipe, image, data)
            pipe.hincrby(keys.IMAGE_SLUG_USES, image.slug, 1)
            await pipe.execute()

        try:
            await self._transaction([own_slugs, keys.PUBLIC_IMAGE_SLUGS, keys.IMAGE_SLUG_USES], claim)
        except BaseException:
            if written:
                path.unlink(missing_ok=True)
            raise

    async def get(self, image_id: str) -> DockerImage:
        """An image by id (from Redis; from the data directory while Redis is unreachable)."""
        if not ID_PATTERN.match(image_id):
            raise not_found("docker_image", image_id)
        try:
            raw = await self.redis.get(keys.docker_image(image_id))
        except (RedisConnectionError, RedisTimeoutError):
            path = paths.docker_image_record(self.data_dir, image_id)
            raw = path.read_bytes() if self.disk_fallback and path.is_file() else None
            if raw is None:
                raise
        if raw is None:
            raise not_found("docker_image", image_id)
        return _decoder.decode(raw)

    async def _many(self, ids_key: str) -> list[DockerImage]:
        found = await self.redis.zrange(ids_key, 0, -1)
        raws = await self.redis.mget([keys.docker_image(i.decode()) for i in found]) if found else []
        return [_decoder.decode(raw) for raw in raws if raw is not None]

    async def visible(self, workspace_id: str) -> list[DockerImage]:
        """The images a workspace may name: its own and the public ones, by slug."""
        own = await self._many(keys.workspace_docker_images(workspace_id))
        public = [i for i in await self._many(keys.PUBLIC_DOCKER_IMAGES) if i.workspace_id != workspace_id]
        return sorted(own + public, key=lambda image: image.slug)

    async def public(self) -> list[DockerImage]:
        """Every public image, by slug."""
        return sorted(await self._many(keys.PUBLIC_DOCKER_IMAGES), key=lambda image: image.slug)

    async def find(self, workspace_id: str, slug: str) -> DockerImage | None:
        """The image `slug` names in a workspace's view (its own first, then the public ones), or None.

        While Redis is unreachable, the records in the data directory answer (one scan of them)."""
        try:
            redis: Any = self.redis  # redis-py's async hash commands are typed as maybe-not-awaitable
            image_id = _text(await redis.hget(keys.workspace_image_slugs(workspace_id), slug))
            if image_id is None:
                image_id = _text(await redis.hget(keys.PUBLIC_IMAGE_SLUGS, slug))
            raw = await self.redis.get(keys.docker_image(image_id)) if image_id else None
        except (RedisConnectionError, RedisTimeoutError):
            if not self.disk_fallback:
                raise
            return self._find_on_disk(workspace_id, slug)
        return None if raw is None else _decoder.decode(raw)

    def _find_on_disk(self, workspace_id: str, slug: str) -> DockerImage | None:
        public = None
        for path in paths.docker_images_dir(self.data_dir).glob("*.json"):
            with contextlib.suppress(OSError, msgspec.DecodeError):
                image = _decoder.decode(path.read_bytes())
                if image.slug == slug and image.workspace_id == workspace_id:
                    return image
                if image.slug == slug and image.public:
                    public = image
        return public

    async def delete(self, image: DockerImage) -> None:
        """Remove an image: its file, then its Redis entries (the file is put back if Redis fails)."""
        path = paths.docker_image_record(self.data_dir, image.id)
        previous = path.read_bytes() if path.is_file() else None
        own_slugs = keys.workspace_image_slugs(image.workspace_id)

        async def remove(pipe: Any) -> None:
            if not await pipe.exists(keys.docker_image(image.id)):
                raise not_found("docker_image", image.id)
            uses = int(await pipe.hget(keys.IMAGE_SLUG_USES, image.slug) or 0)
            mapped_here = _text(await pipe.hget(own_slugs, image.slug)) == image.id
            mapped_public = _text(await pipe.hget(keys.PUBLIC_IMAGE_SLUGS, image.slug)) == image.id
            path.unlink(missing_ok=True)
            pipe.multi()
            pipe.delete(keys.docker_image(image.id))
            pipe.zrem(keys.workspace_docker_images(image.workspace_id), image.id)
            pipe.zrem(keys.PUBLIC_DOCKER_IMAGES, image.id)
            if mapped_here:
                pipe.hdel(own_slugs, image.slug)
            if mapped_public:
                pipe.hdel(keys.PUBLIC_IMAGE_SLUGS, image.slug)
            if uses > 1:
                pipe.hset(keys.IMAGE_SLUG_USES, image.slug, uses - 1)
            else:
                pipe.hdel(keys.IMAGE_SLUG_USES, image.slug)
            await pipe.execute()

        watched = [keys.docker_image(image.id), own_slugs, keys.PUBLIC_IMAGE_SLUGS, keys.IMAGE_SLUG_USES]
        try:
            await self._transaction(watched, remove)
        except NotFound:
            raise
        except BaseException:
            if previous is not None:
                write_atomic(path, previous)
            raise


async def resolve_image(store_or_redis: Store | Redis, workspace_id: str, slug: str) -> str:
    """The image reference (`image_url`) a step's `image` slug names in its workspace: the workspace's own
    image of that slug, else the public one. `NotFound` (`docker_image_not_found`) if there is none — e.g.
    the image was deleted after the configuration was saved.

    For the execution engine, at run time. `build` (`models.BUILD_IMAGE`) is not a registry slug: the
    image a configuration's build made is the engine's to find. Given a `Store`, a Redis outage falls back
    to the records in the data directory; given a bare `Redis`, it raises.
    """
    if isinstance(store_or_redis, Store):
        registry = ImageRegistry.of(store_or_redis)
    else:
        registry = ImageRegistry(store_or_redis, Path())
        registry.disk_fallback = False
    image = await registry.find(workspace_id, slug)
    if image is None:
        raise not_found("docker_image", slug)
    return image.image_url


async def count_slug_uses(redis: Redis, counts: dict[str, int]) -> None:
    """Set the slug use counts (`ade reindex`)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.IMAGE_SLUG_USES)
        if counts:
            pipe.hset(keys.IMAGE_SLUG_USES, mapping={slug: str(uses) for slug, uses in counts.items()})
        await pipe.execute()
