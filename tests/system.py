"""A real ADE system for tests: a private Redis, `ade serve` and `ade worker` as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from ade.cli.redis_server import RedisServer, free_port

BOOTSTRAP_TOKEN = "test-bootstrap-token"
ARTIFACT_LIMIT_BYTES = 2 * 1024 * 1024


@dataclass
class AdeSystem:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    redis: RedisServer = field(init=False)
    api_port: int = field(default_factory=free_port)
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = RedisServer(self.root / "redis")  # with a random password, part of its url

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ADE_REDIS_URL": self.redis.url,
            "ADE_DATA_DIR": str(self.data_dir),
            "ADE_PORT": str(self.api_port),
            "ADE_LOG_LEVEL": "WARNING",
            "ADE_KILL_GRACE_S": "1",
            "ADE_BOOTSTRAP_TOKEN": BOOTSTRAP_TOKEN,
            "ADE_MAX_ARTIFACT_BYTES": str(ARTIFACT_LIMIT_BYTES),
            **self.extra_env,
        }

    def _spawn(self, command: str, name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = self.env()
        if command == "worker":  # as in production: a worker never holds the bootstrap token
            env.pop("ADE_BOOTSTRAP_TOKEN")
        return subprocess.Popen(
            [sys.executable, "-m", "ade.cli", command], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def start(self) -> AdeSystem:
        self.redis.start()
        self.start_api()
        self.start_worker()
        self.wait_ready()
        return self

    def start_api(self) -> None:
        self.api = self._spawn("serve", "api")

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn("worker", f"worker{len(self.workers)}")
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.base_url}/readyz", timeout=1.0)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.05)
        raise RuntimeError(f"ADE did not become ready: {last}")

    def api_client(self, timeout_s: float = 60.0) -> httpx.AsyncClient:
        """An HTTP client on this system's API with the bootstrap token."""
        headers = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
        return httpx.AsyncClient(base_url=f"{self.base_url}/api/v1", headers=headers, timeout=timeout_s)

    def stop(self) -> None:
        for proc in [self.api, *self.workers]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [self.api, *self.workers]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()
        self.api = None
        self.redis.stop()


def processes_running(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker` (a step's unique `sleep 4301`, say),
    read from /proc: steps run in their own PID namespace, so the host sees them only this way."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline.replace(b"\0", b" "):
                found.append(int(entry.name))
    return found


async def assert_none_survive(marker: str) -> None:
    """The kernel reaps a killed namespace's processes asynchronously: allow it a moment, not more."""
    for _ in range(200):
        if not processes_running(marker):
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"processes running {marker!r} outlived their step: {processes_running(marker)}")


@contextlib.asynccontextmanager
async def running(root: Path, **env: str) -> AsyncIterator[AdeSystem]:
    """A private system for a test that breaks things on purpose; stopped however the test ends."""
    system = AdeSystem(root, extra_env=env)
    await anyio.to_thread.run_sync(system.start)
    try:
        yield system
    finally:
        await anyio.to_thread.run_sync(system.stop)


@contextlib.contextmanager
def another_api(system: AdeSystem, log_path: Path) -> Iterator[int]:
    """A second `ade serve` of the same system (same Redis, same data directory) on its own port."""
    port = free_port()
    env = {**system.env(), "ADE_PORT": str(port)}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ade.cli", "serve"], env=env, stdout=log, stderr=log
        )
        try:
            yield port
        finally:
            process.terminate()
            process.wait(15)
