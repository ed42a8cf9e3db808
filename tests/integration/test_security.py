"""Tenancy, roles, stream tokens, audit, secrets and limits — through real HTTP against a real worker."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from ade.records.auth import Principal, StreamTokens, load_signing_key
from tests.api import ade_events, collect_sse, configuration, run, wait_for_end, workspace
from tests.system import AdeSystem

pytestmark = pytest.mark.anyio
STEP = {"name": "s", "script": "echo hi; echo out > $ADE_OUTPUT_DIR/o.txt"}


@dataclass
class Tenants:
    base_url: str
    ws_a: str
    ws_b: str
    keys: dict[str, str]  # "admin_a", "operator_a", "viewer_a", "admin_b" -> secret
    key_ids: dict[str, str]
    cfg_a: str
    run_a: str
    artifact_a: str
    cfg_build_a: str
    build_a: str

    def client(self, who: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.AsyncClient(base_url=f"{self.base_url}/api/v1", headers=headers, timeout=30)


async def make_key(client: httpx.AsyncClient, ws: str, role: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(f"/workspaces/{ws}/api-keys", json={"name": role, "role": role, **extra})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
async def tenants(client: httpx.AsyncClient, system: AdeSystem) -> Tenants:
    ws_a, ws_b = await workspace(client, "a"), await workspace(client, "b")
    keys, key_ids = {}, {}
    for name, ws, role in [("admin_a", ws_a, "admin"), ("operator_a", ws_a, "operator"),
                           ("viewer_a", ws_a, "viewer"), ("admin_b", ws_b, "admin")]:  # fmt: skip
        created = await make_key(client, ws, role)
        keys[name], key_ids[name] = created["secret"], created["id"]
    cfg_a = await configuration(client, ws_a, [STEP])
    run_a = (await run(client, cfg_a))["id"]
    await wait_for_end(client, run_a)
    artifact = (await client.post(f"/workspaces/{ws_a}/artifacts", content=b"tenant a's bytes")).json()["key"]
    spec = {"constructor": "shell", "steps": [{"name": "b", "script": "echo built"}]}
    cfg_build = await configuration(client, ws_a, [STEP], build=spec)
    build = await client.post(
        f"/workspaces/{ws_a}/configurations/{cfg_build}/builds", json={"options": {"wait": True}}
    )
    return Tenants(
        system.base_url, ws_a, ws_b, keys, key_ids, cfg_a, run_a, artifact, cfg_build, build.json()["id"]
    )


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error", "code", "details"}
    if code:
        assert body["code"] == code, body


CFG_BODY = {"name": "x", "steps": [STEP]}
IMAGE_BODY = {"slug": "m", "image_url": "docker.io/library/alpine:3"}

# (method, path, body, weakest role allowed). Paths name workspace A's things. A body of bytes is sent raw.
MATRIX: list[tuple[str, str, dict[str, Any] | bytes | None, str]] = [
    ("GET", "/workspaces/{ws_a}", None, "viewer"),
    ("GET", "/workspaces/{ws_a}/configurations", None, "viewer"),
    ("POST", "/workspaces/{ws_a}/configurations", CFG_BODY, "admin"),
    ("GET", "/configurations/{cfg_a}", None, "viewer"),
    ("PUT", "/configurations/{cfg_a}", CFG_BODY, "admin"),
    ("POST", "/configurations/{cfg_a}/runs", {}, "operator"),
    ("GET", "/runs/{run_a}", None, "viewer"),
    ("GET", "/workspaces/{ws_a}/runs", None, "viewer"),
    ("GET", "/runs/{run_a}/events", None, "viewer"),
    ("GET", "/runs/{run_a}/logfile", None, "viewer"),
    ("POST", "/runs/{run_a}/stream-token", None, "viewer"),
    ("GET", "/runs/{run_a}/logs", None, "viewer"),
    ("GET", "/runs/{run_a}/summary", None, "viewer"),
    ("GET", "/runs/{run_a}/plan", None, "viewer"),
    ("GET", "/runs/{run_a}/inputs", None, "viewer"),
    ("GET", "/runs/{run_a}/outputs", None, "viewer"),
    ("GET", "/runs/{run_a}/outputs/o.txt", None, "viewer"),
    ("GET", "/runs/{run_a}/diagnostics", None, "viewer"),
    ("GET", "/configurations/{cfg_a}/runs", None, "viewer"),
    ("POST", "/runs/{run_a}/rerun", None, "operator"),
    ("POST", "/runs/{run_running}/cancel", None, "operator"),
    ("POST", "/workspaces/{ws_a}/artifacts", b"some bytes", "operator"),
    ("GET", "/artifacts/{artifact_a}", None, "viewer"),
    ("POST", "/workspaces/{ws_a}/configurations/{cfg_build_a}/builds", {}, "operator"),
    ("GET", "/configurations/{cfg_build_a}/builds", None, "viewer"),
    ("GET", "/builds/{build_a}", None, "viewer"),
    ("GET", "/builds/{build_a}/inspect", None, "viewer"),
    ("GET", "/builds/{build_a}/events", None, "viewer"),
    ("GET", "/builds/{build_a}/logs", None, "viewer"),
    ("POST", "/builds/{build_a}/stream-token", None, "viewer"),
    ("POST", "/builds/{build_running}/cancel", None, "operator"),
    ("POST", "/workspaces/{ws_a}/api-keys", {"name": "k", "role": "viewer"}, "admin"),
    ("GET", "/workspaces/{ws_a}/api-keys", None, "admin"),
    ("GET", "/audit-logs?workspace_id={ws_a}", None, "admin"),
    ("DELETE", "/api-keys/{viewer_key_b}", None, "admin"),
    ("POST", "/workspaces/{ws_a}/docker-images", IMAGE_BODY, "admin"),
    ("GET", "/workspaces/{ws_a}/docker-images", None, "viewer"),
    ("GET", "/docker-images/{image_a}", None, "viewer"),
    ("DELETE", "/docker-images/{image_a}", None, "admin"),
    ("POST", "/workspaces/{ws_a}/runners", {"name": "r", "labels": ["linux"]}, "admin"),
    ("GET", "/workspaces/{ws_a}/runners", None, "viewer"),
    ("GET", "/runners/{runner_a}", None, "viewer"),
    ("DELETE", "/runners/{runner_a}", None, "admin"),
    ("GET", "/workspaces/{ws_a}/caches", None, "viewer"),
    ("DELETE", "/workspaces/{ws_a}/caches?step=s", None, "operator"),
    ("DELETE", "/configurations/{cfg_a}", None, "admin"),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


async def test_tenancy_matrix_over_every_endpoint(tenants: Tenants, client: httpx.AsyncClient) -> None:
    throwaway = await make_key(client, tenants.ws_a, "viewer")
    sleeper = await configuration(client, tenants.ws_a, [{"name": "wait", "script": "sleep 60"}])
    running = (await run(client, sleeper))["id"]
    slow = {"constructor": "shell", "steps": [{"name": "b", "script": "sleep 60"}]}
    slow_cfg = await configuration(client, tenants.ws_a, [STEP], build=slow)
    build_running = (
        await client.post(f"/workspaces/{tenants.ws_a}/configurations/{slow_cfg}/builds")
    ).json()["id"]
    image = {"slug": "tools", "image_url": "localhost/ade-test-busybox:latest"}
    image_a = (await client.post(f"/workspaces/{tenants.ws_a}/docker-images", json=image)).json()["id"]
    runner = {"name": "r", "labels": ["linux"]}
    runner_a = (await client.post(f"/workspaces/{tenants.ws_a}/runners", json=runner)).json()["id"]
    names = {
        "image_a": image_a,
        "runner_a": runner_a,
        "ws_a": tenants.ws_a,
        "cfg_a": tenants.cfg_a,
        "run_a": tenants.run_a,
        "run_running": running,
        "artifact_a": tenants.artifact_a,
        "cfg_build_a": tenants.cfg_build_a,
        "build_a": tenants.build_a,
        "build_running": build_running,
        "viewer_key_b": throwaway["id"],
    }
    runs_before = len((await client.get(f"/workspaces/{tenants.ws_a}/runs")).json()["items"])
    for method, template, body, weakest in MATRIX:
        path = template.format(**names)
        kwargs: dict[str, Any] = {}
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif body is not None:
            kwargs["json"] = body
        async with tenants.client(None) as anonymous:
            assert_error(await anonymous.request(method, path, **kwargs), 401, "missing_token")
        async with tenants.client("admin_b") as other:
            assert_error(await other.request(method, path, **kwargs), 404)  # not 403: no hint it exists
        for role in ("viewer", "operator"):
            if RANK[role] < RANK[weakest]:
                async with tenants.client(f"{role}_a") as weak:
                    assert_error(await weak.request(method, path, **kwargs), 403, "role_too_weak")
        async with tenants.client(f"{weakest}_a") as allowed:
            response = await allowed.request(method, path, **kwargs)
            assert response.status_code < 300, (method, path, response.text)
    runs_after = len((await client.get(f"/workspaces/{tenants.ws_a}/runs")).json()["items"])
    assert runs_after == runs_before + 2  # only the allowed create and re-run made runs


async def test_other_workspace_ids_look_exactly_like_missing_ones(tenants: Tenants) -> None:
    async with tenants.client("admin_b") as other:
        theirs = (await other.get(f"/runs/{tenants.run_a}")).json()
        missing = (await other.get("/runs/run_01ZZZZZZZZZZZZZZZZZZZZZZZZ")).json()
    assert theirs["code"] == missing["code"] == "run_not_found"
    assert theirs["error"].replace(tenants.run_a, "X") == missing["error"].replace(
        "run_01ZZZZZZZZZZZZZZZZZZZZZZZZ", "X"
    )


async def test_bad_credentials_are_401(
    tenants: Tenants, system: AdeSystem, client: httpx.AsyncClient
) -> None:
    url = f"{system.base_url}/api/v1/workspaces/{tenants.ws_a}"
    async with httpx.AsyncClient() as http:
        for header in ("Bearer nope", "Basic abc", "Bearer", f"Bearer {tenants.keys['admin_a']}x",
                       "Bearer ade.key_01ZZZZZZZZZZZZZZZZZZZZZZZZ.abc"):  # fmt: skip
            assert_error(await http.get(url, headers={"Authorization": header}), 401)
        assert (await http.get(f"{system.base_url}/healthz")).status_code == 200  # public
    # Revoked and expired keys stop working.
    revoked = await make_key(client, tenants.ws_a, "viewer")
    assert (await client.delete(f"/api-keys/{revoked['id']}")).status_code == 204
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    expiring = await make_key(client, tenants.ws_a, "viewer", expires_at=soon)
    async with httpx.AsyncClient() as http:
        assert_error(await http.get(url, headers={"Authorization": f"Bearer {revoked['secret']}"}), 401)
        fresh = await http.get(url, headers={"Authorization": f"Bearer {expiring['secret']}"})
        assert fresh.status_code == 200
        await anyio.sleep(1.1)  # let the expiry time pass (it is the thing under test)
        assert_error(await http.get(url, headers={"Authorization": f"Bearer {expiring['secret']}"}), 401)


async def test_keys_are_shown_once_and_stored_only_as_a_hash(tenants: Tenants, data_dir: Path) -> None:
    async with tenants.client("admin_a") as admin:
        listed = (await admin.get(f"/workspaces/{tenants.ws_a}/api-keys")).json()
    assert listed and all("secret" not in key and "secret_sha256" not in key for key in listed)
    stored = (data_dir / "api_keys" / f"{tenants.key_ids['viewer_a']}.json").read_text()
    assert tenants.keys["viewer_a"] not in stored and "secret_sha256" in stored


async def test_only_the_bootstrap_token_creates_workspaces(tenants: Tenants) -> None:
    async with tenants.client("admin_a") as admin:
        assert_error(await admin.post("/workspaces", json={"name": "nope"}), 403, "bootstrap_only")


async def test_stream_token_opens_one_stream_read_only(tenants: Tenants, system: AdeSystem) -> None:
    async with tenants.client("viewer_a") as viewer:
        issued = (await viewer.post(f"/runs/{tenants.run_a}/stream-token")).json()
    async with httpx.AsyncClient(
        base_url=system.base_url, timeout=30
    ) as browser:  # no headers, as EventSource
        frames = await collect_sse(browser, issued["events_url"])
        assert (
            frames[-1].event == "end" and json.loads(ade_events(frames)[-1].data)["type"] == "run.completed"
        )
        token = issued["token"]
        # Out of scope: another endpoint of the same run, a mutation, another run.
        assert_error(await browser.get(f"/api/v1/runs/{tenants.run_a}", params={"token": token}), 401)
        assert_error(
            await browser.post(f"/api/v1/runs/{tenants.run_a}/stream-token", params={"token": token}), 401
        )
        other = "/api/v1/runs/run_01ZZZZZZZZZZZZZZZZZZZZZZZZ/events"
        assert_error(await browser.get(other, params={"token": token}), 401, "token_out_of_scope")
        # Tampered.
        tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert_error(
            await browser.get(f"/api/v1/runs/{tenants.run_a}/events", params={"token": tampered}), 401
        )
        # Expired: a genuine token signed with the server's own key, already past its time.
        expired_tokens = StreamTokens(load_signing_key(system.data_dir), ttl_s=-1)
        expired, _ = expired_tokens.issue(
            Principal("key_x", "viewer", tenants.ws_a), tenants.ws_a, tenants.run_a
        )
        response = await browser.get(f"/api/v1/runs/{tenants.run_a}/events", params={"token": expired})
        assert_error(response, 401, "token_expired")


async def test_audit_log_records_every_mutation(tenants: Tenants, data_dir: Path) -> None:
    async with tenants.client("admin_a") as admin:
        cfg = (await admin.post(f"/workspaces/{tenants.ws_a}/configurations", json=CFG_BODY)).json()["id"]
        await admin.put(f"/configurations/{cfg}", json=CFG_BODY)
        run_id = (await admin.post(f"/configurations/{cfg}/runs", json={})).json()["id"]
        key = (
            await admin.post(f"/workspaces/{tenants.ws_a}/api-keys", json={"name": "k", "role": "viewer"})
        ).json()
        await admin.delete(f"/api-keys/{key['id']}")
        await admin.delete(f"/configurations/{cfg}")
        page = (await admin.get("/audit-logs", params={"limit": 100})).json()
        mine = [e for e in page["audit_logs"] if e["actor"] == tenants.key_ids["admin_a"]]
        assert [(e["action"], e["target"]) for e in mine] == [
            ("configuration.delete", cfg),
            ("api_key.revoke", key["id"]),
            ("api_key.create", key["id"]),
            ("run.create", run_id),
            ("configuration.update", cfg),
            ("configuration.create", cfg),
        ]
        assert all(e["workspace_id"] == tenants.ws_a and e["created_at"] for e in mine)
        total = page["pagination"]["total"]
        assert page["pagination"] == {"total": total, "limit": 100, "offset": 0, "has_more": False}
        # The fixture's own mutations are there too (bootstrap actor).
        assert {"workspace.create", "run.create"} <= {e["action"] for e in page["audit_logs"]}
        filtered = (await admin.get("/audit-logs", params={"action": "api_key.create", "limit": 2})).json()
        assert filtered["pagination"]["total"] == 4 and filtered["pagination"]["has_more"] is True
        assert {e["action"] for e in filtered["audit_logs"]} == {"api_key.create"}
        second = (await admin.get("/audit-logs", params={"limit": 2, "offset": 2})).json()
        assert [e["id"] for e in second["audit_logs"]] == [e["id"] for e in page["audit_logs"][2:4]]
        assert_error(await admin.get("/audit-logs", params={"workspace_id": tenants.ws_b}), 404)
    on_disk = (data_dir / "audit" / f"{tenants.ws_a}.ndjson").read_text().splitlines()
    assert len(on_disk) == total


async def test_secrets_are_never_returned_and_masked_in_events(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    ws = await workspace(client)
    secret, step_secret = "s3cr3t-value-123", "step-only-456"
    digest = hashlib.sha256(secret.encode()).hexdigest()[:16]  # the step proves it sees the real value
    script = (
        'echo "token=$TOKEN step=$STEP_SECRET"; '
        'printf \'{"type":"note","text":"%s"}\\n\' "$TOKEN" >&$ADE_EVENTS_FD; '
        f'[ "$(printf %s "$TOKEN" | sha256sum | cut -c1-16)" = "{digest}" ] && echo real-value-seen; '
        'echo "bootstrap=${ADE_BOOTSTRAP_TOKEN:-unset}"'
    )
    step = {
        "name": "leak",
        "script": script,
        "environment": {"STEP_SECRET": {"value": step_secret, "secret": True}},
    }
    body = {
        "name": "s",
        "steps": [step],
        "environment": {"TOKEN": {"value": secret, "secret": True}, "PLAIN": "p"},
    }
    created = await client.post(f"/workspaces/{ws}/configurations", json=body)
    assert created.status_code == 201
    cfg = created.json()
    assert cfg["environment"] == {"TOKEN": {"secret": True}, "PLAIN": "p"}
    assert cfg["steps"][0]["environment"] == {"STEP_SECRET": {"secret": True}}
    assert secret not in created.text and step_secret not in created.text
    # Sending back what the API showed keeps the secret values.
    assert (
        await client.put(
            f"/configurations/{cfg['id']}", json={k: cfg[k] for k in ("name", "steps", "environment")}
        )
    ).status_code == 200
    run_id = (await run(client, cfg["id"]))["id"]
    events = [json.loads(f.data) for f in await wait_for_end(client, run_id)]
    lines = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert lines == ["token=*** step=***", "real-value-seen", "bootstrap=unset"]
    note = next(e for e in events if e["type"] == "engine.note")
    assert note["payload"]["text"] == "***"
    log = (data_dir / "runs" / run_id / "logs" / "events.ndjson").read_bytes()
    assert secret.encode() not in log and step_secret.encode() not in log
    # A secret with no stored value to keep is an error.
    bad = {"name": "x", "steps": [STEP], "environment": {"NEW": {"secret": True}}}
    assert_error(await client.post(f"/workspaces/{ws}/configurations", json=bad), 400, "invalid_request")


async def test_request_body_size_limit_is_413(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    huge = {"name": "x", "steps": [{"name": "s", "script": "x" * (1024 * 1024 + 10)}]}
    assert_error(await client.post(f"/workspaces/{ws}/configurations", json=huge), 413, "payload_too_large")
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == []


async def test_step_count_and_script_length_limits(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    many = {"name": "x", "steps": [{"name": f"s{i}", "script": "true"} for i in range(101)]}
    response = await client.post(f"/workspaces/{ws}/configurations", json=many)
    assert_error(response, 400, "invalid_request")
    assert "ADE_MAX_STEPS" in json.dumps(response.json()["details"])
    long_script = {"name": "x", "steps": [{"name": "s", "script": "#" * 65537}]}
    response = await client.post(f"/workspaces/{ws}/configurations", json=long_script)
    assert_error(response, 400, "invalid_request")
    assert "ADE_MAX_SCRIPT_BYTES" in json.dumps(response.json()["details"])
    duplicate = {"name": "x", "steps": [STEP, STEP]}
    assert_error(
        await client.post(f"/workspaces/{ws}/configurations", json=duplicate), 400, "invalid_request"
    )
    assert (await client.get(f"/workspaces/{ws}/configurations")).json() == []


async def test_sse_connections_per_key_are_limited(tenants: Tenants, client: httpx.AsyncClient) -> None:
    cfg = await configuration(client, tenants.ws_a, [{"name": "wait", "script": "sleep 30"}])
    run_id = (await run(client, cfg))["id"]
    limit = 32
    async with tenants.client("viewer_a") as viewer:
        streams = []
        try:
            for _ in range(limit):
                request = viewer.build_request("GET", f"/runs/{run_id}/events", params={"stream": "true"})
                response = await viewer.send(request, stream=True)
                assert response.status_code == 200
                streams.append(response)
            over = await viewer.get(f"/runs/{run_id}/events", params={"stream": "true"})
            assert_error(over, 429, "too_many_streams")
            # Other keys are not affected; closing one stream frees a slot.
            async with tenants.client("operator_a") as operator:
                response = await operator.send(
                    operator.build_request("GET", f"/runs/{run_id}/events?stream=true"), stream=True
                )
                assert response.status_code == 200
                await response.aclose()
            await streams.pop().aclose()
            with anyio.fail_after(10):
                while True:
                    request = viewer.build_request("GET", f"/runs/{run_id}/events", params={"stream": "true"})
                    again = await viewer.send(request, stream=True)
                    if again.status_code == 200:
                        streams.append(again)
                        break
                    await again.aclose()
                    await anyio.sleep(0.05)  # the server notices the closed connection asynchronously
        finally:
            for response in streams:
                await response.aclose()


async def test_whoami_names_the_key(tenants: Tenants) -> None:
    async with tenants.client("operator_a") as operator:
        me = (await operator.get("/whoami")).json()
    assert me == {"actor": tenants.key_ids["operator_a"], "role": "operator", "workspace_id": tenants.ws_a}
    async with tenants.client(None) as anonymous:
        assert (await anonymous.get("/whoami")).status_code == 401
