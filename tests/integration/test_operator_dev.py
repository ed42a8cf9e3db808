"""Operating ADE: `ade dev` stops cleanly on a terminal's Ctrl-C, and compose.yaml's health checks really
check (run here exactly as compose.yaml writes them: there is no Docker engine to run compose itself)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest
import yaml
from httpx_sse import connect_sse

from ade.cli.redis_server import free_port
from tests.integration.test_operator import alive, children_of
from tests.system import processes_running, running

ROOT = Path(__file__).resolve().parents[2]
PREFIXES = ("api    | ", "worker | ", "redis  | ", "ade dev: ")


class Output:
    """Everything a process prints, read as it comes (so its pipe never fills)."""

    def __init__(self, stream: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert stream.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(stream.stdout,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in:\n" + "\n".join(self.lines))

    def join(self) -> None:
        self._thread.join(5)


def test_ctrl_c_stops_ade_dev_in_order_and_its_run_ends_worker_lost(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    unset = ("ADE_REDIS_URL", "ADE_BOOTSTRAP_TOKEN", "ADE_WORKER_SHUTDOWN_GRACE_S", "ADE_LOG_LEVEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(ADE_DATA_DIR=str(data), ADE_PORT=str(port), ADE_KILL_GRACE_S="1")
    dev = subprocess.Popen(
        [sys.executable, "-m", "ade.cli", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    output = Output(dev)
    try:
        output.wait_for(f"ade dev: ready on http://127.0.0.1:{port} (bootstrap token in", 60)
        token = (data / "bootstrap-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers=headers, timeout=30) as api:
            ws = api.post("/workspaces", json={"name": "dev"}).json()["id"]
            script = "echo started; sleep 3401"
            body = {"name": "c", "steps": [{"name": "s", "script": script}]}
            cfg = api.post(f"/workspaces/{ws}/configurations", json=body).json()["id"]
            run_id = api.post(f"/configurations/{cfg}/runs", json={}).json()["id"]
            with connect_sse(api, "GET", f"/runs/{run_id}/events", params={"stream": "true"}) as source:
                for sse in source.iter_sse():
                    event = json.loads(sse.data) if sse.event == "ade.event" else {}
                    if event.get("type") == "console.line":
                        break
        assert processes_running("sleep 3401")  # the step is running
        children = children_of(dev.pid)
        assert len(children) == 3  # redis-server, the API, the worker
        (worker,) = [pid for pid in children if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert b"ADE_BOOTSTRAP_TOKEN=" not in Path(f"/proc/{worker}/environ").read_bytes()  # not the worker

        pressed = time.monotonic()
        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C: the terminal signals its foreground process group
        assert dev.wait(15) == 0
        took_s = time.monotonic() - pressed
        output.join()

        print(f"ade dev stopped {took_s:.1f} s after Ctrl-C; its output:", *output.lines, sep="\n  ")
        assert took_s < 10
        assert [pid for pid in children if alive(pid)] == []
        for _ in range(100):  # a killed PID namespace is reaped by the kernel a moment later
            if not processes_running("sleep 3401"):
                break
            time.sleep(0.05)
        assert processes_running("sleep 3401") == []
        record = json.loads((data / "runs" / run_id / "run.json").read_text())
        assert record["status"] == "failed" and record["failure"]["code"] == "worker_lost"
        assert "shut down" in record["failure"]["message"]
        last = json.loads((data / "runs" / run_id / "logs" / "events.ndjson").read_bytes().splitlines()[-1])
        assert last["type"] == "run.completed" and last["payload"]["failure"]["code"] == "worker_lost"

        lines = output.lines
        assert all(line.startswith(PREFIXES) for line in lines), lines
        assert sum("ade dev: ready on" in line for line in lines) == 1
        stopping = lines.index("ade dev: stopping: the API and the worker first, then Redis")
        after = list(enumerate(lines))[stopping:]
        redis_after = [i for i, line in after if line.startswith("redis  | ")]
        others_after = [i for i, line in after if line.startswith(("api    | ", "worker | "))]
        assert redis_after and others_after and min(redis_after) > max(others_after)  # Redis stopped last
        noisy = [line for line in lines if "WARNING" in line or "ERROR" in line or "Traceback" in line]
        assert len(noisy) <= 5, noisy  # e.g. Redis's own start-up advice, not a flood
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


def compose() -> dict[str, dict[str, object]]:
    loaded: dict[str, dict[str, object]] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def health_command(service: str) -> list[str]:
    """The service's health check from compose.yaml, as this machine runs it (`ade` from this checkout)."""
    test = compose()["services"][service]["healthcheck"]["test"]  # type: ignore[index]
    assert test[0] == "CMD"
    argv = list(test[1:])
    return [sys.executable, "-m", "ade.cli", *argv[1:]] if argv[0] == "ade" else argv


def test_compose_restarts_every_service_and_gives_redis_a_password() -> None:
    services = compose()["services"]
    assert all(service["restart"] == "unless-stopped" for service in services.values())  # type: ignore[index]
    redis = services["redis"]
    assert "--requirepass" in redis["command"]  # type: ignore[operator]
    for name in ("api", "worker"):
        url = services[name]["environment"]["ADE_REDIS_URL"]  # type: ignore[index]
        assert url.startswith("redis://:${ADE_REDIS_PASSWORD")
    assert "ADE_BOOTSTRAP_TOKEN" not in services["worker"]["environment"]  # type: ignore[operator]
    assert health_command("api")[-2:] == ["healthcheck", "api"]
    assert health_command("worker")[-2:] == ["healthcheck", "worker"]


@pytest.mark.anyio
async def test_compose_health_checks_pass_on_a_live_api_and_worker_and_fail_on_dead_ones(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as system:
        api_check, worker_check = health_command("api"), health_command("worker")

        async def healthy(command: list[str]) -> bool:
            done = await anyio.run_process(command, env=system.env(), check=False)
            return done.returncode == 0

        async def until(command: list[str], *, is_healthy: bool, timeout_s: float) -> None:
            with anyio.fail_after(timeout_s):
                while await healthy(command) != is_healthy:  # noqa: ASYNC110 - polling another process
                    await anyio.sleep(0.2)

        assert await healthy(api_check) and await healthy(worker_check)

        worker = system.workers[0]
        worker.kill()  # SIGKILL: its heartbeat key stays until it lapses, but it stops being fresh
        await anyio.to_thread.run_sync(worker.wait)
        await until(worker_check, is_healthy=False, timeout_s=15)

        system.start_worker()  # a new worker on this host
        await until(worker_check, is_healthy=True, timeout_s=30)

        assert system.api is not None
        system.api.terminate()
        await anyio.to_thread.run_sync(system.api.wait)
        assert not await healthy(api_check)
        await anyio.to_thread.run_sync(system.redis.stop)
        assert not await healthy(worker_check)  # it cannot show a heartbeat without Redis
        await anyio.to_thread.run_sync(system.redis.start)
        await until(worker_check, is_healthy=True, timeout_s=30)  # the worker outlived the outage
