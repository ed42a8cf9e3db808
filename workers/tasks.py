"""arq tasks: thin wrappers over the engine's plain functions (`ade.execution.executor`, `…builder`)."""

from __future__ import annotations

from typing import Any

from ade.execution.builder import execute_build as _execute_build
from ade.execution.deps import WorkerDeps
from ade.execution.executor import execute_run as _execute_run


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    deps: WorkerDeps = ctx["deps"]
    await _execute_run(deps, run_id)


async def execute_build(ctx: dict[str, Any], build_id: str) -> None:
    deps: WorkerDeps = ctx["deps"]
    await _execute_build(deps, build_id)
