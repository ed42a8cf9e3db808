"""The build server's API served at its own paths, over real HTTP on the real system: each endpoint's
shapes, how workflows and builds map onto configurations and runs (a build runs on the worker), paging,
bad input, and tenancy (another project's key sees nothing of it)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis

from ade.core.step_ids import parse_step_id
from tests.api import events_to_end
from tests.system import BOOTSTRAP_TOKEN, AdeSystem, running

pytestmark = pytest.mark.anyio

PROJECT_FIELDS = {"id", "accountId", "name", "createdAt", "updatedAt"}
WORKFLOW_FIELDS = {"id", "projectId", "name", "createdAt", "updatedAt", "steps", "runsOn"}
BUILD_FIELDS = {"id", "projectId", "workflowId", "status", "createdAt", "steps"}
COMMIT_FIELDS = {"commitHash", "repoUrl", "branch", "commitMessage", "commitAuthor"}
IMAGE_FIELDS = {"id", "slug", "imageUrl", "public", "createdAt"}
AUDIT_FIELDS = {"id", "projectId", "action", "details", "createdAt", "actor", "target"}
STEP = {"name": "only", "dependsOn": [], "runScript": "echo hi", "cacheDirs": [], "outputPaths": []}


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def client_for(system: AdeSystem, secret: str) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.AsyncClient(base_url=system.base_url, headers=headers, timeout=60)


@pytest.fixture
async def api(system: AdeSystem) -> AsyncIterator[httpx.AsyncClient]:
    """The build server API's paths, with the bootstrap token."""
    async with client_for(system, BOOTSTRAP_TOKEN) as http:
        yield http


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    return body


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, (response.request.url, response.text)
    return response.json()


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The build server's error body `{error, details}` (plus our `code`)."""
    assert response.status_code == status, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "details"}, body
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["code"], str)
    assert isinstance(body["details"], list) and all(isinstance(d, dict) for d in body["details"])
    return body


def assert_iso(*values: str) -> None:
    for value in values:
        assert datetime.fromisoformat(value).tzinfo is not None, value


async def project(api: httpx.AsyncClient, account: str | None = None, name: str = "proj") -> dict[str, Any]:
    return created(
        await api.post("/api/projects", json={"accountId": account or unique("acct"), "name": name})
    )


async def workflow(
    api: httpx.AsyncClient, project_id: str, steps: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    body = {"name": "wf", "steps": steps, **extra}
    return created(await api.post(f"/api/projects/{project_id}/workflows", json=body))


async def key(api: httpx.AsyncClient, workspace_id: str, role: str = "admin") -> str:
    response = await api.post(
        f"/api/v1/workspaces/{workspace_id}/api-keys", json={"name": role, "role": role}
    )
    return str(created(response)["secret"])


async def builds(api: httpx.AsyncClient, project_id: str, **params: int) -> dict[str, Any]:
    body: dict[str, Any] = ok(await api.get(f"/api/projects/{project_id}/builds", params=params))
    return body


# Projects ------------------------------------------------------------------------------------------


async def test_a_project_is_a_workspace_of_its_account(api: httpx.AsyncClient) -> None:
    account = unique("acct")
    first = await project(api, account, "first")
    second = await project(api, account, "second")
    await project(api, unique("other"), "elsewhere")
    assert set(first) == PROJECT_FIELDS and first["accountId"] == account and first["name"] == "first"
    assert first["id"].startswith("ws_")
    assert_iso(first["createdAt"], first["updatedAt"])

    assert ok(await api.get("/api/projects", params={"accountId": account})) == [first, second]
    assert ok(await api.get("/api/projects", params={"accountId": unique("nobody")})) == []
    native = ok(await api.get(f"/api/v1/workspaces/{first['id']}"))
    assert native["account_id"] == account and native["name"] == "first"


async def test_an_accounts_projects_come_back_after_reindex(tmp_path: Path) -> None:
    async with running(tmp_path) as system, client_for(system, BOOTSTRAP_TOKEN) as api:
        account = unique("acct")
        made = [await project(api, account, "one"), await project(api, account, "two")]
        redis = Redis.from_url(system.redis.url)
        await redis.flushall()
        await redis.aclose()
        assert ok(await api.get("/api/projects", params={"accountId": account})) == []
        await anyio.run_process([sys.executable, "-m", "ade.cli", "reindex"], env=system.env())
        assert ok(await api.get("/api/projects", params={"accountId": account})) == made


async def test_a_project_needs_an_account_and_a_name_and_a_bad_one_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    account = unique("acct")
    assert "accountId" in assert_error(await api.get("/api/projects"), 400)["error"]
    assert_error(await api.get("/api/projects", params={"accountId": ""}), 400)
    for body in (
        {"accountId": account, "name": ""},
        {"accountId": account},
        {"name": "x"},
        {"accountId": ""},
    ):
        assert_error(await api.post("/api/projects", json=body), 400)
    bad_json = await api.post(
        "/api/projects", content=b'{"accountId": ', headers={"content-type": "application/json"}
    )
    assert_error(bad_json, 400)
    assert_error(await api.post("/api/projects", json={"accountId": account, "name": "x" * 101}), 400)
    assert ok(await api.get("/api/projects", params={"accountId": account})) == []


# Workflows -----------------------------------------------------------------------------------------


async def test_a_workflows_steps_map_onto_a_configurations_steps(api: httpx.AsyncClient) -> None:
    proj = await project(api)
    slug = unique("img")
    image = {"slug": slug, "imageUrl": "docker.io/library/alpine:3", "public": True}
    created(await api.post("/api/docker-images", json=image))
    steps = [
        {
            "name": "build",
            "imageSlug": slug,
            "dependsOn": [],
            "runScript": "make",
            "cacheDirs": [".cache"],
            "outputPaths": ["dist/*.whl"],
        },
        {
            "name": "test",
            "imageSlug": slug,
            "dependsOn": ["build"],
            "runScript": "make test",
            "cacheDirs": [],
            "outputPaths": [],
        },
    ]
    flow = await workflow(api, proj["id"], steps, runsOn=["linux", "gpu"])
    assert set(flow) == WORKFLOW_FIELDS and flow["projectId"] == proj["id"] and flow["name"] == "wf"
    assert flow["id"].startswith("cfg_") and flow["steps"] == steps and flow["runsOn"] == ["linux", "gpu"]
    assert_iso(flow["createdAt"], flow["updatedAt"])
    assert ok(await api.get(f"/api/projects/{proj['id']}/workflows")) == [flow]

    cfg = ok(await api.get(f"/api/v1/configurations/{flow['id']}"))
    assert cfg["workspace_id"] == proj["id"] and cfg["runs_on"] == ["linux", "gpu"]
    mapped = [
        {key: step[key] for key in ("name", "image", "depends_on", "script", "cache_dirs", "output_paths")}
        for step in cfg["steps"]
    ]
    assert mapped == [
        {
            key: step[old]
            for key, old in (
                ("name", "name"),
                ("image", "imageSlug"),
                ("depends_on", "dependsOn"),
                ("script", "runScript"),
                ("cache_dirs", "cacheDirs"),
                ("output_paths", "outputPaths"),
            )
        }
        for step in steps
    ]


async def test_a_bad_workflow_is_a_400_and_an_unknown_project_a_404_and_nothing_is_saved(
    api: httpx.AsyncClient,
) -> None:
    proj = await project(api)
    url = f"/api/projects/{proj['id']}/workflows"
    for body in (
        {"name": "", "steps": [STEP]},
        {"name": "wf", "steps": []},
        {"name": "wf", "steps": [{**STEP, "runScript": ""}]},
        {"name": "wf", "steps": [{**STEP, "dependsOn": ["nowhere"]}]},
        {"name": "wf", "steps": [{**STEP, "imageSlug": unique("missing")}]},
        {"name": "wf", "steps": [STEP], "runsOn": ["Not A Label"]},
    ):
        assert_error(await api.post(url, json=body), 400)
    assert_error(await api.post(url, content=b"[", headers={"content-type": "application/json"}), 400)
    assert ok(await api.get(url)) == []
    for missing in ("ws_01JZZZZZZZZZZZZZZZZZZZZZZZ", "nope"):
        assert_error(await api.get(f"/api/projects/{missing}/workflows"), 404)
        assert_error(
            await api.post(f"/api/projects/{missing}/workflows", json={"name": "wf", "steps": [STEP]}), 404
        )


# Builds --------------------------------------------------------------------------------------------


async def test_a_build_is_a_run_that_the_worker_takes_to_success_with_its_commit(
    api: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    proj = await project(api)
    steps = [{**STEP, "name": "first"}, {**STEP, "name": "second", "runScript": "echo second"}]
    flow = await workflow(api, proj["id"], steps)
    commit = {
        "commitHash": "0123456789abcdef",
        "repoUrl": "https://example.com/repo.git",
        "branch": "main",
        "commitMessage": "Fix the thing",
        "commitAuthor": "Ada <ada@example.com>",
    }
    build = created(
        await api.post(f"/api/projects/{proj['id']}/builds", json={"workflowId": flow["id"], **commit})
    )
    assert set(build) == BUILD_FIELDS | COMMIT_FIELDS, build
    assert (
        build["id"].startswith("run_")
        and build["projectId"] == proj["id"]
        and build["workflowId"] == flow["id"]
    )
    assert build["status"] in ("PENDING", "RUNNING") and {k: build[k] for k in commit} == commit
    assert build["steps"] == [
        {"id": f"{build['id']}.0", "name": "first", "status": "PENDING", "dependsOn": []},
        {"id": f"{build['id']}.1", "name": "second", "status": "PENDING", "dependsOn": ["first"]},
    ]
    assert [parse_step_id(step["id"]) for step in build["steps"]] == [(build["id"], 0), (build["id"], 1)]

    events = await events_to_end(client, build["id"])  # the native run's own stream
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.completed"
    done = (await builds(api, proj["id"]))["builds"][0]
    assert done["id"] == build["id"] and done["status"] == "SUCCESS"
    assert set(done) == BUILD_FIELDS | COMMIT_FIELDS | {"startedAt", "finishedAt"}
    assert {k: done[k] for k in commit} == commit
    assert_iso(done["createdAt"], done["startedAt"], done["finishedAt"])
    assert [step["status"] for step in done["steps"]] == ["SUCCESS", "SUCCESS"]
    native = ok(await client.get(f"/runs/{build['id']}"))
    assert native["status"] == "succeeded" and native["commit"] == {
        "hash": commit["commitHash"],
        "repo_url": commit["repoUrl"],
        "branch": commit["branch"],
        "message": commit["commitMessage"],
        "author": commit["commitAuthor"],
    }


async def test_a_failing_build_is_failed_and_a_build_without_a_commit_has_no_commit_fields(
    api: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    proj = await project(api)
    flow = await workflow(api, proj["id"], [{**STEP, "runScript": "exit 3"}])
    build = created(await api.post(f"/api/projects/{proj['id']}/builds", json={"workflowId": flow["id"]}))
    assert set(build) == BUILD_FIELDS
    await events_to_end(client, build["id"])
    done = (await builds(api, proj["id"]))["builds"][0]
    assert done["status"] == "FAILED" and [s["status"] for s in done["steps"]] == ["FAILED"]


async def test_builds_are_paged_newest_first(api: httpx.AsyncClient) -> None:
    proj = await project(api)
    flow = await workflow(api, proj["id"], [STEP])
    made = [
        created(await api.post(f"/api/projects/{proj['id']}/builds", json={"workflowId": flow["id"]}))["id"]
        for _ in range(3)
    ]
    first = await builds(api, proj["id"], limit=2)
    assert first["pagination"] == {"total": 3, "limit": 2, "offset": 0, "hasMore": True}
    rest = await builds(api, proj["id"], limit=2, offset=2)
    assert rest["pagination"] == {"total": 3, "limit": 2, "offset": 2, "hasMore": False}
    assert [b["id"] for b in first["builds"] + rest["builds"]] == made[::-1]
    everything = await builds(api, proj["id"])
    assert everything["pagination"] == {"total": 3, "limit": 20, "offset": 0, "hasMore": False}
    assert (await builds(api, proj["id"], offset=5))["builds"] == []
    for params in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"limit": "many"}):
        assert_error(await api.get(f"/api/projects/{proj['id']}/builds", params=params), 400)


async def test_a_bad_build_request_is_refused_and_queues_nothing(api: httpx.AsyncClient) -> None:
    proj, other = await project(api), await project(api)
    foreign = await workflow(api, other["id"], [STEP])
    url = f"/api/projects/{proj['id']}/builds"
    assert_error(await api.post(url, json={"workflowId": "cfg_01JZZZZZZZZZZZZZZZZZZZZZZZ"}), 404)
    assert_error(await api.post(url, json={"workflowId": foreign["id"]}), 404)  # not this project's
    for body in ({}, {"workflowId": ""}, {"workflowId": 5}, {"workflowId": "x", "branch": ["main"]}):
        assert_error(await api.post(url, json=body), 400)
    assert_error(await api.post(url, content=b"{", headers={"content-type": "application/json"}), 400)
    assert_error(await api.post("/api/projects/nope/builds", json={"workflowId": foreign["id"]}), 404)
    assert_error(await api.get("/api/projects/nope/builds"), 404)
    assert (await builds(api, proj["id"]))["pagination"]["total"] == 0
    assert (await builds(api, other["id"]))["pagination"]["total"] == 0


# Docker images -------------------------------------------------------------------------------------


async def test_docker_images_belong_to_the_keys_project_or_are_public(
    api: httpx.AsyncClient, system: AdeSystem
) -> None:
    public_slug, private_slug = unique("pub"), unique("priv")
    public = created(
        await api.post(
            "/api/docker-images", json={"slug": public_slug, "imageUrl": "alpine:3", "public": True}
        )
    )
    assert set(public) == IMAGE_FIELDS and public["public"] is True and public["imageUrl"] == "alpine:3"
    assert_iso(public["createdAt"])
    again = {"slug": public_slug, "imageUrl": "busybox:1", "public": True}
    assert_error(await api.post("/api/docker-images", json=again), 409)
    # The bootstrap token belongs to no project: a private image would be no one's.
    assert_error(
        await api.post("/api/docker-images", json={"slug": unique("x"), "imageUrl": "alpine:3"}), 403
    )
    for bad in (
        {"slug": "", "imageUrl": "alpine:3"},
        {"slug": "Upper", "imageUrl": "alpine:3"},
        {"slug": "x"},
    ):
        assert_error(await api.post("/api/docker-images", json={**bad, "public": True}), 400)

    proj = await project(api)
    async with client_for(system, await key(api, proj["id"])) as admin:
        private = created(
            await admin.post("/api/docker-images", json={"slug": private_slug, "imageUrl": "alpine:3"})
        )
        assert set(private) == IMAGE_FIELDS | {"projectId"} and private["projectId"] == proj["id"]
        assert private["public"] is False
        assert_error(
            await admin.post("/api/docker-images", json={"slug": private_slug, "imageUrl": "alpine:3"}), 409
        )
        assert_error(
            await admin.post(
                "/api/docker-images", json={"slug": unique("p"), "imageUrl": "a:1", "public": True}
            ),
            403,
        )
        seen = {image["slug"]: image for image in ok(await admin.get("/api/docker-images"))}
        assert seen[private_slug] == private and seen[public_slug] == public
        only_public = ok(await admin.get("/api/docker-images", params={"public": "true"}))
        assert public in only_public and all(image["public"] for image in only_public)
        assert ok(await admin.get("/api/docker-images", params={"public": "false"})) == [private]
        # a workflow of the project may name both
        both = [{**STEP, "imageSlug": private_slug}, {**STEP, "name": "two", "imageSlug": public_slug}]
        await workflow(admin, proj["id"], both)
    assert private_slug not in {image["slug"] for image in ok(await api.get("/api/docker-images"))}


# Audit logs ----------------------------------------------------------------------------------------


async def test_audit_logs_are_paged_and_filtered_in_camel_case(api: httpx.AsyncClient) -> None:
    proj = await project(api)
    flow = await workflow(api, proj["id"], [STEP])
    page = ok(await api.get("/api/audit-logs", params={"projectId": proj["id"]}))
    assert set(page) == {"auditLogs", "pagination"}
    assert page["pagination"] == {"total": 2, "limit": 100, "offset": 0, "hasMore": False}
    newest, oldest = page["auditLogs"]
    assert set(newest) == AUDIT_FIELDS and newest["projectId"] == proj["id"]
    assert (newest["action"], newest["target"], newest["details"]) == (
        "configuration.create",
        flow["id"],
        {"name": "wf"},
    )
    assert (oldest["action"], oldest["actor"]) == ("workspace.create", "bootstrap")
    assert oldest["details"]["account_id"] == proj["accountId"]
    assert_iso(newest["createdAt"])
    one = ok(await api.get("/api/audit-logs", params={"projectId": proj["id"], "limit": 1}))
    assert one["auditLogs"] == [newest] and one["pagination"]["hasMore"] is True
    filtered = ok(
        await api.get("/api/audit-logs", params={"projectId": proj["id"], "action": "workspace.create"})
    )
    assert filtered["auditLogs"] == [oldest] and filtered["pagination"]["total"] == 1
    everyone = ok(await api.get("/api/audit-logs", params={"limit": 1000}))
    assert newest in everyone["auditLogs"]
    for params in ({"limit": 0}, {"offset": -1}, {"limit": "x"}):
        assert_error(await api.get("/api/audit-logs", params=params), 400)
    assert_error(await api.get("/api/audit-logs", params={"projectId": "ws_01JZZZZZZZZZZZZZZZZZZZZZZZ"}), 404)


# Tenancy -------------------------------------------------------------------------------------------


async def test_another_projects_key_sees_nothing_of_a_project(
    api: httpx.AsyncClient, system: AdeSystem
) -> None:
    account = unique("acct")
    a, b = await project(api, account, "a"), await project(api, account, "b")
    flow = await workflow(api, a["id"], [STEP])
    build = created(await api.post(f"/api/projects/{a['id']}/builds", json={"workflowId": flow["id"]}))
    async with client_for(system, await key(api, a["id"])) as owner:
        secret_slug = unique("secret")
        created(await owner.post("/api/docker-images", json={"slug": secret_slug, "imageUrl": "alpine:3"}))
    before = ok(await api.get("/api/audit-logs", params={"projectId": a["id"]}))

    async with client_for(system, await key(api, b["id"])) as stranger:
        assert ok(await stranger.get("/api/projects", params={"accountId": account})) == [b]
        assert_error(await stranger.post("/api/projects", json={"accountId": account, "name": "c"}), 403)
        for response in (
            await stranger.get(f"/api/projects/{a['id']}/workflows"),
            await stranger.post(f"/api/projects/{a['id']}/workflows", json={"name": "wf", "steps": [STEP]}),
            await stranger.get(f"/api/projects/{a['id']}/builds"),
            await stranger.post(f"/api/projects/{a['id']}/builds", json={"workflowId": flow["id"]}),
            await stranger.post(f"/api/projects/{b['id']}/builds", json={"workflowId": flow["id"]}),
            await stranger.get("/api/audit-logs", params={"projectId": a["id"]}),
        ):
            body = assert_error(response, 404)
            assert flow["id"] not in body["error"] or body["code"] == "workflow_not_found"
            assert build["id"] not in response.text
        own_logs = ok(await stranger.get("/api/audit-logs", params={"limit": 1000}))["auditLogs"]
        assert own_logs and {entry["projectId"] for entry in own_logs} == {b["id"]}
        assert secret_slug not in {image["slug"] for image in ok(await stranger.get("/api/docker-images"))}
        assert_error(await stranger.get(f"/api/projects/{a['id']}/builds", params={"limit": 1}), 404)

    async with client_for(system, await key(api, b["id"], "viewer")) as viewer:
        assert ok(await viewer.get(f"/api/projects/{b['id']}/workflows")) == []
        assert_error(
            await viewer.post(f"/api/projects/{b['id']}/workflows", json={"name": "wf", "steps": [STEP]}), 403
        )
        assert_error(await viewer.get("/api/audit-logs"), 403)
    assert ok(await api.get("/api/audit-logs", params={"projectId": a["id"]})) == before
    assert (await builds(api, a["id"]))["pagination"]["total"] == 1
    assert (await builds(api, b["id"]))["pagination"]["total"] == 0
    assert ok(await api.get(f"/api/projects/{a['id']}/workflows")) == [flow]


async def test_the_build_server_paths_need_a_key(system: AdeSystem) -> None:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as anonymous:
        for path in ("/api/projects?accountId=x", "/api/docker-images", "/api/audit-logs"):
            assert_error(await anonymous.get(path), 401)
    async with client_for(system, "ade.key_nope.nope") as wrong:
        assert_error(await wrong.get("/api/docker-images"), 401)
