"""A run on a runner: the workers' engine, with the API at the other end of HTTP (README "Runners").

The steps run exactly as on a worker — `ade.execution.scheduler` decides when, `execute_one_step` runs each
in its sandbox or image with its cache and limits, `collecting` gathers its outputs — in the runner's own
private directory. What differs is where things go: every event the engine makes becomes a *report*
(`RemoteWriter`), sent to the API in chunks; every status change is such a report too (`RemoteSteps`,
the scheduler's port), which the API applies through its transitions (`ade.lifecycle.remote`); inputs come
from the API and outputs go to it. The API's dispatcher sequences it all: the stream is a worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from ade.core import ids, paths
from ade.core.models import Failure, Run, Step, utcnow
from ade.core.runner_messages import MAX_CHUNK_REPORTS, Assignment, Chunk, ChunkAnswer, Report
from ade.core.settings import Settings
from ade.events.envelope import Source
from ade.events.masking import Masker
from ade.events.payloads import (
    Payload,
    RunCancelRequested,
    RunCompleted,
    RunEndStatus,
    RunStarted,
    StepStarted,
)
from ade.events.writer import EventSpec
from ade.execution import isolation, scheduler
from ade.execution.cache_transfer import CacheMirror
from ade.execution.executor import StepContext, execute_one_step, policy_of
from ade.execution.outputs import collecting
from ade.execution.sandbox import prepare_dirs
from ade.execution.scheduler import StepResult, StepSlot
from ade.lifecycle.remote import secrets_of
from ade.lifecycle.transitions import end_step_state, skip_step_state, steps_of

log = logging.getLogger(__name__)

Send = Callable[[str, Chunk], Awaitable[ChunkAnswer]]
STOP_REPORT_S = 10.0  # how long a stopping runner tries to report its runs' end
MAX_BUFFERED_REPORTS = 20_000
# A chunk waits this long for more reports unless it is full: fewer, larger requests (each costs the API a
# lease and a few Redis calls) for a small delay of what subscribers see live.
CHUNK_LINGER_S = 0.05  # reports not yet acknowledged; past it the engine waits (bounded memory)


class RemoteWriter:
    """The engine's `Emitter` on a runner: each event becomes a report, kept until the API acknowledges it
    and sent in order, in chunks of up to MAX_CHUNK_REPORTS (`send` retries until the API answers). A chunk
    is sent again from what the API says it applied, so nothing is lost or applied twice."""

    def __init__(self, run_id: str, send: Send, secrets: Sequence[str] = ()) -> None:
        self.run_id = run_id
        self._send = send
        self._masker = Masker(secrets)
        self._pending: deque[Report] = deque()  # not yet acknowledged, oldest first
        self._acknowledged = 0  # reports the API applied; the first pending one is number `_acknowledged`
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.cancel_requested = asyncio.Event()
        self._closing = False  # the run ended: send what is left at once

    async def emit(self, payload: Payload, source: Source = "runner") -> None:
        await self.emit_many([(payload.TYPE, payload, source)])

    async def emit_many(self, specs: Sequence[EventSpec]) -> None:
        while len(self._pending) >= MAX_BUFFERED_REPORTS:
            self._room.clear()
            await self._room.wait()
        for event_id, (type_, payload, source) in zip(ids.new_ids(ids.EVENT, len(specs)), specs, strict=True):
            body = payload if isinstance(payload, dict) else msgspec.to_builtins(payload)
            self._pending.append(
                Report(
                    id=event_id, type=type_, payload=body, source="engine" if source == "engine" else "runner"
                )
            )
        self._more.set()

    def reveals(self, text: str) -> bool:
        return self._masker.reveals(text)

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[RemoteWriter]:
        """Sends while open; on leaving, waits until everything emitted was acknowledged."""
        task = asyncio.create_task(self._send_forever(), name=f"reports:{self.run_id}")
        try:
            yield self
            self._closing = True
            while self._pending and not task.done():
                self._more.set()
                await asyncio.wait({task}, timeout=0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send_forever(self) -> None:
        while True:
            if not self._pending:
                self._more.clear()
                await self._more.wait()
                continue
            if len(self._pending) < MAX_CHUNK_REPORTS and not self._closing:
                await asyncio.sleep(CHUNK_LINGER_S)
            reports = [self._pending[i] for i in range(min(MAX_CHUNK_REPORTS, len(self._pending)))]
            answer = await self._send(self.run_id, Chunk(offset=self._acknowledged, reports=reports))
            done = max(0, min(answer.applied - self._acknowledged, len(self._pending)))
            for _ in range(done):
                self._pending.popleft()
            self._acknowledged += done
            if answer.cancel_requested:
                self.cancel_requested.set()
            self._room.set()


class RemoteSteps:
    """The scheduler's port on a runner: each status change kept in the runner's copy of the run (the
    output collection reads when steps ran) and reported; the API applies it through its transitions."""

    def __init__(self, run: Run, writer: RemoteWriter, announce: Callable[[], Awaitable[None]]) -> None:
        self._run, self._writer, self._announce = run, writer, announce

    async def keep_succeeded(self) -> list[int]:
        return []  # failed-only re-runs are executed whole on runners (README "Runners")

    async def start(self, index: int) -> None:
        state = steps_of(self._run)[index]
        state.status, state.started_at = "running", utcnow()
        await self._writer.emit(StepStarted(step=state.name, index=index))

    async def finish(self, index: int, result: StepResult) -> None:
        payload = end_step_state(
            self._run, index, result.status, result.exit_code, result.failure, result.outputs
        )
        await self._writer.emit(payload)

    async def skip(self, index: int, reason: str) -> None:
        await self._writer.emit(skip_step_state(self._run, index, reason))

    async def announce_cancel(self) -> None:
        await self._announce()


class RunnerFiles(CacheMirror, Protocol):
    """What a run on a runner reads from and writes to the API besides its reports (`workers.runner`):
    inputs, outputs, and step caches."""

    async def fetch_input(self, run_id: str, index: int, destination: Path) -> None: ...

    async def upload_output(self, run_id: str, path: str, source: Path) -> None: ...


async def execute_assignment(
    settings: Settings,
    assignment: Assignment,
    send: Send,
    files: RunnerFiles,
    cancel: asyncio.Event,
    runner_name: str,
) -> RunEndStatus:
    """Execute a run the API gave this runner, in `settings.data_dir`; its directory is removed after."""
    run = assignment.run
    run_dir = paths.run_dir(settings.data_dir, run.id)
    writer = RemoteWriter(run.id, send, secrets_of(run))
    announced = False

    async def announce() -> None:
        nonlocal announced
        if not announced:
            announced = True
            await writer.emit(RunCancelRequested())

    async def watch_cancel() -> None:
        await writer.cancel_requested.wait()
        cancel.set()

    try:
        async with writer.sending(), asyncio.TaskGroup() as tasks:
            watcher = tasks.create_task(watch_cancel())
            run_dir.create()
            prepare_dirs(settings, run_dir.work, run_dir.outputs)
            await writer.emit(RunStarted(attempt=run.attempt, worker=runner_name))
            run.status, run.started_at = "running", utcnow()
            exit_code: int | None = None
            try:
                failure = await _fetch_inputs(files, assignment, run_dir)
                if failure is None:
                    exit_code, failure = await _execute_steps(
                        settings, assignment, writer, files, cancel, announce
                    )
            except Exception as exc:  # the run still ends, and says why
                log.exception("run %s failed inside the runner", run.id)
                exit_code = None
                message = f"{type(exc).__name__}: {exc}"
                failure = Failure(stage="run", code="internal_error", message=message)
            status: RunEndStatus = "cancelled" if announced else "failed" if failure else "succeeded"
            await writer.emit(
                RunCompleted(status=status, exit_code=exit_code, failure=None if announced else failure)
            )
            watcher.cancel()
        return status
    except asyncio.CancelledError:  # the runner is stopping: say so, if the API can be told in time
        await asyncio.shield(_report_stop(writer))
        raise
    finally:
        await asyncio.to_thread(shutil.rmtree, run_dir.root, True)


async def _report_stop(writer: RemoteWriter) -> None:
    failure = Failure(stage="run", code="runner_lost", message="the runner shut down during the run")
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STOP_REPORT_S):
            await writer.emit(RunCompleted(status="failed", failure=failure))
            async with writer.sending():
                pass


async def _fetch_inputs(files: RunnerFiles, assignment: Assignment, run_dir: paths.RunDir) -> Failure | None:
    for item in assignment.inputs:
        destination = run_dir.inputs / item.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            await files.fetch_input(assignment.run.id, item.index, destination)
        except Exception as exc:
            message = f"input {item.name!r}: {exc}"
            return Failure(stage="inputs", code="input_unavailable", message=message)
    return None


def _image_of(assignment: Assignment, step: Step) -> tuple[str | None, Failure | None]:
    if step.image is None:
        return None, None
    if step.image in assignment.images:
        return assignment.images[step.image], None
    message = f"step {step.name!r}: image {step.image!r} names no docker image this workspace sees"
    return None, Failure(stage="step", code="image_unavailable", message=message, step=step.name)


async def _execute_steps(
    settings: Settings,
    assignment: Assignment,
    writer: RemoteWriter,
    files: RunnerFiles,
    cancel: asyncio.Event,
    announce: Callable[[], Awaitable[None]],
) -> tuple[int | None, Failure | None]:
    run = assignment.run
    run_dir = paths.run_dir(settings.data_dir, run.id)
    context = StepContext(
        settings=settings,
        run=run,
        writer=writer,
        run_dir=run_dir,
        binds=isolation.run_binds(run_dir),
        build_env={},
        cache_mirror=files,
    )

    async def execute_step(slot: StepSlot) -> StepResult:
        image, failure = _image_of(assignment, run.plan.steps[slot.index])
        return await execute_one_step(context, slot, image, failure)

    collected = collecting(settings, run, writer, execute_step)

    async def execute_and_upload(slot: StepSlot) -> StepResult:
        result = await collected(slot)
        for output in result.outputs:  # before the step's end is reported: the API checks they are there
            await files.upload_output(run.id, output.path, run_dir.outputs / output.path)
        return result

    port = RemoteSteps(run, writer, announce)
    return await scheduler.execute(run.plan.steps, port, execute_and_upload, cancel, policy_of(settings, run))
