"""Registered runners: their records, tokens, tenancy, HTTP surface, CLI and `ade reindex` — against the
real system (Redis, `ade serve`), never a mock. What a runner does with its token is the runner protocol's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from litestar import get
from litestar.di import Provide
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from ade.api.app import create_app
from ade.api.auth import RUNNER_ROUTES, provide_runner
from ade.cli.redis_server import RedisServer
from ade.core.models import Runner, utcnow
from ade.core.settings import Settings
from ade.records import runners
from ade.records.store import Store
from tests.api import configuration, workspace
from tests.integration.test_security import MATRIX, assert_error
from tests.system import BOOTSTRAP_TOKEN, AdeSystem, running

pytestmark = pytest.mark.anyio
ADE = [sys.executable, "-m", "ade.cli"]
UNKNOWN_RUNNER = "rnr_01ZZZZZZZZZZZZZZZZZZZZZZZZ"


@dataclass
class Tenants:
    base_url: str
    ws_a: str
    ws_b: str
    keys: dict[str, str]  # "admin_a", "viewer_a", "admin_b" -> secret

    def client(self, who: str) -> httpx.AsyncClient:
        token = BOOTSTRAP_TOKEN if who == "bootstrap" else self.keys.get(who, who)
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.AsyncClient(base_url=f"{self.base_url}/api/v1", headers=headers, timeout=30)


@pytest.fixture
async def tenants(client: httpx.AsyncClient, system: AdeSystem) -> Tenants:
    ws_a, ws_b = await workspace(client, "runners-a"), await workspace(client, "runners-b")
    keys = {}
    for name, ws, role in [
        ("admin_a", ws_a, "admin"),
        ("viewer_a", ws_a, "viewer"),
        ("admin_b", ws_b, "admin"),
    ]:
        response = await client.post(f"/workspaces/{ws}/api-keys", json={"name": name, "role": role})
        assert response.status_code == 201, response.text
        keys[name] = response.json()["secret"]
    return Tenants(system.base_url, ws_a, ws_b, keys)


@pytest.fixture
async def store(system: AdeSystem) -> AsyncIterator[Store]:
    """The system's own store, for what only a runner does (heartbeats) and for looking at records."""
    redis = Redis.from_url(system.redis.url)
    try:
        yield Store(redis, system.data_dir)
    finally:
        await redis.aclose()


async def register(http: httpx.AsyncClient, ws: str | None, name: str = "r1", **body: Any) -> dict[str, Any]:
    path = f"/workspaces/{ws}/runners" if ws else "/runners"
    response = await http.post(path, json={"name": name, "labels": ["linux", "x64"], **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def listed(http: httpx.AsyncClient, ws: str) -> dict[str, dict[str, Any]]:
    response = await http.get(f"/workspaces/{ws}/runners")
    assert response.status_code == 200, response.text
    return {runner["id"]: runner for runner in response.json()}


async def test_a_runner_token_is_shown_once_and_stored_only_as_a_hash(
    tenants: Tenants, data_dir: Path
) -> None:
    async with tenants.client("admin_a") as admin:
        created = await register(admin, tenants.ws_a, "builder-1")
        token = created["token"]
        assert token.startswith(f"rnr.{created['id']}.") and created["id"].startswith("rnr_")
        assert (created["workspace_id"], created["name"], created["labels"]) == (
            tenants.ws_a,
            "builder-1",
            ["linux", "x64"],
        )
        answers = [
            await admin.get(f"/workspaces/{tenants.ws_a}/runners"),
            await admin.get(f"/runners/{created['id']}"),
        ]
    async with tenants.client("bootstrap") as bootstrap:
        answers.append(await bootstrap.get("/runners"))
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert token not in answer.text and "token" not in answer.text and "sha256" not in answer.text
    assert set(answers[1].json()) == {
        "id", "workspace_id", "name", "labels", "status", "last_heartbeat_at", "current_runs",
        "created_at", "created_by", "revoked_at",
    }  # fmt: skip
    stored = (data_dir / "runners" / f"{created['id']}.json").read_text()
    assert token not in stored and runners.token_sha256(token) in stored


async def test_status_is_offline_until_a_heartbeat_then_idle_then_busy(
    tenants: Tenants, store: Store
) -> None:
    async with tenants.client("admin_a") as admin:
        created = await register(admin, tenants.ws_a)
        rid = created["id"]
        assert created["status"] == "offline" and created["last_heartbeat_at"] is None
        assert (await listed(admin, tenants.ws_a))[rid]["status"] == "offline"
        now = utcnow()
        await runners.heartbeat(store, rid, [], now)
        view = (await listed(admin, tenants.ws_a))[rid]
        assert (view["status"], view["current_runs"]) == ("idle", [])
        assert view["last_heartbeat_at"].startswith(now.strftime("%Y-%m-%dT%H:%M:%S"))
        await runners.heartbeat(store, rid, ["run_01AAAAAAAAAAAAAAAAAAAAAAAA"], utcnow())
        view = (await admin.get(f"/runners/{rid}")).json()
        assert (view["status"], view["current_runs"]) == ("busy", ["run_01AAAAAAAAAAAAAAAAAAAAAAAA"])
        # Silent longer than ADE_RUNNER_LOST_AFTER_S (15 s): offline, its last heartbeat still shown.
        await runners.heartbeat(
            store, rid, ["run_01AAAAAAAAAAAAAAAAAAAAAAAA"], utcnow() - timedelta(seconds=16)
        )
        assert (await listed(admin, tenants.ws_a))[rid]["status"] == "offline"
        # A revoked runner is offline whatever it last said (and is no longer listed).
        await runners.heartbeat(store, rid, [], utcnow())
        assert (await admin.delete(f"/runners/{rid}")).status_code == 204
        assert (await admin.get(f"/runners/{rid}")).json()["status"] == "offline"
        assert rid not in await listed(admin, tenants.ws_a)
    assert (await runners.get(store, rid)).last_heartbeat_at is not None


async def test_a_revoked_runner_token_is_refused_at_once(tenants: Tenants, store: Store) -> None:
    async with tenants.client("admin_a") as admin:
        created = await register(admin, tenants.ws_a)
    async with tenants.client(created["token"]) as as_runner:
        # Valid: authenticated, then refused by the endpoint (a native one)...
        assert_error(await as_runner.get(f"/workspaces/{tenants.ws_a}/runs"), 403, "runner_token_not_allowed")
        async with tenants.client("admin_a") as admin:
            assert (await admin.delete(f"/runners/{created['id']}")).status_code == 204
            assert (await admin.delete(f"/runners/{created['id']}")).status_code == 204  # idempotent
        # ... revoked: the very next request is a 401, with the same message as a token never issued.
        revoked = await as_runner.get(f"/workspaces/{tenants.ws_a}/runs")
    assert_error(revoked, 401, "invalid_token")
    forged = f"rnr.{created['id']}.{'x' * 43}"
    for token in (forged, f"rnr.{UNKNOWN_RUNNER}.abc", "rnr.nonsense", "rnr.", created["token"] + "x"):
        async with tenants.client(token) as stranger:
            answer = await stranger.get(f"/workspaces/{tenants.ws_a}/runs")
        assert_error(answer, 401, "invalid_token")
        assert answer.json()["error"] == revoked.json()["error"] == runners.INVALID_TOKEN
    with pytest.raises(Exception, match="invalid or revoked"):
        await runners.authenticate(store, created["token"])


async def test_a_runner_token_opens_no_native_endpoint(tenants: Tenants, client: httpx.AsyncClient) -> None:
    cfg = await configuration(client, tenants.ws_a, [{"name": "s", "script": "true"}])
    async with tenants.client("admin_a") as admin:
        own = await register(admin, tenants.ws_a)
    async with tenants.client("bootstrap") as bootstrap:
        everywhere = await register(bootstrap, None, "global-1")
    runs_before = (await client.get(f"/workspaces/{tenants.ws_a}/runs")).json()["items"]
    names = {
        "ws_a": tenants.ws_a, "cfg_a": cfg, "run_a": "run_01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "run_running": "run_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "artifact_a": "sha256:" + "0" * 64,
        "cfg_build_a": cfg, "build_a": "build_01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "build_running": "build_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "viewer_key_b": "key_01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "image_a": "img_01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        "runner_a": UNKNOWN_RUNNER,
    }  # fmt: skip
    extra: list[tuple[str, str, dict[str, Any] | bytes | None]] = [
        ("GET", "/whoami", None),
        ("POST", "/workspaces", {"name": "x"}),
        ("GET", "/runners", None),
        ("GET", "/workspaces/{ws_a}/runners", None),
        ("POST", "/workspaces/{ws_a}/runners", {"name": "x", "labels": ["a"]}),
        ("POST", "/runners", {"name": "x", "labels": ["a"]}),
        ("DELETE", f"/runners/{own['id']}", None),
        ("GET", "/audit-logs", None),
    ]
    requests = [(method, path, body) for method, path, body, _ in MATRIX] + extra
    for token in (own["token"], everywhere["token"]):  # a global runner's principal spans workspaces
        async with tenants.client(token) as as_runner:
            for method, template, body in requests:
                kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
                answer = await as_runner.request(method, template.format(**names), **kwargs)
                assert_error(answer, 403, "runner_token_not_allowed")
            async with httpx.AsyncClient(base_url=tenants.base_url) as root:
                metrics = await root.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert_error(metrics, 403, "runner_token_not_allowed")
    assert (await client.get(f"/workspaces/{tenants.ws_a}/runs")).json()["items"] == runs_before
    async with tenants.client("admin_a") as admin:
        assert (await admin.get(f"/runners/{own['id']}")).json()["revoked_at"] is None


async def test_tenancy_of_runners(tenants: Tenants) -> None:
    async with tenants.client("admin_a") as admin_a, tenants.client("admin_b") as admin_b:
        mine = await register(admin_a, tenants.ws_a, "a-1")
        theirs = await register(admin_b, tenants.ws_b, "b-1")
        async with tenants.client("bootstrap") as bootstrap:
            shared = await register(bootstrap, None, "shared-1")
            assert shared["workspace_id"] is None
            every = {runner["id"] for runner in (await bootstrap.get("/runners")).json()}
            assert {mine["id"], theirs["id"], shared["id"]} <= every
        seen_by_a = await listed(admin_a, tenants.ws_a)
        assert mine["id"] in seen_by_a and shared["id"] in seen_by_a and theirs["id"] not in seen_by_a
        # Workspace B's admin: A's runners do not exist for it.
        assert_error(await admin_b.get(f"/workspaces/{tenants.ws_a}/runners"), 404, "workspace_not_found")
        assert_error(await admin_b.get(f"/runners/{mine['id']}"), 404, "runner_not_found")
        assert_error(await admin_b.delete(f"/runners/{mine['id']}"), 404, "runner_not_found")
        assert_error(
            await admin_b.post(f"/workspaces/{tenants.ws_a}/runners", json={"name": "x", "labels": ["a"]}),
            404,
        )
        missing = await admin_b.get(f"/runners/{UNKNOWN_RUNNER}")
        assert_error(missing, 404, "runner_not_found")
        # A workspace key never registers, lists all, or revokes a global runner.
        assert_error(
            await admin_a.post("/runners", json={"name": "g", "labels": ["a"]}), 403, "bootstrap_only"
        )
        assert_error(await admin_a.get("/runners"), 403, "bootstrap_only")
        assert (await admin_a.get(f"/runners/{shared['id']}")).status_code == 200  # it serves A: visible
        assert_error(await admin_a.delete(f"/runners/{shared['id']}"), 403, "bootstrap_only")
        assert mine["id"] in await listed(admin_a, tenants.ws_a)
    async with tenants.client("viewer_a") as viewer:
        assert mine["id"] in await listed(viewer, tenants.ws_a)  # viewers see them
        body = {"name": "x", "labels": ["a"]}
        assert_error(
            await viewer.post(f"/workspaces/{tenants.ws_a}/runners", json=body), 403, "role_too_weak"
        )
        assert_error(await viewer.delete(f"/runners/{mine['id']}"), 403, "role_too_weak")
    async with tenants.client("bootstrap") as bootstrap:
        assert (await bootstrap.delete(f"/runners/{shared['id']}")).status_code == 204
        assert (await bootstrap.delete(f"/runners/{theirs['id']}")).status_code == 204
    async with tenants.client("admin_a") as admin_a:
        assert (await admin_a.get(f"/runners/{mine['id']}")).json()["revoked_at"] is None


BAD_BODIES: list[Any] = [
    {"name": "x", "labels": []},
    {"name": "x", "labels": [f"l{i}" for i in range(21)]},
    {"name": "x", "labels": ["Linux"]},
    {"name": "x", "labels": ["-x"]},
    {"name": "x", "labels": ["a b"]},
    {"name": "x", "labels": [""]},
    {"name": "x", "labels": ["a" * 64]},
    {"name": "x", "labels": "linux"},
    {"name": "x", "labels": [1]},
    {"name": "", "labels": ["a"]},
    {"name": "x\u0000y", "labels": ["a"]},
    {"labels": ["a"]},
    {"name": "x"},
    {"name": "x", "labels": ["a"], "token": "rnr.mine"},
    {"name": "x", "labels": ["a"], "workspace_id": None},
    ["x"],
]


async def test_bad_input_is_a_400_and_creates_nothing(tenants: Tenants, data_dir: Path) -> None:
    files_before = sorted((data_dir / "runners").glob("*.json"))
    async with tenants.client("bootstrap") as bootstrap:
        before = (await bootstrap.get("/runners")).json()
        for body in BAD_BODIES:
            for path in (f"/workspaces/{tenants.ws_a}/runners", "/runners"):
                assert_error(await bootstrap.post(path, json=body), 400, "invalid_request")
        assert_error(await bootstrap.post("/runners", content=b"{not json"), 400)
        assert (await bootstrap.get("/runners")).json() == before
    assert sorted((data_dir / "runners").glob("*.json")) == files_before
    # The edges that are fine: 20 labels, 63 characters, repeats kept once.
    async with tenants.client("admin_a") as admin:
        edge = await register(admin, tenants.ws_a, labels=[f"l{i}" for i in range(20)])
        assert len(edge["labels"]) == 20
        long = await register(admin, tenants.ws_a, labels=["a" * 63, "b.c_d-e", "a" * 63])
        assert long["labels"] == ["a" * 63, "b.c_d-e"]


async def test_register_and_revoke_are_audited(tenants: Tenants) -> None:
    async with tenants.client("admin_a") as admin:
        created = await register(admin, tenants.ws_a, "audited")
        assert (await admin.delete(f"/runners/{created['id']}")).status_code == 204
        page = (await admin.get("/audit-logs", params={"limit": 10})).json()["audit_logs"]
    mine = [(e["action"], e["target"], e["workspace_id"]) for e in page if e["target"] == created["id"]]
    assert mine == [
        ("runner.revoke", created["id"], tenants.ws_a),
        ("runner.register", created["id"], tenants.ws_a),
    ]
    async with tenants.client("bootstrap") as bootstrap:
        shared = await register(bootstrap, None, "audited-global")
        entries = (await bootstrap.get("/audit-logs", params={"action": "runner.register"})).json()[
            "audit_logs"
        ]
    assert [e["workspace_id"] for e in entries if e["target"] == shared["id"]] == [runners.GLOBAL_AUDIT_SCOPE]


async def test_records_functions(store: Store, tenants: Tenants) -> None:
    runner, token = await runners.register(store, tenants.ws_a, "fn", ["a", "b", "a"], "test")
    assert runner.labels == ["a", "b"] and runners.serves(runner, tenants.ws_a)
    assert not runners.serves(runner, tenants.ws_b)
    shared, _ = await runners.register(store, None, "fn-global", ["a"], "test")
    assert runners.serves(shared, tenants.ws_a) and runners.serves(shared, tenants.ws_b)
    assert (await runners.authenticate(store, token)).id == runner.id
    ids_a = [r.id for r in await runners.list_for_workspace(store, tenants.ws_a)]
    assert runner.id in ids_a and shared.id in ids_a and ids_a == sorted(ids_a)
    assert runner.id not in [r.id for r in await runners.list_for_workspace(store, tenants.ws_b)]
    with pytest.raises(Exception, match="labels"):
        await runners.register(store, tenants.ws_a, "fn", ["Bad"], "test")
    revoked = await runners.revoke(store, runner.id, utcnow())
    assert revoked.revoked_at is not None and not runners.serves(revoked, tenants.ws_a)
    assert runner.id not in [r.id for r in await runners.list_all(store)]
    assert runner.id in [r.id for r in await runners.list_all(store, include_revoked=True)]
    with pytest.raises(Exception, match="does not exist"):
        await runners.get(store, UNKNOWN_RUNNER)
    await runners.revoke(store, shared.id, utcnow())


async def test_provide_runner_gives_the_runner_and_refuses_everyone_else(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The dependency the runner protocol's handlers take (`runner: Runner`, opt=RUNNER_ROUTES)."""

    @get("/api/v1/runner-probe", opt=RUNNER_ROUTES, dependencies={"runner": Provide(provide_runner)})
    async def probe(runner: Runner) -> dict[str, Any]:
        return {"id": runner.id, "workspace_id": runner.workspace_id, "labels": runner.labels}

    app = create_app(Settings(redis_url=redis_server.url, data_dir=tmp_path, bootstrap_token="boot"))
    app.register(probe)
    redis = Redis.from_url(redis_server.url)
    store = Store(redis, tmp_path)
    try:
        runner, token = await runners.register(store, "ws_probe", "probe", ["gpu"], "test")
        async with AsyncTestClient(app) as http:

            async def call(secret: str) -> httpx.Response:
                return await http.get("/api/v1/runner-probe", headers={"Authorization": f"Bearer {secret}"})

            answer = await call(token)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"id": runner.id, "workspace_id": "ws_probe", "labels": ["gpu"]}
            assert_error(await call("boot"), 403, "runner_token_required")
            await runners.revoke(store, runner.id, utcnow())
            assert_error(await call(token), 401, "invalid_token")
    finally:
        await redis.aclose()


# The `ade runners` commands, as a user runs them.


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ADE, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_ade_runners_add_list_delete(tenants: Tenants, system: AdeSystem) -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("ADE_WORKSPACE", "COLUMNS")}
    env = {**base, "ADE_URL": system.base_url, "ADE_TOKEN": tenants.keys["admin_a"]}
    added = await anyio.to_thread.run_sync(
        lambda: cli(env, "runners", "add", "cli-1", "--labels", "linux, gpu")
    )
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    assert created["token"].startswith(f"rnr.{created['id']}.") and created["workspace_id"] == tenants.ws_a
    assert created["labels"] == ["linux", "gpu"] and created["token"] in added.stderr  # the start hint
    as_boot = {**env, "ADE_TOKEN": BOOTSTRAP_TOKEN}
    shared = await anyio.to_thread.run_sync(
        lambda: cli(as_boot, "runners", "add", "cli-g", "--labels", "a", "--global")
    )
    assert shared.returncode == 0, shared.stderr
    shared_id = json.loads(shared.stdout)["id"]
    refused = await anyio.to_thread.run_sync(
        lambda: cli(env, "runners", "add", "x", "--labels", "a", "--global")
    )
    assert refused.returncode == 3 and "bootstrap_only" in refused.stderr
    bad = await anyio.to_thread.run_sync(lambda: cli(env, "runners", "add", "x", "--labels", "Bad"))
    assert bad.returncode == 3 and "invalid_request" in bad.stderr
    listed_json = await anyio.to_thread.run_sync(lambda: cli(env, "runners", "list", "--json"))
    assert listed_json.returncode == 0, listed_json.stderr
    found = {r["id"]: r for r in json.loads(listed_json.stdout)}
    assert {created["id"], shared_id} <= set(found) and "token" not in listed_json.stdout
    assert found[created["id"]]["status"] == "offline"
    table = await anyio.to_thread.run_sync(lambda: cli(env, "runners", "list"))
    assert table.returncode == 0 and "cli-1" in table.stdout and "linux,gpu" in table.stdout
    assert "offline" in table.stdout and "(global)" in table.stdout
    everything = await anyio.to_thread.run_sync(lambda: cli(as_boot, "runners", "list", "--json"))
    assert {created["id"], shared_id} <= {r["id"] for r in json.loads(everything.stdout)}
    deleted = await anyio.to_thread.run_sync(lambda: cli(env, "runners", "delete", created["id"]))
    assert deleted.returncode == 0 and "revoked" in deleted.stdout, deleted.stderr
    gone = await anyio.to_thread.run_sync(lambda: cli(env, "runners", "list", "--json"))
    assert created["id"] not in {r["id"] for r in json.loads(gone.stdout)}
    other = await anyio.to_thread.run_sync(
        lambda: cli({**env, "ADE_TOKEN": tenants.keys["admin_b"]}, "runners", "delete", shared_id)
    )
    assert other.returncode == 3 and "bootstrap_only" in other.stderr
    assert (
        await anyio.to_thread.run_sync(lambda: cli(as_boot, "runners", "delete", shared_id))
    ).returncode == 0


async def test_reindex_restores_runners_after_flushall(tmp_path: Path) -> None:
    async with running(tmp_path) as system, system.api_client() as api:
        ws = await workspace(api, "a")
        own = await register(api, ws, "own")
        shared = await register(api, None, "shared")
        revoked = await register(api, ws, "revoked")
        assert (await api.delete(f"/runners/{revoked['id']}")).status_code == 204
        before = {"ws": await listed(api, ws), "all": (await api.get("/runners")).json()}
        redis = Redis.from_url(system.redis.url)
        await redis.flushall()
        await redis.aclose()
        assert_error(await api.get(f"/runners/{own['id']}"), 404, "runner_not_found")
        done = await anyio.run_process([sys.executable, "-m", "ade.cli", "reindex"], env=system.env())
        assert b"3 runners" in done.stdout
        assert {"ws": await listed(api, ws), "all": (await api.get("/runners")).json()} == before
        assert (await api.get(f"/runners/{revoked['id']}")).json()["revoked_at"] is not None
        url = f"/workspaces/{ws}/runs"
        for created, code in ((own, "runner_token_not_allowed"), (shared, "runner_token_not_allowed")):
            answer = await api.get(url, headers={"Authorization": f"Bearer {created['token']}"})
            assert_error(answer, 403, code)  # the token still authenticates
        answer = await api.get(url, headers={"Authorization": f"Bearer {revoked['token']}"})
        assert_error(answer, 401, "invalid_token")  # and the revoked one still does not
