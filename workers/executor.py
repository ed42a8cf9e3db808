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
from ade import keys
from ade.artifacts import ArtifactStore, safe_input_name
from ade.dispatcher import EventSpec, StreamWriter
from ade.errors import AdeError, NotFound
from ade.models import TERMINAL_RUN_STATUSES, Failure, Run, Step, plain_environment, secret_values, utcnow
from ade.runs import prepare_run_dir, run_writer
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
    artifacts: ArtifactStore
    name: str
    cancels: CancelSignals


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


class _Cancellation:
    """Announces a run's cancel (`run.cancel_requested`) once, whoever notices it first."""

    def __init__(self, deps: WorkerDeps, run: Run, writer: StreamWriter, event: asyncio.Event) -> None:
        self._deps, self._run, self._writer, self.event = deps, run, writer, event
        self.announced = False

    async def announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        raw = await self._deps.redis.get(keys.run_cancel(self._run.id))
        requested_by = raw.decode() if raw else None
        self._run.cancel_requested_by = requested_by
        await self._writer.emit(ev.RUN_CANCEL_REQUESTED, {"requested_by": requested_by})


async def execute_run(deps: WorkerDeps, run_id: str) -> None:
    settings, store = deps.settings, deps.store
    try:
        run = await store.get_run(run_id)
    except NotFound:
        log.error("run %s vanished before it started", run_id)
        return
    if run.status in TERMINAL_RUN_STATUSES:
        return
    secrets = secret_values(run.plan.environment)
    for step in run.plan.steps:
        secrets += secret_values(step.environment)
    cancel_event = deps.cancels.register(run.id)
    try:
        async with run_writer(settings, deps.redis, run, redact=secrets) as writer:
            run = await store.get_run(run_id)  # under the lease: a cancel of the queued run may have won
            if run.status in TERMINAL_RUN_STATUSES:
                return
            if await deps.redis.exists(keys.run_cancel(run.id)):
                cancel_event.set()
            cancellation = _Cancellation(deps, run, writer, cancel_event)
            await _execute(deps, run, writer, cancellation)
    finally:
        deps.cancels.unregister(run_id)


async def _execute(deps: WorkerDeps, run: Run, writer: StreamWriter, cancellation: _Cancellation) -> None:
    store = deps.store
    prepare_run_dir(store.run_dir(run.id))
    run.status, run.started_at, run.worker = "running", utcnow(), deps.name
    await writer.emit(ev.RUN_STARTED, {"status": "running", "attempt": run.attempt, "worker": deps.name})
    await store.put_run(run)
    started = time.monotonic()
    try:
        run.exit_code, run.failure = await _place_inputs(deps, run)
        if run.failure is None:
            run.exit_code, run.failure = await _execute_steps(deps, run, writer, cancellation)
    except asyncio.CancelledError:
        run.exit_code, run.failure = (
            None,
            Failure(stage="run", code="worker_lost", message="the worker shut down during the run"),
        )
        await asyncio.shield(_complete(store, writer, run, started, cancelled=False))
        raise
    except Exception as exc:
        log.exception("run %s failed inside the worker", run.id)
        run.exit_code = None
        run.failure = Failure(stage="run", code="internal_error", message=f"{type(exc).__name__}: {exc}")
    await _complete(store, writer, run, started, cancelled=cancellation.announced)


async def _place_inputs(deps: WorkerDeps, run: Run) -> tuple[int | None, Failure | None]:
    """Copy the run's input artifacts into `inputs/` before the first step."""
    inputs_dir = deps.store.run_dir(run.id) / "inputs"
    for item in run.input_artifacts:
        try:
            await deps.artifacts.copy_into(
                run.workspace_id, item.key, inputs_dir / safe_input_name(item.name)
            )
        except AdeError as exc:
            message = f"input {item.name!r} ({item.key}): {exc.message}"
            return None, Failure(stage="inputs", code="input_unavailable", message=message)
    return 0, None


async def _complete(store: Store, writer: StreamWriter, run: Run, started: float, *, cancelled: bool) -> None:
    if cancelled:
        run.status, run.failure, run.exit_code = "cancelled", None, None
    else:
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
    if cancelled:
        payload["cancelled_by"] = run.cancel_requested_by
    await writer.emit(ev.RUN_COMPLETED, payload)


async def _execute_steps(
    deps: WorkerDeps, run: Run, writer: StreamWriter, cancellation: _Cancellation
) -> tuple[int | None, Failure | None]:
    """Run each step in order; the first failing step stops the run. Returns (exit code, failure)."""
    settings = deps.settings
    run_dir = deps.store.run_dir(run.id)
    run_timeout_s = run.plan.timeout_s or settings.default_run_timeout_s
    run_deadline = time.monotonic() + run_timeout_s
    exit_code: int | None = 0
    for index, step in enumerate(run.plan.steps):
        if cancellation.event.is_set():
            await cancellation.announce()
            return None, None
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
            cancel=cancellation.event,
            on_cancel=cancellation.announce,
        )
        exit_code = outcome.exit_code
        if outcome.cancelled:
            status = "cancelled"
        elif outcome.timed_out:
            status = "timed_out"
        else:
            status = "succeeded" if exit_code == 0 else "failed"
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
        if outcome.cancelled:
            return None, None
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
