"""What the API and the event pipeline guarantee against a hostile step: no planted link is followed, a
revoked key's streams stop, secrets are masked wherever a step puts them, and size limits hold — real
HTTP, real worker, real steps."""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.api import configuration, events_to_end, run, wait_for_end, workspace
from tests.system import AdeSystem, running

pytestmark = pytest.mark.anyio


async def wait_for_status(client: httpx.AsyncClient, run_id: str, timeout_s: float = 60) -> dict[str, Any]:
    with anyio.fail_after(timeout_s):
        while True:
            body: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            await anyio.sleep(0.1)


async def wait_for_running(client: httpx.AsyncClient, run_id: str) -> None:
    with anyio.fail_after(30):
        while (await client.get(f"/runs/{run_id}")).json()["status"] != "running":  # noqa: ASYNC110
            await anyio.sleep(0.05)


def log_bytes(data_dir: Path, run_id: str) -> bytes:
    return (data_dir / "runs" / run_id / "logs" / "events.ndjson").read_bytes()


def events_of(data_dir: Path, run_id: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_bytes(data_dir, run_id).splitlines()]


# 1. No planted link is followed --------------------------------------------------------------------------


async def test_a_log_replaced_by_a_symlink_is_never_served(tmp_path: Path) -> None:
    """A step replaces its run's log with a symlink to a file of the API host (like /etc/hostname; here a
    file with content found nowhere else): the logfile, the JSON/NDJSON pages, the logs and the SSE stream
    answer without that content, and nothing is ever written through the link.

    This runs on a private system with ADE_EXECUTOR=host because only the host executor lets a step reach
    its run's `logs/` directory (a sandboxed step sees its work, input and output directories only)."""
    host_file = tmp_path / "host-only.txt"
    marker = f"HOST-ONLY-{secrets.token_hex(8)}"
    host_file.write_text(f"{marker}\n")
    script = f'ln -sfn {host_file} ../logs/events.ndjson; echo "after the swap"'
    async with (
        running(tmp_path / "system", ADE_EXECUTOR="host", ADE_SSE_KEEPALIVE_S="1") as system,
        system.api_client(timeout_s=30) as api,
    ):
        ws = await workspace(api)
        cfg = await configuration(api, ws, [{"name": "swap", "script": script}])
        run_id = (await run(api, cfg))["id"]
        assert (await wait_for_status(api, run_id))["status"] == "succeeded"
        log = system.data_dir / "runs" / run_id / "logs" / "events.ndjson"
        assert log.is_symlink()  # the step really did it
        logfile = await api.get(f"/runs/{run_id}/logfile")
        assert logfile.status_code == 404 and logfile.json()["code"] == "log_not_found"
        answers = [
            logfile,
            await api.get(f"/runs/{run_id}/events"),
            await api.get(f"/runs/{run_id}/events", params={"format": "ndjson"}),
            await api.get(f"/runs/{run_id}/logs"),
            await api.get(f"/runs/{run_id}/logs", params={"format": "text"}),
            await api.get(f"/runs/{run_id}/summary"),
            await api.get(f"/runs/{run_id}/diagnostics"),
        ]
        with anyio.fail_after(15):  # the stream ends by itself: the run's record is terminal
            answers.append(await api.get(f"/runs/{run_id}/events", params={"stream": "true"}))
        for answer in answers:
            assert answer.status_code < 500, answer.text
            assert marker not in answer.text
        assert (await api.get(f"/runs/{run_id}/events")).json()["items"] == []
        assert answers[-1].text.endswith("event: end\ndata: {}\n\n")
        assert (await api.get(f"/runs/{run_id}/diagnostics")).json()["log_bytes"] == 0
    assert host_file.read_text() == f"{marker}\n"  # never appended to


async def test_an_output_swapped_with_a_symlink_never_serves_the_link_target(
    client: httpx.AsyncClient,
) -> None:
    """A step swaps outputs/x between a regular file and a symlink to /etc/passwd as fast as it can while
    it is downloaded 300 times: every answer is the file's own bytes or a 404, never /etc/passwd."""
    ws = await workspace(client)
    script = (
        'cd "$ADE_OUTPUT_DIR"; end=$((SECONDS + 60)); while [ $SECONDS -lt $end ]; do '
        "printf safe > x.tmp; mv -f x.tmp x; ln -sfn /etc/passwd x.lnk; mv -fT x.lnk x; done"
    )
    cfg = await configuration(client, ws, [{"name": "swap", "script": script}])
    run_id = (await run(client, cfg))["id"]
    url = f"/runs/{run_id}/outputs/x"
    with anyio.fail_after(30):
        while (await client.get(url)).status_code != 200:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    outcomes: list[tuple[int, bytes]] = []

    async def download(count: int, ranged: bool) -> None:
        for _ in range(count):
            headers = {"Range": "bytes=0-"} if ranged else {}
            try:
                response = await client.get(url, headers=headers)
            except httpx.RemoteProtocolError:  # a response cut short: the file changed under it
                outcomes.append((0, b""))
                continue
            outcomes.append((response.status_code, response.content))

    async with anyio.create_task_group() as tg:
        for index in range(6):
            tg.start_soon(download, 50, index % 3 == 0)
    listing = (await client.get(f"/runs/{run_id}/outputs")).json()
    assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
    await wait_for_status(client, run_id)
    assert len(outcomes) == 300
    served = [body for status, body in outcomes if status in (200, 206)]
    assert all(body == b"safe" for body in served), {body[:40] for body in served}
    assert {status for status, _ in outcomes} <= {200, 206, 404}
    assert served  # the race was really run: the file was there some of the time
    for item in listing["items"]:
        assert item["path"] != "x" or item["sha256"] == hashlib.sha256(b"safe").hexdigest()


# 2. A stream token is only as good as its key -----------------------------------------------------------


async def read_until_closed(response: httpx.Response, timeout_s: float) -> bytes:
    received = b""
    with anyio.fail_after(timeout_s):
        async for chunk in response.aiter_raw():
            received += chunk
    return received


async def open_token_stream(
    system: AdeSystem, client: httpx.AsyncClient, expires_at: datetime | None = None
) -> tuple[str, str, str]:
    """A workspace key, a stream token it minted for a running run: (key id, token, run id)."""
    ws = await workspace(client)
    body: dict[str, Any] = {"name": "viewer", "role": "viewer"}
    if expires_at is not None:
        body["expires_at"] = expires_at.isoformat()
    key = (await client.post(f"/workspaces/{ws}/api-keys", json=body)).json()
    cfg = await configuration(client, ws, [{"name": "wait", "script": "sleep 60"}])
    run_id = (await run(client, cfg))["id"]
    await wait_for_running(client, run_id)
    async with httpx.AsyncClient(
        base_url=f"{system.base_url}/api/v1", headers={"Authorization": f"Bearer {key['secret']}"}
    ) as viewer:
        token = (await viewer.post(f"/runs/{run_id}/stream-token")).json()["token"]
    return key["id"], token, run_id


async def test_revoking_a_key_ends_its_token_streams_within_a_second(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    key_id, token, run_id = await open_token_stream(system, client)
    url = f"{system.base_url}/api/v1/runs/{run_id}/events"
    async with httpx.AsyncClient(timeout=30) as browser:  # no headers, as EventSource
        async with browser.stream("GET", url, params={"stream": "true", "token": token}) as response:
            assert response.status_code == 200
            logs = browser.stream(
                "GET", url.replace("/events", "/logs"), params={"follow": "true", "token": token}
            )
            async with logs as followed:
                assert followed.status_code == 200
                await anyio.sleep(0.5)  # both streams are open and idle (the step sleeps)
                assert (await client.delete(f"/api-keys/{key_id}")).status_code == 204
                revoked_at = time.monotonic()
                received = await read_until_closed(response, timeout_s=5)
                assert time.monotonic() - revoked_at < 1.5
                await read_until_closed(followed, timeout_s=5)
                assert time.monotonic() - revoked_at < 1.5
        assert b"event: end" not in received and b"revoked or has expired" in received
        again = await browser.get(url, params={"stream": "true", "token": token})
        assert again.status_code == 401 and again.json()["code"] == "invalid_token"
    await client.post(f"/runs/{run_id}/cancel")


async def test_an_expiring_key_ends_its_token_streams_when_it_expires(
    system: AdeSystem, client: httpx.AsyncClient
) -> None:
    expires_at = datetime.now(UTC) + timedelta(seconds=2.5)
    _, token, run_id = await open_token_stream(system, client, expires_at=expires_at)
    url = f"{system.base_url}/api/v1/runs/{run_id}/events"
    async with httpx.AsyncClient(timeout=30) as browser:
        async with browser.stream("GET", url, params={"stream": "true", "token": token}) as response:
            assert response.status_code == 200
            await read_until_closed(response, timeout_s=10)
        late_s = (datetime.now(UTC) - expires_at).total_seconds()
        assert -0.1 < late_s < 1.0
        again = await browser.get(url, params={"stream": "true", "token": token})
        assert again.status_code == 401
    await client.post(f"/runs/{run_id}/cancel")


async def test_streams_of_the_bootstrap_token_are_not_cut(client: httpx.AsyncClient) -> None:
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "s", "script": "sleep 1.5; echo done"}])
    run_id = (await run(client, cfg))["id"]
    events = await wait_for_end(client, run_id)
    assert json.loads(events[-1].data)["type"] == "run.completed"


# 3. Secrets masked wherever a step puts them ---------------------------------------------------------------


async def test_secrets_are_masked_in_keys_numbers_event_names_and_each_line(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    number, key, name = "9876543210", "k3y-" + secrets.token_hex(6), "zq_" + secrets.token_hex(6)
    lines = [
        "-----BEGIN TEST KEY-----",
        "line-one-" + secrets.token_hex(6),
        "line-two-" + secrets.token_hex(6),
    ]
    multi = "\n".join([*lines, "-----END TEST KEY-----"])
    environment = {
        "NUM": {"value": number, "secret": True},
        "KEY": {"value": key, "secret": True},
        "NAME": {"value": name, "secret": True},
        "MULTI": {"value": multi, "secret": True},
    }
    script = "\n".join(
        [
            'printf \'{"type":"x","v":%s,"w":[%s, 1.5],"%s":1}\\n\' "$NUM" "$NUM" "$KEY" >&$ADE_EVENTS_FD',
            'printf \'{"type":"%s","v":1}\\n\' "$NAME" >&$ADE_EVENTS_FD',
            'printf \'{"type":"engine.%s"}\\n\' "$NAME" >&$ADE_EVENTS_FD',
            'printf \'{"type":"y","msg":"%s"}\\n\' "$NAME" >&$ADE_EVENTS_FD',
            'echo "$MULTI"',
            'echo "second: $(printf %s "$MULTI" | sed -n 2p)"',
            'echo "number: $NUM"',
        ]
    )
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "leak", "script": script}], environment=environment)
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    assert events[-1]["payload"]["status"] == "succeeded"
    x = next(event for event in events if event["type"] == "engine.x")
    assert x["payload"] == {"v": "***", "w": ["***", 1.5], "***": 1, "step": "leak"}
    refused = [
        e["payload"]["message"] for e in events if "ignored an event" in e["payload"].get("message", "")
    ]
    assert len(refused) == 2 and all("secret" in message for message in refused)
    assert not any(event["type"].startswith(f"engine.{name}") for event in events)
    assert next(e for e in events if e["type"] == "engine.y")["payload"]["msg"] == "***"
    console = [
        e["payload"]["message"]
        for e in events
        if e["type"] == "console.line" and "[ade]" not in e["payload"]["message"]
    ]
    assert console == ["***", "***", "***", "***", "second: ***", "number: ***"]
    log = log_bytes(data_dir, run_id)
    for value in (number, key, name, multi, *lines[1:]):
        assert value.encode() not in log


async def test_a_builds_secrets_are_masked_in_its_runs_streams(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    token = "build-only-" + secrets.token_hex(8)
    build = {
        "constructor": "shell",
        "environment": {"BTOKEN": {"value": token, "secret": True}},
        "steps": [{"name": "b", "script": 'echo "build sees $BTOKEN"; printf %s "$BTOKEN" > token.txt'}],
    }
    script = 'echo "from the build: $(cat "$ADE_BUILD_SOURCE_DIR/token.txt")"; echo "env: ${BTOKEN:-unset}"'
    ws = await workspace(client)
    cfg = await configuration(client, ws, [{"name": "use", "script": script}], build=build)
    created = await run(client, cfg)
    events = await events_to_end(client, created["id"])
    assert events[-1]["payload"]["status"] == "succeeded", events[-1]
    console = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert "from the build: ***" in console and "env: unset" in console
    assert "build sees ***" in console  # the build's own lines, re-emitted into the run's stream
    assert token.encode() not in log_bytes(data_dir, created["id"])
    build_id = created["build_id"]
    assert token.encode() not in (data_dir / "builds" / build_id / "logs" / "events.ndjson").read_bytes()


# 4. Size limits ------------------------------------------------------------------------------------------


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


async def test_an_archive_bomb_fails_the_build_with_resource_limit(
    client: httpx.AsyncClient, data_dir: Path
) -> None:
    """204 KB that unpack to 201 MB, past the default ADE_MAX_ARCHIVE_UNPACKED_BYTES (100 MiB)."""
    size = 201 * 1024 * 1024
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=9) as archive:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        archive.addfile(info, io.BufferedReader(Zeros(size)))
    assert len(buffer.getvalue()) < 250 * 1024
    ws = await workspace(client)
    source = (await client.post(f"/workspaces/{ws}/artifacts", content=buffer.getvalue())).json()["key"]
    cfg = await configuration(
        client, ws, [{"name": "s", "script": "true"}], build={"constructor": "shell", "source": source}
    )
    response = await client.post(
        f"/workspaces/{ws}/configurations/{cfg}/builds", json={"options": {"wait": True}}
    )
    build = response.json()
    assert build["status"] == "failed", build
    assert build["failure"]["code"] == "resource_limit"
    assert "ADE_MAX_ARCHIVE_UNPACKED_BYTES" in build["failure"]["message"]
    assert not (data_dir / "builds" / build["id"] / "source" / "zeros.bin").exists()


async def test_outputs_past_the_limit_fail_the_step_and_links_do_not_count(tmp_path: Path) -> None:
    big = tmp_path / "big-host-file"
    big.write_bytes(bytes(3_000_000))
    steps = [
        {
            "name": "first",
            "script": f'head -c 600000 /dev/zero > "$ADE_OUTPUT_DIR/a"; ln -s {big} "$ADE_OUTPUT_DIR/l"',
        },
        {"name": "second", "script": 'head -c 600000 /dev/zero > "$ADE_OUTPUT_DIR/b"'},
        {"name": "third", "script": "echo never"},
    ]
    async with (
        running(tmp_path / "system", ADE_MAX_OUTPUT_BYTES="1000000") as system,
        system.api_client(timeout_s=30) as api,
    ):
        ws = await workspace(api)
        cfg = await configuration(api, ws, steps)
        finished = await wait_for_status(api, (await run(api, cfg))["id"])
    assert finished["status"] == "failed"
    assert finished["failure"]["code"] == "resource_limit" and finished["failure"]["step"] == "second"
    assert "ADE_MAX_OUTPUT_BYTES" in finished["failure"]["message"]
    assert [step["status"] for step in finished["steps"]] == ["succeeded", "failed", "skipped"]


async def test_console_past_the_limit_is_dropped_after_one_marker_and_the_run_goes_on(tmp_path: Path) -> None:
    limit = 200_000
    steps = [
        {"name": "flood", "script": "seq 1 300000"},
        {"name": "after", "script": "echo second-step-line"},
    ]
    async with (
        running(tmp_path / "system", ADE_MAX_CONSOLE_BYTES_PER_RUN=str(limit)) as system,
        system.api_client(timeout_s=30) as api,
    ):
        ws = await workspace(api)
        cfg = await configuration(api, ws, steps)
        run_id = (await run(api, cfg))["id"]
        assert (await wait_for_status(api, run_id))["status"] == "succeeded"
        events = events_of(system.data_dir, run_id)
        log_size = len(log_bytes(system.data_dir, run_id))
    console = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    markers = [message for message in console if "ADE_MAX_CONSOLE_BYTES_PER_RUN" in message]
    assert len(markers) == 1 and str(limit) in markers[0]
    assert console[-1] == markers[0] and "second-step-line" not in console
    assert 100 < len(console) < 1000
    assert log_size < limit + 20_000  # the lifecycle events are the rest


async def test_a_configuration_sets_its_own_output_and_console_limits_under_the_operators(
    client: httpx.AsyncClient,
) -> None:
    ws = await workspace(client)
    limits = {"output_bytes": 1000, "console_bytes": 3000}
    steps = [
        {"name": "chatty", "script": "seq 1 200"},  # past 3000 bytes of console (each line counts ~360)
        {"name": "big", "script": "head -c 2000 /dev/zero > $ADE_OUTPUT_DIR/big.bin"},
    ]
    cfg = await configuration(client, ws, steps, limits=limits)
    assert (await client.get(f"/configurations/{cfg}")).json()["limits"] == limits
    run_id = (await run(client, cfg))["id"]
    events = await events_to_end(client, run_id)
    console = [e["payload"]["message"] for e in events if e["type"] == "console.line"]
    assert len(console) < 20 and "limits.console_bytes" in console[-1]  # one marker, then nothing
    completed = events[-1]["payload"]
    assert completed["status"] == "failed" and completed["failure"]["code"] == "resource_limit"
    assert completed["failure"]["step"] == "big" and "1000 bytes" in completed["failure"]["message"]
    bad = await client.post(
        f"/workspaces/{ws}/configurations",
        json={"name": "x", "steps": [{"name": "s", "script": "true"}], "limits": {"output_bytes": 0}},
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


async def test_a_build_sets_its_own_source_archive_limits_under_the_operators(
    client: httpx.AsyncClient,
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in ("a.txt", "b.txt", "c.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    ws = await workspace(client)
    source = (await client.post(f"/workspaces/{ws}/artifacts", content=buffer.getvalue())).json()["key"]
    spec = {"constructor": "shell", "source": source, "source_limits": {"members": 2}}
    cfg = await configuration(client, ws, [{"name": "s", "script": "true"}], build=spec)
    response = await client.post(
        f"/workspaces/{ws}/configurations/{cfg}/builds", json={"options": {"wait": True}}
    )
    build = response.json()
    assert build["status"] == "failed" and build["failure"]["code"] == "resource_limit", build
    assert "more than 2 entries" in build["failure"]["message"]
    assert "source_limits.members" in build["failure"]["message"]
