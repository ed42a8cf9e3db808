"""What the execution engine shares while it runs steps: settings, Redis, the stores, the hub, cancel signals,
and the few basics a step's environment inherits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ade.core import keys
from ade.core.settings import Settings
from ade.events.hub import Hub
from ade.records.artifacts import ArtifactStore
from ade.records.store import Store

INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")


def base_environment() -> dict[str, str]:
    """The few basics a step gets from the worker — never its own secrets or settings."""
    base = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return base


class CancelSignals:
    """The runs this worker is executing, each with the event a cancel request sets."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def register(self, run_id: str) -> asyncio.Event:
        return self._events.setdefault(run_id, asyncio.Event())

    def unregister(self, run_id: str) -> None:
        self._events.pop(run_id, None)

    def request(self, run_id: str) -> None:
        if event := self._events.get(run_id):
            event.set()

    @property
    def running(self) -> list[str]:
        return list(self._events)


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    settings: Settings
    redis: Redis
    store: Store
    artifacts: ArtifactStore
    name: str
    cancels: CancelSignals
    hub: Hub


def process_recorder(deps: WorkerDeps, stream_id: str) -> Callable[[int], Awaitable[None]]:
    """Records where a stream's step runs, so a reaper can kill it if this worker dies.

    A run's parallel steps share the one record: it names the step that started last. That is enough
    for the default (sandbox) executor, whose steps do not need the reaper: bubblewrap runs with
    `--die-with-parent`, so when the worker dies (even by SIGKILL) the kernel kills each step's bwrap, its
    PID namespace's init, and with it every process of the step. The record matters for the host executor
    (process groups outlive their parent), where with parallel steps only the last one started is killed;
    a container step runs under its runtime's monitor (podman's conmon), which a process group kill does
    not reach either way."""

    async def record(pgid: int) -> None:
        with contextlib.suppress(RedisError, OSError):  # best effort: a Redis blip must not fail the step
            await deps.redis.set(
                keys.step_process(stream_id), f"{socket.gethostname()} {pgid}", ex=7 * 24 * 3600
            )

    return record
