"""Docker images steps name by slug: the registry over real HTTP, its tenancy, configuration validation,
resolution for the engine, `ade reindex`, and the `ade images` commands."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from ade.client import AsyncAdeClient, ConflictError, ForbiddenError, NotFoundError
from ade.core.errors import NotFound
from ade.core.models import DockerImage, utcnow
from ade.records.images import ImageRegistry, new_image_id, resolve_image
from ade.records.store import Store
from tests.api import workspace
from tests.system import BOOTSTRAP_TOKEN, AdeSystem, running

pytestmark = pytest.mark.anyio
IMAGE_FIELDS = {"id", "workspace_id", "slug", "image_url", "public", "created_at", "created_by"}
BUSYBOX = "localhost/ade-test-busybox:latest"
ALPINE = "docker.io/library/alpine:3"


def unique(prefix: str) -> str:
    """A slug no other test uses (public slugs are seen by every workspace of the shared system)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "details"} and isinstance(body["details"], list), body
    assert body["code"] == code and body["error"], body
    return body


async def create_image(
    client: httpx.AsyncClient, ws: str, slug: str, image_url: str = BUSYBOX, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/workspaces/{ws}/docker-images", json={"slug": slug, "image_url": image_url, **extra}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def slugs(client: httpx.AsyncClient, ws: str, **params: str) -> dict[str, bool]:
    """{slug: public} of the images a workspace sees."""
    response = await client.get(f"/workspaces/{ws}/docker-images", params=params)
    assert response.status_code == 200, response.text
    return {image["slug"]: image["public"] for image in response.json()}


async def key(client: httpx.AsyncClient, ws: str, role: str) -> str:
    response = await client.post(f"/workspaces/{ws}/api-keys", json={"name": role, "role": role})
    assert response.status_code == 201, response.text
    return str(response.json()["secret"])


def as_key(system: AdeSystem, secret: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.AsyncClient(base_url=f"{system.base_url}/api/v1", headers=headers, timeout=30)


async def test_an_image_is_created_listed_read_and_deleted(client: httpx.AsyncClient, data_dir: Path) -> None:
    ws = await workspace(client)
    image = await create_image(client, ws, "busybox")
    assert set(image) == IMAGE_FIELDS
    assert re.fullmatch(r"img_[0-9A-Z]{26}", image["id"])
    assert (
        image["workspace_id"],
        image["slug"],
        image["image_url"],
        image["public"],
        image["created_by"],
    ) == (
        ws,
        "busybox",
        BUSYBOX,
        False,
        "bootstrap",
    )
    record = data_dir / "docker_images" / f"{image['id']}.json"
    assert json.loads(record.read_bytes()) == image  # the durable copy
    assert (await client.get(f"/docker-images/{image['id']}")).json() == image
    listed = (await client.get(f"/workspaces/{ws}/docker-images")).json()
    assert [i for i in listed if i["workspace_id"] == ws] == [image]  # (other tests' public ones aside)
    deleted = await client.delete(f"/docker-images/{image['id']}")
    assert deleted.status_code == 204 and not record.exists()
    assert_error(await client.get(f"/docker-images/{image['id']}"), 404, "docker_image_not_found")
    assert_error(await client.delete(f"/docker-images/{image['id']}"), 404, "docker_image_not_found")
    assert "busybox" not in await slugs(client, ws)
    audit = (await client.get("/audit-logs", params={"workspace_id": ws})).json()["audit_logs"]
    assert [(e["action"], e["target"]) for e in audit[:2]] == [
        ("docker_image.delete", image["id"]),
        ("docker_image.create", image["id"]),
    ]
    assert audit[1]["details"] == {"slug": "busybox", "image_url": BUSYBOX, "public": False}


async def test_a_slug_is_unique_in_its_workspace(client: httpx.AsyncClient) -> None:
    ws, other = await workspace(client), await workspace(client)
    first = await create_image(client, ws, "tools")
    taken = await client.post(f"/workspaces/{ws}/docker-images", json={"slug": "tools", "image_url": ALPINE})
    assert_error(taken, 409, "slug_taken")
    assert (await client.get(f"/docker-images/{first['id']}")).json()["image_url"] == BUSYBOX  # unchanged
    await create_image(client, other, "tools", ALPINE)  # another workspace has its own namespace
    assert (await client.delete(f"/docker-images/{first['id']}")).status_code == 204
    again = await create_image(client, ws, "tools", ALPINE)  # free again once deleted
    assert again["id"] != first["id"]

    statuses: list[int] = []

    async def attempt() -> None:
        body = {"slug": "raced", "image_url": ALPINE}
        statuses.append((await client.post(f"/workspaces/{ws}/docker-images", json=body)).status_code)

    async with anyio.create_task_group() as tg:  # concurrent creates of one slug: exactly one wins
        for _ in range(5):
            tg.start_soon(attempt)
    assert sorted(statuses) == [201, 409, 409, 409, 409]


BAD_BODIES: list[tuple[str, Any]] = [
    ("no slug", {"image_url": ALPINE}),
    ("no image_url", {"slug": "a"}),
    ("empty slug", {"slug": "", "image_url": ALPINE}),
    ("upper-case slug", {"slug": "Alpine", "image_url": ALPINE}),
    ("slug with a slash", {"slug": "a/b", "image_url": ALPINE}),
    ("slug starting with a dash", {"slug": "-a", "image_url": ALPINE}),
    ("slug of 101 characters", {"slug": "a" * 101, "image_url": ALPINE}),
    ("slug with NUL", {"slug": "a\x00", "image_url": ALPINE}),
    ("empty image_url", {"slug": "a", "image_url": ""}),
    ("image_url with a space", {"slug": "a", "image_url": "alpine latest"}),
    ("image_url with a newline", {"slug": "a", "image_url": "alpine\n:3"}),
    ("image_url with NUL", {"slug": "a", "image_url": "alpine\x00"}),
    ("image_url starting with a dash", {"slug": "a", "image_url": "--privileged"}),
    ("image_url of 501 characters", {"slug": "a", "image_url": "a" * 501}),
    ("public not a boolean", {"slug": "a", "image_url": ALPINE, "public": "yes"}),
    ("unknown field", {"slug": "a", "image_url": ALPINE, "imageUrl": ALPINE}),
    ("not an object", [ALPINE]),
]


async def test_bad_image_bodies_are_400_and_change_nothing(client: httpx.AsyncClient, data_dir: Path) -> None:
    ws = await workspace(client)
    on_disk = set((data_dir / "docker_images").glob("*.json"))
    for what, body in BAD_BODIES:
        response = await client.post(f"/workspaces/{ws}/docker-images", json=body)
        assert response.status_code == 400, (what, response.text)
        assert set(response.json()) == {"error", "code", "details"}, what
    for raw in (b"{", b"", "\u00ff".encode("latin-1")):
        response = await client.post(
            f"/workspaces/{ws}/docker-images", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (raw, response.text)
    reserved = await client.post(
        f"/workspaces/{ws}/docker-images", json={"slug": "build", "image_url": ALPINE}
    )
    assert_error(reserved, 400, "slug_reserved")
    assert await slugs(client, ws, public="false") == {}
    assert set((data_dir / "docker_images").glob("*.json")) == on_disk
    assert_error(
        await client.get(f"/workspaces/{ws}/docker-images", params={"public": "maybe"}),
        400,
        "invalid_request",
    )


async def test_public_images_take_the_bootstrap_token_and_every_workspace_sees_them(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws_a, ws_b = await workspace(client, "a"), await workspace(client, "b")
    admin_a = await key(client, ws_a, "admin")
    admin_b, viewer_b = await key(client, ws_b, "admin"), await key(client, ws_b, "viewer")
    shared = unique("shared")
    async with as_key(system, admin_a) as admin:
        refused = await admin.post(
            f"/workspaces/{ws_a}/docker-images", json={"slug": shared, "image_url": ALPINE, "public": True}
        )
        assert_error(refused, 403, "bootstrap_only")
        private = await create_image(admin, ws_a, unique("private"))
    public = await create_image(client, ws_a, shared, ALPINE, public=True)
    assert public["public"] is True
    try:
        async with as_key(system, viewer_b) as viewer:
            seen = await slugs(viewer, ws_b)
            assert seen[shared] is True and private["slug"] not in seen
            assert shared in await slugs(viewer, ws_b, public="true")
            assert shared not in await slugs(viewer, ws_b, public="false")
            assert (await viewer.get(f"/docker-images/{public['id']}")).json() == public
            assert_error(await viewer.delete(f"/docker-images/{public['id']}"), 403, "role_too_weak")
        async with as_key(system, admin_b) as admin:
            assert_error(await admin.delete(f"/docker-images/{public['id']}"), 403, "bootstrap_only")
            clash = await admin.post(
                f"/workspaces/{ws_b}/docker-images", json={"slug": shared, "image_url": ALPINE}
            )
            assert_error(clash, 409, "slug_taken")  # a slug names one image in every workspace's view
            own = await create_image(admin, ws_b, unique("own-b"))
        # A public slug must be free everywhere: no workspace may already use it for its own image.
        clash = await client.post(
            f"/workspaces/{ws_a}/docker-images",
            json={"slug": own["slug"], "image_url": ALPINE, "public": True},
        )
        assert_error(clash, 409, "slug_taken")
        assert (await client.get(f"/docker-images/{public['id']}")).json() == public
    finally:
        assert (await client.delete(f"/docker-images/{public['id']}")).status_code == 204
    async with as_key(system, viewer_b) as viewer:
        assert shared not in await slugs(viewer, ws_b)
        assert_error(await viewer.get(f"/docker-images/{public['id']}"), 404, "docker_image_not_found")


async def test_another_workspaces_image_is_a_404_exactly_like_a_missing_one(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws_a, ws_b = await workspace(client, "a"), await workspace(client, "b")
    image = await create_image(client, ws_a, "secret-tools")
    missing = "img_01ZZZZZZZZZZZZZZZZZZZZZZZZ"
    async with as_key(system, await key(client, ws_b, "admin")) as other:
        for method in ("GET", "DELETE"):
            theirs = assert_error(
                await other.request(method, f"/docker-images/{image['id']}"), 404, "docker_image_not_found"
            )
            absent = assert_error(
                await other.request(method, f"/docker-images/{missing}"), 404, "docker_image_not_found"
            )
            assert theirs["error"].replace(image["id"], "X") == absent["error"].replace(missing, "X")
        assert "secret-tools" not in await slugs(other, ws_b)
        assert_error(await other.get(f"/workspaces/{ws_a}/docker-images"), 404, "workspace_not_found")
        assert_error(
            await other.post(f"/workspaces/{ws_a}/docker-images", json={"slug": "x", "image_url": ALPINE}),
            404,
            "workspace_not_found",
        )
        for odd in ("nope", "img_x", "img_01zzzzzzzzzzzzzzzzzzzzzzzz", "img_01ZZZZZZZZZZZZZZZZZZZZZZZZ%00"):
            assert_error(await other.get(f"/docker-images/{odd}"), 404, "docker_image_not_found")
    async with as_key(system, await key(client, ws_a, "viewer")) as viewer:
        assert (await viewer.get(f"/docker-images/{image['id']}")).status_code == 200
        assert_error(await viewer.delete(f"/docker-images/{image['id']}"), 403, "role_too_weak")
        assert_error(
            await viewer.post(f"/workspaces/{ws_a}/docker-images", json={"slug": "x", "image_url": ALPINE}),
            403,
            "role_too_weak",
        )
    assert (await client.get(f"/docker-images/{image['id']}")).status_code == 200  # still there


def config(steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "imaged", "steps": steps, **extra}


async def test_a_step_must_name_an_image_its_workspace_sees(client: httpx.AsyncClient) -> None:
    ws, other = await workspace(client, "a"), await workspace(client, "b")
    await create_image(client, ws, "tools")
    await create_image(client, other, "theirs")
    public = await create_image(client, other, unique("pub"), ALPINE, public=True)
    try:
        steps = [
            {"name": "plain", "script": "true"},
            {"name": "own", "script": "true", "image": "tools"},
            {"name": "shared", "script": "true", "image": public["slug"]},
        ]
        created = await client.post(f"/workspaces/{ws}/configurations", json=config(steps))
        assert created.status_code == 201, created.text
        cfg = created.json()
        assert [s["image"] for s in cfg["steps"]] == [None, "tools", public["slug"]]

        before = (await client.get(f"/workspaces/{ws}/configurations")).json()
        unknown = [
            {"name": "ok", "script": "true", "image": "tools"},
            {"name": "missing", "script": "true", "image": "nope"},
            {"name": "foreign", "script": "true", "image": "theirs"},  # another workspace's private image
        ]
        for method, url in (
            ("POST", f"/workspaces/{ws}/configurations"),
            ("PUT", f"/configurations/{cfg['id']}"),
        ):
            body = assert_error(await client.request(method, url, json=config(unknown)), 400, "unknown_image")
            assert [(d["key"], d["step"]) for d in body["details"]] == [
                ("steps[1].image", "missing"),
                ("steps[2].image", "foreign"),
            ]
            one = assert_error(
                await client.request(method, url, json=config(unknown[:2])), 400, "unknown_image"
            )
            assert "'missing'" in one["error"] and one["details"][0]["step"] == "missing"
        assert (await client.get(f"/workspaces/{ws}/configurations")).json() == before  # nothing changed

        # `build`: the image the configuration's build makes, so only with a docker build spec.
        on_build = [{"name": "in-build", "script": "true", "image": "build"}]
        body = assert_error(
            await client.post(f"/workspaces/{ws}/configurations", json=config(on_build)), 400, "unknown_image"
        )
        assert body["details"][0]["key"] == "steps[0].image" and body["details"][0]["step"] == "in-build"
        shell = {"constructor": "shell", "steps": [{"name": "b", "script": "true"}]}
        body = assert_error(
            await client.put(f"/configurations/{cfg['id']}", json=config(on_build, build=shell)),
            400,
            "unknown_image",
        )
        assert body["details"][0]["key"] == "steps[0].image" and "'shell'" in body["details"][0]["message"]
        spec = {"constructor": "docker", "steps": [{"name": "b", "script": "true"}]}
        with_build = await client.put(f"/configurations/{cfg['id']}", json=config(on_build, build=spec))
        assert with_build.status_code == 200, with_build.text
        assert with_build.json()["steps"][0]["image"] == "build"
        recursive = {"constructor": "docker", "steps": [{"name": "b", "script": "true", "image": "build"}]}
        body = assert_error(
            await client.put(f"/configurations/{cfg['id']}", json=config(on_build, build=recursive)),
            400,
            "unknown_image",
        )
        assert body["details"][0]["key"] == "build.steps[0].image"
        bad_build_image = {
            "constructor": "docker",
            "steps": [{"name": "b", "script": "true", "image": "nope"}],
        }
        body = assert_error(
            await client.put(f"/configurations/{cfg['id']}", json=config(on_build, build=bad_build_image)),
            400,
            "unknown_image",
        )
        assert body["details"][0]["key"] == "build.steps[0].image"
        for bad in ("Tools", "a b", "", "x" * 101, "-x"):
            response = await client.post(
                f"/workspaces/{ws}/configurations",
                json=config([{"name": "s", "script": "true", "image": bad}]),
            )
            assert_error(response, 400, "invalid_request")
        assert (await client.get(f"/configurations/{cfg['id']}")).json()["steps"][0]["image"] == "build"
    finally:
        await client.delete(f"/docker-images/{public['id']}")


async def test_resolve_image_gives_the_url_a_slug_names_in_a_workspace(
    client: httpx.AsyncClient, system: AdeSystem
) -> None:
    ws, other = await workspace(client, "a"), await workspace(client, "b")
    await create_image(client, ws, "tools", BUSYBOX)
    await create_image(client, other, "theirs", ALPINE)
    public = await create_image(client, other, unique("pub"), ALPINE, public=True)
    redis = Redis.from_url(system.redis.url)
    try:
        store = Store(redis, system.data_dir)
        for given in (store, redis):
            assert await resolve_image(given, ws, "tools") == BUSYBOX
            assert await resolve_image(given, ws, public["slug"]) == ALPINE  # public: every workspace
            for slug in ("theirs", "nope", "build"):
                with pytest.raises(NotFound) as raised:
                    await resolve_image(given, ws, slug)
                assert raised.value.code == "docker_image_not_found"
        # While Redis is unreachable, a store answers from the data directory; a bare Redis cannot.
        unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        try:
            offline = Store(unreachable, system.data_dir)
            assert await resolve_image(offline, ws, "tools") == BUSYBOX
            assert await resolve_image(offline, ws, public["slug"]) == ALPINE
            with pytest.raises(NotFound):
                await resolve_image(offline, ws, "theirs")
            with pytest.raises(RedisConnectionError):
                await resolve_image(unreachable, ws, "tools")
        finally:
            await unreachable.aclose()
    finally:
        await redis.aclose()
        await client.delete(f"/docker-images/{public['id']}")


async def test_an_image_write_that_redis_refuses_leaves_the_data_directory_as_it_was(tmp_path: Path) -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    registry = ImageRegistry(unreachable, tmp_path)
    image = DockerImage(
        id=new_image_id(),
        workspace_id="ws_x",
        slug="tools",
        image_url=BUSYBOX,
        public=False,
        created_at=utcnow(),
        created_by="bootstrap",
    )
    try:
        with pytest.raises(RedisConnectionError):
            await registry.create(image)
        assert not (tmp_path / "docker_images" / f"{image.id}.json").exists()  # not created
        record = tmp_path / "docker_images" / f"{image.id}.json"
        record.parent.mkdir(parents=True)
        record.write_bytes(msgspec.json.encode(image))
        with pytest.raises(RedisConnectionError):
            await registry.delete(image)
        assert msgspec.json.decode(record.read_bytes(), type=DockerImage) == image  # not deleted
        assert await registry.get(image.id) == image  # read from the durable copy while Redis is down
    finally:
        await unreachable.aclose()


async def test_an_image_whose_indexing_fails_is_not_kept(
    system: AdeSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = Redis.from_url(system.redis.url)
    registry = ImageRegistry(redis, tmp_path)
    image = DockerImage(
        id=new_image_id(),
        workspace_id=f"ws_{secrets.token_hex(8)}",
        slug="tools",
        image_url=BUSYBOX,
        public=False,
        created_at=utcnow(),
        created_by="bootstrap",
    )
    written: list[bool] = []

    def failing_index(pipe: Any, image: DockerImage, data: bytes) -> None:
        written.append((tmp_path / "docker_images" / f"{image.id}.json").exists())
        raise RuntimeError("indexing failed")

    try:
        with monkeypatch.context() as patched:
            patched.setattr("ade.records.images.index_image", failing_index)
            with pytest.raises(RuntimeError):
                await registry.create(image)
        assert written == [True]  # the durable copy came first ...
        assert list((tmp_path / "docker_images").iterdir()) == []  # ... and was taken back
        assert await registry.find(image.workspace_id, "tools") is None  # the slug is still free
        await registry.create(image)
        assert await registry.find(image.workspace_id, "tools") == image
        await registry.delete(image)
    finally:
        await redis.aclose()


async def test_reindex_brings_images_back_after_flushall(tmp_path: Path) -> None:
    async with running(tmp_path) as system, system.api_client() as api:
        ws, other = await workspace(api, "a"), await workspace(api, "b")
        own = await create_image(api, ws, "tools")
        public = await create_image(api, other, "shared", ALPINE, public=True)
        gone = await create_image(api, ws, "gone")
        assert (await api.delete(f"/docker-images/{gone['id']}")).status_code == 204

        async def snapshot() -> dict[str, Any]:
            return {
                "listed": (await api.get(f"/workspaces/{ws}/docker-images")).json(),
                "other": (await api.get(f"/workspaces/{other}/docker-images")).json(),
                "own": (await api.get(f"/docker-images/{own['id']}")).json(),
                "public": (await api.get(f"/docker-images/{public['id']}")).json(),
            }

        before = await snapshot()
        assert [i["slug"] for i in before["listed"]] == ["shared", "tools"]
        redis = Redis.from_url(system.redis.url)
        await redis.flushall()
        await redis.aclose()
        assert_error(await api.get(f"/docker-images/{own['id']}"), 404, "docker_image_not_found")
        done = await anyio.run_process([sys.executable, "-m", "ade.cli", "reindex"], env=system.env())
        assert b"reindexed 2 workspaces" in done.stdout
        assert await snapshot() == before
        # The slug indexes are back too: a slug is still taken, configurations still validate.
        taken = await api.post(f"/workspaces/{ws}/docker-images", json={"slug": "tools", "image_url": ALPINE})
        assert_error(taken, 409, "slug_taken")
        clash = await api.post(
            f"/workspaces/{ws}/docker-images", json={"slug": "shared", "image_url": ALPINE}
        )
        assert_error(clash, 409, "slug_taken")
        clash = await api.post(
            f"/workspaces/{other}/docker-images", json={"slug": "tools", "image_url": ALPINE, "public": True}
        )
        assert_error(clash, 409, "slug_taken")  # the slug use counts were rebuilt
        assert (
            await api.post(f"/workspaces/{ws}/docker-images", json={"slug": "gone", "image_url": ALPINE})
        ).status_code == 201
        steps = [
            {"name": "a", "script": "true", "image": "tools"},
            {"name": "b", "script": "true", "image": "shared"},
        ]
        response = await api.post(f"/workspaces/{ws}/configurations", json=config(steps))
        assert response.status_code == 201, response.text


# The `ade images` commands, as a user runs them.

ADE = [sys.executable, "-m", "ade.cli"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADE, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_ade_images_add_list_delete(client: httpx.AsyncClient, system: AdeSystem) -> None:
    ws = await workspace(client, "cli-images")
    admin = await key(client, ws, "admin")
    base = {k: v for k, v in os.environ.items() if k not in ("ADE_WORKSPACE", "COLUMNS")}
    env = {**base, "ADE_URL": system.base_url, "ADE_TOKEN": BOOTSTRAP_TOKEN}
    added = await anyio.to_thread.run_sync(
        lambda: cli(env, "images", "add", "busybox", BUSYBOX, "--workspace", ws)
    )
    assert added.returncode == 0, added.stderr
    image_id = added.stdout.strip()
    assert image_id.startswith("img_")
    # A workspace key needs no --workspace: the key's own workspace is used.
    as_admin = {**env, "ADE_TOKEN": admin}
    second = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "add", "alpine", ALPINE))
    assert second.returncode == 0, second.stderr
    listed = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "list", "--json"))
    assert listed.returncode == 0, listed.stderr
    mine = {i["slug"]: i for i in json.loads(listed.stdout) if i["workspace_id"] == ws}
    assert {slug: (i["image_url"], i["public"]) for slug, i in mine.items()} == {
        "alpine": (ALPINE, False),
        "busybox": (BUSYBOX, False),
    }
    table = await anyio.to_thread.run_sync(lambda: cli(env, "images", "list", "--workspace", ws))
    assert table.returncode == 0 and image_id in table.stdout and BUSYBOX in table.stdout
    duplicate = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "add", "busybox", ALPINE))
    assert duplicate.returncode == 3 and "slug_taken" in duplicate.stderr
    public = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "add", "pub", ALPINE, "--public"))
    assert public.returncode == 3 and "bootstrap_only" in public.stderr
    no_workspace = await anyio.to_thread.run_sync(lambda: cli(env, "images", "list"))
    assert no_workspace.returncode == 2 and "--workspace" in no_workspace.stderr
    deleted = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "delete", image_id))
    assert deleted.returncode == 0, deleted.stderr
    assert "busybox" not in await slugs(client, ws)
    again = await anyio.to_thread.run_sync(lambda: cli(as_admin, "images", "delete", image_id))
    assert again.returncode == 3 and "docker_image_not_found" in again.stderr


async def test_async_client_manages_images(client: httpx.AsyncClient, system: AdeSystem) -> None:
    ws = await workspace(client, "aio-images")
    async with AsyncAdeClient(system.base_url, BOOTSTRAP_TOKEN) as ade:
        image = await ade.create_docker_image(ws, "tools", BUSYBOX)
        assert (image.slug, image.image_url, image.public, image.workspace_id) == (
            "tools",
            BUSYBOX,
            False,
            ws,
        )
        assert await ade.get_docker_image(image.id) == image
        assert image in await ade.list_docker_images(ws, public=False)
        assert image not in await ade.list_docker_images(ws, public=True)
        with pytest.raises(ConflictError) as conflict:
            await ade.create_docker_image(ws, "tools", ALPINE)
        assert conflict.value.code == "slug_taken"
        await ade.delete_docker_image(image.id)
        with pytest.raises(NotFoundError):
            await ade.get_docker_image(image.id)
        assert (await ade.whoami()).workspace_id is None
    async with AsyncAdeClient(system.base_url, await key(client, ws, "admin")) as ade:
        with pytest.raises(ForbiddenError):
            await ade.create_docker_image(ws, "pub", ALPINE, public=True)
        assert (await ade.whoami()).workspace_id == ws
