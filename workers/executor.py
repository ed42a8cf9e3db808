"""Executing a run: its steps in order, every line and engine event through the run's dispatcher.

Plain functions; nothing here knows arq or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis

from ade import events as ev
from ade.dispatcher import EventSpec, StreamWriter
from ade.errors import NotFound
from ade.events import StreamRef
from ade.models import TERMINAL_RUN_STATUSES, Failure, Run, Step, plain_environment, secret_values, utcnow
from ade.runs import prepare_run_dir, run_identity
from ade.settings import Settings
from ade.store import Store
from workers.process import Line, run_step

log = logging.getLogger(__name__)

ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")
_engine_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    settings: Settings
    redis: Redis
    store: Store
    name: str


def step_environment(run: Run, step: Step, run_dir: os.PathLike[str]) -> dict[str, str]:
    """A clean environment: a few basics from the worker, never its own secrets or settings."""
    base = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    base.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    root = os.fspath(run_dir)
    return {
        **base,
        **plain_environment(run.plan.environment),
        **plain_environment(step.environment),
        "ADE_RUN_ID": run.id,
        "ADE_WORKSPACE_ID": run.workspace_id,
        "ADE_STEP": step.name,
        "ADE_INPUT_DIR": os.path.join(root, "inputs"),
        "ADE_OUTPUT_DIR": os.path.join(root, "outputs"),
    }


def engine_event(line: bytes, step: str) -> EventSpec:
    """Validate one line a step wrote to ADE_EVENTS_FD and re-envelope it as `engine.<name>`.

    A step can never forge lifecycle events or choose its sequence: reserved names are refused and the
    dispatcher assigns the envelope.
    """
    try:
        body = _engine_decoder.decode(line)
        name = body.pop("type")
        if not isinstance(name, str):
            raise ValueError("`type` must be a string")
        name = name.removeprefix(ev.ENGINE_PREFIX)
        if not ENGINE_NAME.match(name) or len(name) > 64 or name.startswith(ev.RESERVED_PREFIXES):
            raise ValueError(f"`type` {name!r} is not an allowed engine event name")
    except (msgspec.DecodeError, KeyError, ValueError) as exc:
        reason = "expected a JSON object with a `type`" if isinstance(exc, KeyError) else str(exc)
        message = f"[ade] ignored an event written to ADE_EVENTS_FD: {reason}"
        return (
            ev.CONSOLE_LINE,
            {"scope": "run", "stream": "stderr", "step": step, "message": message},
            "worker",
        )
    body.pop("sequence", None)
    return ev.ENGINE_PREFIX + name, {**body, "step": step}, "engine"


class _StepSink:
    """Turns a step's line batches into dispatcher batches."""

    def __init__(self, writer: StreamWriter, step: str) -> None:
        self._writer = writer
        self._step = step

    async def __call__(self, pipe: str, lines: list[Line]) -> None:
        step = self._step
        specs: list[EventSpec] = []
        for text, truncated in lines:
            if pipe == "events":
                if text.strip():
                    specs.append(engine_event(text, step))
                continue
            payload: dict[str, Any] = {
                "scope": "run",
                "stream": pipe,
                "step": step,
                "message": text.decode("utf-8", "replace"),
            }
            if truncated:
                payload["truncated"] = True
            specs.append((ev.CONSOLE_LINE, payload, "worker"))
        await self._writer.emit_many(specs)


async def execute_run(deps: WorkerDeps, run_id: str) -> None:
    settings, store = deps.settings, deps.store
    try:
        run = await store.get_run(run_id)
    except NotFound:
        log.error("run %s vanished before it started", run_id)
        return
    if run.status in TERMINAL_RUN_STATUSES:
        return
    run_dir = store.run_dir(run.id)
    prepare_run_dir(run_dir)
    stream = StreamRef.for_run(settings.data_dir, run.id)
    secrets = secret_values(run.plan.environment)
    for step in run.plan.steps:
        secrets += secret_values(step.environment)
    async with StreamWriter(
        deps.redis,
        stream,
        run_identity(run),
        lease_ttl_s=settings.lease_ttl_s,
        fsync=settings.log_fsync,
        redact=secrets,
    ) as writer:
        run.status, run.started_at, run.worker = "running", utcnow(), deps.name
        await writer.emit(ev.RUN_STARTED, {"status": "running", "attempt": run.attempt, "worker": deps.name})
        await store.put_run(run)
        started = time.monotonic()
        try:
            run.exit_code, run.failure = await _execute_steps(deps, run, writer)
        except asyncio.CancelledError:
            run.exit_code, run.failure = (
                None,
                Failure(stage="run", code="worker_lost", message="the worker shut down during the run"),
            )
            await asyncio.shield(_complete(store, writer, run, started))
            raise
        except Exception as exc:
            log.exception("run %s failed inside the worker", run.id)
            run.exit_code = None
            run.failure = Failure(stage="run", code="internal_error", message=f"{type(exc).__name__}: {exc}")
        await _complete(store, writer, run, started)


async def _complete(store: Store, writer: StreamWriter, run: Run, started: float) -> None:
    run.status = "failed" if run.failure else "succeeded"
    run.completed_at = utcnow()
    await store.put_run(run)
    payload: dict[str, Any] = {
        "status": run.status,
        "exit_code": run.exit_code,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }
    if run.failure:
        payload["failure"] = msgspec.to_builtins(run.failure)
    await writer.emit(ev.RUN_COMPLETED, payload)


async def _execute_steps(
    deps: WorkerDeps, run: Run, writer: StreamWriter
) -> tuple[int | None, Failure | None]:
    """Run each step in order; the first failing step stops the run. Returns (exit code, failure)."""
    settings = deps.settings
    run_dir = deps.store.run_dir(run.id)
    run_timeout_s = run.plan.timeout_s or settings.default_run_timeout_s
    run_deadline = time.monotonic() + run_timeout_s
    exit_code: int | None = 0
    for index, step in enumerate(run.plan.steps):
        remaining_s = run_deadline - time.monotonic()
        step_limit_s = min(step.timeout_s or remaining_s, remaining_s)
        await writer.emit(ev.RUN_STEP_STARTED, {"step": step.name, "index": index})
        outcome = await run_step(
            step.script,
            cwd=run_dir / "work",
            env=step_environment(run, step, run_dir),
            timeout_s=max(step_limit_s, 0.0),
            grace_s=settings.kill_grace_s,
            max_line_bytes=settings.console_line_max_bytes,
            on_lines=_StepSink(writer, step.name),
        )
        exit_code = outcome.exit_code
        status = "timed_out" if outcome.timed_out else ("succeeded" if exit_code == 0 else "failed")
        await writer.emit(
            ev.RUN_STEP_COMPLETED,
            {
                "step": step.name,
                "index": index,
                "status": status,
                "exit_code": exit_code,
                "duration_ms": round(outcome.duration_s * 1000),
            },
        )
        if outcome.timed_out:
            by_step = step.timeout_s is not None and step.timeout_s <= remaining_s
            limit = (
                f"its timeout of {step.timeout_s:g} s"
                if by_step
                else f"the run's timeout of {run_timeout_s:g} s"
            )
            message = f"step {step.name!r} exceeded {limit}"
            return None, Failure(stage="step", code="timeout", message=message, step=step.name)
        if exit_code != 0:
            message = f"step {step.name!r} exited with code {exit_code}"
            return exit_code, Failure(stage="step", code="exit_nonzero", message=message, step=step.name)
    return exit_code, None
