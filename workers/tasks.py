"""arq tasks: thin wrappers over the plain functions in `workers.executor`."""

from __future__ import annotations

from typing import Any

from workers.executor import WorkerDeps
from workers.executor import execute_run as _execute_run


async def execute_run(ctx: dict[str, Any], run_id: str) -> None:
    deps: WorkerDeps = ctx["deps"]
    await _execute_run(deps, run_id)
