"""`ade dev`: Redis (embedded, with a password), the API and a worker on this machine, in one terminal.

Each child runs in its own session, so the terminal's Ctrl-C reaches only `ade dev`, which then stops
them in order: the API and the worker first (SIGTERM; the worker's shutdown grace is short here, so a
run still in flight ends `failed` / `worker_lost` at once), Redis last, so nothing is cut off from it
while it still has something to record. A second Ctrl-C kills what is left. The children's output comes
through here, every line prefixed with its component (`api    | …`, `worker | …`, `redis  | …`); `ade
dev` says when everything is ready (`/readyz` answers 200), once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx

from ade.cli.redis_server import RedisServer, dying_with_parent
from ade.core import paths
from ade.core.settings import Settings

DEV_SHUTDOWN_GRACE_S = "2"  # ADE_WORKER_SHUTDOWN_GRACE_S unless set
STOP_TIMEOUT_S = 20.0  # after SIGTERM, on top of the worker's grace, before SIGKILL


class Console:
    """One writer for every line on stdout, whichever thread it comes from."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def say(self, message: str) -> None:
        self.write(f"ade dev: {message}\n".encode())

    def pump(self, component: str, stream: IO[bytes]) -> threading.Thread:
        """Copy a child's output here line by line, each line prefixed with the component's name."""
        prefix = f"{component:<6} | ".encode()

        def copy() -> None:
            with stream:
                for line in iter(stream.readline, b""):
                    self.write(prefix + line.rstrip(b"\r\n") + b"\n")

        thread = threading.Thread(target=copy, name=f"ade-dev-{component}", daemon=True)
        thread.start()
        return thread


class StopSignal:
    """SIGINT/SIGTERM ask to stop; a second one asks to hurry (kill what is left)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested.is_set():
            self.hurry = True
        self.requested.set()


def dev_secret(path: Path) -> str:
    """A secret made once and kept (mode 0600) in the data dir: the bootstrap token, Redis's password."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def run_dev(host: str | None, port: int | None) -> int:
    """Run until Ctrl-C / SIGTERM (exit 0) or until a child exits by itself (exit 1)."""
    stop = StopSignal()
    console = Console(sys.stdout.buffer)
    settings = Settings.from_env()
    host, port = host or settings.host, port or settings.port
    data_dir = settings.data_dir
    env = dict(os.environ, ADE_DATA_DIR=str(data_dir), ADE_HOST=host, ADE_PORT=str(port))
    env.setdefault("ADE_WORKER_SHUTDOWN_GRACE_S", DEV_SHUTDOWN_GRACE_S)
    token_is_in = "ADE_BOOTSTRAP_TOKEN"
    if not settings.bootstrap_token:
        env["ADE_BOOTSTRAP_TOKEN"] = dev_secret(paths.bootstrap_token(data_dir))
        token_is_in = str(paths.bootstrap_token(data_dir))
    redis: RedisServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    pumps: list[threading.Thread] = []
    exit_code = 0
    try:
        if not os.environ.get("ADE_REDIS_URL"):
            password_path = paths.redis_password(data_dir)
            redis = RedisServer(
                paths.redis_dir(data_dir),
                password=dev_secret(password_path),
                log_to_stdout=True,
                new_session=True,
            ).start()
            env["ADE_REDIS_URL"] = redis.url
            console.say(
                f"embedded Redis on 127.0.0.1:{redis.port} (data in {redis.directory}, "
                f"password in {password_path})"
            )
        # The worker never holds the bootstrap token: it has no use for it, and it runs tenants' steps.
        worker_env = {name: value for name, value in env.items() if name != "ADE_BOOTSTRAP_TOKEN"}
        for name, command, child_env in (("api", "serve", env), ("worker", "worker", worker_env)):
            children[name] = subprocess.Popen(
                [sys.executable, "-m", "ade.cli", command],
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the terminal's Ctrl-C is ours to pass on, in order
                preexec_fn=dying_with_parent(),
            )
        # Threads only now: forking (with a preexec_fn) while other threads run is best avoided.
        if redis is not None and redis.process is not None and redis.process.stdout is not None:
            pumps.append(console.pump("redis", redis.process.stdout))
        for name, child in children.items():
            assert child.stdout is not None
            pumps.append(console.pump(name, child.stdout))
        url = f"http://{host}:{port}"
        probe = f"http://{_reachable(host)}:{port}/readyz"
        ready = False
        while not stop.requested.is_set():
            exited = {name: child.returncode for name, child in children.items() if child.poll() is not None}
            if exited:
                for name, code in exited.items():
                    console.say(f"the {name} exited (code {code}); stopping everything")
                exit_code = 1
                break
            if not ready and _answers(probe):
                ready = True
                console.say(f"ready on {url} (bootstrap token in {token_is_in})")
            stop.requested.wait(0.2)
        if stop.requested.is_set():
            console.say("stopping: the API and the worker first, then Redis")
    finally:
        grace_s = float(env.get("ADE_WORKER_SHUTDOWN_GRACE_S") or DEV_SHUTDOWN_GRACE_S)
        _stop_children(children, stop, timeout_s=grace_s + STOP_TIMEOUT_S)
        if redis is not None:
            redis.stop()
        for pump in pumps:
            pump.join(2.0)
        console.say("stopped")
    return exit_code


def _reachable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _stop_children(
    children: dict[str, subprocess.Popen[bytes]], stop: StopSignal, *, timeout_s: float
) -> None:
    """SIGTERM to each child, then wait; SIGKILL to each child's process group at the deadline or on a
    second Ctrl-C. Each child leads its own group, so that also takes anything it left behind."""
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(child.poll() is None for child in children.values()):
        if stop.hurry or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for child in children.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
