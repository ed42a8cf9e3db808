"""`ade dev`: embedded Redis, API and worker on one machine; Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ade.cli.redis_server import free_port
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_ade_dev_runs_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "ADE_REDIS_URL"}
    env.update(ADE_DATA_DIR=str(tmp_path / "data"), ADE_PORT=str(port), ADE_LOG_LEVEL="WARNING")
    dev = subprocess.Popen(
        [sys.executable, "-m", "ade.cli", "dev"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.json()["ready"] is True
        children = children_of(dev.pid)
        assert len(children) == 3  # redis-server, the API, the worker
        assert (tmp_path / "data" / "redis" / "appendonlydir").exists()  # embedded Redis under the data dir
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0
        assert [pid for pid in children if alive(pid)] == []
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def test_cli_creates_a_workspace_and_a_key_that_works(system: AdeSystem) -> None:
    env = {**os.environ, "ADE_URL": system.base_url, "ADE_TOKEN": BOOTSTRAP_TOKEN}
    ade = [sys.executable, "-m", "ade.cli"]
    created = subprocess.run(
        [*ade, "workspaces", "create", "cli-ws"], env=env, capture_output=True, text=True
    )
    assert created.returncode == 0, created.stderr
    ws = json.loads(created.stdout)["id"]
    key = subprocess.run(
        [*ade, "keys", "create", "--workspace", ws, "--role", "viewer"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert key.returncode == 0, key.stderr
    secret = json.loads(key.stdout)["secret"]
    response = httpx.get(
        f"{system.base_url}/api/v1/workspaces/{ws}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 200 and response.json()["name"] == "cli-ws"
    denied = subprocess.run(
        [*ade, "keys", "create", "--workspace", ws, "--role", "admin", "--token", secret],
        env=env,
        capture_output=True,
        text=True,
    )
    assert denied.returncode != 0 and "role_too_weak" in denied.stderr


def test_ade_serve_with_workers_spreads_one_port_over_processes_and_stops_them_all(
    system: AdeSystem, tmp_path: Path
) -> None:
    port = free_port()
    env = {**system.env(), "ADE_PORT": str(port)}
    with (tmp_path / "serve.log").open("ab") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "ade.cli", "serve", "--workers", "2"], env=env, stdout=log, stderr=log
        )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):  # the processes are up once the port answers
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        workers = children_of(serve.pid)
        assert len(workers) == 2
        headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
        with httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=30) as http:
            ws = http.post("/workspaces", json={"name": "two-processes"}).json()["id"]
            body = {"name": "c", "steps": [{"name": "s", "script": "echo from-any-process"}]}
            cfg = http.post(f"/workspaces/{ws}/configurations", json=body).json()["id"]
            run_id = http.post(f"/configurations/{cfg}/runs", json={}).json()["id"]
            text = http.get(f"/runs/{run_id}/logs", params={"format": "text", "follow": "true"}).text
            assert "from-any-process" in text
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(20) == 0
    assert not [pid for pid in workers if alive(pid)]
