"""arq tasks: thin wrappers over the engine's plain functions (`ade.execution.executor`, `…builder`)."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import RedisError

from ade.execution.builder import execute_build as _execute_build
from ade.execution.deps import WorkerDeps
from ade.execution.executor import execute_run as _execute_run
from ade.lifecycle import queue


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    """The worker took a workspace slot for this run before calling this (`queue.admit`); a run that ended
    without starting (cancelled meanwhile) gives it back here, else the run's end did (the reaper catches
    what neither could)."""
    deps: WorkerDeps = ctx["deps"]
    try:
        await _execute_run(deps, run_id)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await queue.give_back_if_ended(deps.store, run_id)


async def execute_build(ctx: dict[str, Any], build_id: str) -> None:
    deps: WorkerDeps = ctx["deps"]
    await _execute_build(deps, build_id)
