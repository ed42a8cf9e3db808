"""Runs executed by runners, the API's side (README "Runners"; the runner's side is `ade.execution.remote`).

A runner never touches Redis or the data directory. It takes a run (`take_run`: the oldest offered run it
may execute, `ade.lifecycle.queue.claim_offer`), and reports what its engine does as *reports*: the events a
worker would write (`run.started`, `run.step.*`, `console.line`, `run.cache.*`, `engine.*`,
`run.completed`), in chunks. `apply_chunk` passes them through the run's dispatcher, under its lease
(whichever API process a chunk reaches): a status event goes through its transition
(`ade.lifecycle.transitions`, which updates the record), the others are written as they are. The stream is
the one a worker gives, with `source: runner`.

**Exactly once.** Each report has an id, which becomes the `event_id` of the (last) event it makes. The API
notes how many reports of the run it applied (`keys.runner_applied`: the count and the log's last sequence
then); a chunk starting before that count is applied from the count on, so a chunk sent again (a retry, a
late duplicate) changes nothing. If the API died between writing an event and noting it, the log's tail is
past the noted sequence: its event id names the last report applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import msgspec
from redis.asyncio import Redis

from ade.core import keys, paths
from ade.core.errors import Conflict, Invalid, NotFound, TooLarge
from ade.core.models import BUILD_IMAGE, TERMINAL_RUN_STATUSES, Run, secret_values
from ade.core.runner_messages import Assignment, Chunk, ChunkAnswer, InputFile, Report, is_event_id
from ade.core.settings import Settings
from ade.events import eventlog
from ade.events.payloads import (
    CacheRestored,
    CacheSaved,
    ConsoleLine,
    RunCancelRequested,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepSkipped,
    StepStarted,
)
from ade.events.writer import EventSpec, StreamWriter
from ade.lifecycle import queue, transitions
from ade.lifecycle.runs import run_writer
from ade.lifecycle.transitions import Recorder, steps_of
from ade.records.artifacts import safe_input_name
from ade.records.images import resolve_image
from ade.records.outputs import outputs_size
from ade.records.store import Store

APPLIED_TTL_S = 7 * 24 * 3600  # a finished run's count outlives any retry of its last chunk
_PLAIN = {"console.line": ConsoleLine, "run.cache.restored": CacheRestored, "run.cache.saved": CacheSaved}
_STATUS = {
    "run.started": RunStarted,
    "run.step.started": StepStarted,
    "run.step.completed": StepCompleted,
    "run.step.skipped": StepSkipped,
    "run.cancel_requested": RunCancelRequested,
    "run.completed": RunCompleted,
}


class RunnerIdentity(Protocol):
    """What this module needs of a registered runner (`ade.records.runners`)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


def secrets_of(run: Run) -> list[str]:
    found = secret_values(run.plan.environment)
    for step in run.plan.steps:
        found += secret_values(step.environment)
    return found


async def take_run(
    settings: Settings, store: Store, runner: RunnerIdentity, workspace_id: str | None, labels: set[str]
) -> Assignment | None:
    """The oldest offered run this runner may execute, now its own; None if there is none now."""
    redis = store.redis
    while (run_id := await queue.claim_offer(store, settings, workspace_id, labels)) is not None:
        try:
            run = await store.get_run(run_id)
        except NotFound:
            continue
        taken = False
        if run.status == "queued":
            async with run_writer(settings, redis, run) as writer:
                run = await store.get_run(run_id)  # under the lease: a cancel may have won
                if run.status == "queued":
                    run.runner_id = runner.id
                    await store.put_run(run, durability="all_or_nothing")
                    async with redis.pipeline(transaction=True) as pipe:
                        pipe.set(keys.runner_applied(run.id), f"0 {writer.last_sequence}", ex=APPLIED_TTL_S)
                        pipe.set(keys.runner_run_alive(run.id), runner.id, ex=_alive_s(settings))
                        await pipe.execute()
                    taken = True
        if not taken:
            await queue.give_back(redis, run.id, run.workspace_id)
            continue
        return Assignment(
            run=run,
            images=await _images_of(store, run),
            inputs=[
                InputFile(name=safe_input_name(item.name), index=index)
                for index, item in enumerate(run.input_artifacts)
            ],
            heartbeat_s=heartbeat_s(settings),
            lost_after_s=settings.runner_lost_after_s,
        )
    return None


def heartbeat_s(settings: Settings) -> float:
    """How often a runner beats: often enough that a cancel reaches it within half a second, and several
    beats fit in ADE_RUNNER_LOST_AFTER_S."""
    return min(0.5, settings.runner_lost_after_s / 4)


def _alive_s(settings: Settings) -> int:
    return max(1, round(settings.runner_lost_after_s))


async def _images_of(store: Store, run: Run) -> dict[str, str]:
    """slug → image reference for the images the run's steps name (a slug that names nothing is left out:
    the runner's engine fails that step `image_unavailable`, as a worker's does)."""
    images: dict[str, str] = {}
    for step in run.plan.steps:
        if step.image is None or step.image == BUILD_IMAGE or step.image in images:
            continue
        with contextlib.suppress(NotFound):
            images[step.image] = await resolve_image(store, run.workspace_id, step.image)
    return images


async def run_of(store: Store, runner: RunnerIdentity, run_id: str) -> Run:
    """A run this runner took; any other (another runner's, never taken, unknown) is not found."""
    try:
        run = await store.get_run(run_id)
    except NotFound:
        run = None
    if run is None or run.runner_id != runner.id:
        raise NotFound(f"run {run_id!r} is not one this runner took", code="run_not_found")
    return run


async def keep_alive(settings: Settings, redis: Redis, runner: RunnerIdentity, run_ids: list[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for run_id in run_ids:
            pipe.set(keys.runner_run_alive(run_id), runner.id, ex=_alive_s(settings))
        await pipe.execute()


async def apply_chunk(
    settings: Settings, store: Store, runner: RunnerIdentity, run_id: str, chunk: Chunk
) -> ChunkAnswer:
    """Apply a chunk's reports not applied yet, in order, under the run's lease (see the module's doc). A
    chunk with a report that is not allowed changes nothing (`Invalid`)."""
    redis = store.redis
    run = await run_of(store, runner, run_id)
    async with run_writer(settings, redis, run, redact=secrets_of(run)) as writer:
        run = await store.get_run(run_id)
        applied = await _applied(redis, writer, run_id, chunk)
        if chunk.offset > applied:
            raise Conflict(
                f"this chunk starts at report {chunk.offset}, but only {applied} were applied: send "
                f"from {applied}",
                code="chunk_gap",
                details=[{"applied": applied}],
            )
        todo = chunk.reports[applied - chunk.offset :]
        if todo and run.status in TERMINAL_RUN_STATUSES:
            raise Conflict(f"run {run.id!r} already ended ({run.status})", code="run_finished")
        checked = [_checked(run, report) for report in todo]
        rec = Recorder(store, writer, "runner")
        start = 0
        while start < len(todo):
            if (apply := checked[start]) is not None:
                with writer.stamping(todo[start].id):
                    await apply(rec, run, runner)
                end = start + 1
            else:
                end = start
                while end < len(todo) and checked[end] is None:
                    end += 1
                group = todo[start:end]
                specs: list[EventSpec] = [(r.type, r.payload, _source(r)) for r in group]
                await writer.emit_many(specs, event_ids=[r.id for r in group])
            applied += end - start
            await redis.set(
                keys.runner_applied(run_id), f"{applied} {writer.last_sequence}", ex=APPLIED_TTL_S
            )
            start = end
    if run.status in TERMINAL_RUN_STATUSES:
        await redis.delete(keys.runner_run_alive(run_id))
    else:
        await keep_alive(settings, redis, runner, [run_id])
    return ChunkAnswer(applied=applied, cancel_requested=bool(await redis.exists(keys.run_cancel(run_id))))


async def _applied(redis: Redis, writer: StreamWriter, run_id: str, chunk: Chunk) -> int:
    raw = await redis.get(keys.runner_applied(run_id))
    count, noted_sequence = (int(part) for part in raw.decode().split()) if raw else (0, 0)
    if writer.last_sequence > noted_sequence:  # written but not noted (the API died in between)?
        tail_id = await asyncio.to_thread(eventlog.tail_event_id, writer.stream.log_path)
        for position, report in enumerate(chunk.reports):
            if report.id == tail_id:
                count = max(count, chunk.offset + position + 1)
    return count


_CHUNK_DECODER = msgspec.json.Decoder(Chunk)
MAX_ENGINE_PAYLOAD_DEPTH = 32  # as `ade.execution.console.MAX_STEP_EVENT_DEPTH` for a worker's steps


def decode_chunk(body: bytes) -> Chunk:
    """A chunk's body, typed; `Invalid` (400) for anything else, a body nested too deep included."""
    try:
        return _CHUNK_DECODER.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise Invalid(f"not a chunk of reports: {exc}", code="bad_chunk") from None
    except RecursionError:
        raise Invalid("the chunk nests too deeply", code="too_deep") from None


def _depth(value: Any, limit: int) -> int:
    """How deeply `value` nests (lists and dicts), counted up to `limit + 1`."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def _source(report: Report) -> Any:
    return "engine" if report.type.startswith("engine.") else "runner"


Apply = Callable[[Recorder, Run, RunnerIdentity], Any]


def _checked(run: Run, report: Report) -> Apply | None:
    """Check a report (`Invalid` if it may not be applied); its transition, or None for a plain event."""
    where = [{"report": report.id, "type": report.type}]
    if not is_event_id(report.id):
        raise Invalid("a report's id is `evt_` and a ULID", code="bad_report", details=where)
    if report.type.startswith("engine."):
        if report.source != "engine":
            raise Invalid("an engine.* report must have source engine", code="bad_report", details=where)
        if _depth(report.payload, MAX_ENGINE_PAYLOAD_DEPTH) > MAX_ENGINE_PAYLOAD_DEPTH:
            raise Invalid("an engine event nests too deeply", code="too_deep", details=where)
        return None
    if report.source != "runner":
        raise Invalid(f"{report.type} is not an engine event", code="bad_report", details=where)
    cls = _PLAIN.get(report.type) or _STATUS.get(report.type)
    if cls is None:
        raise Invalid(f"a runner may not report {report.type!r}", code="report_not_allowed", details=where)
    try:
        payload = msgspec.convert(report.payload, cls)
    except msgspec.ValidationError as exc:
        raise Invalid(f"{report.type}: {exc}", code="bad_report", details=where) from None
    if cls in _PLAIN.values():
        return None
    return _transition(run, payload, where)


def _step_index(run: Run, step: str, index: int, where: list[dict[str, Any]]) -> int:
    if not 0 <= index < len(run.plan.steps) or run.plan.steps[index].name != step:
        raise Invalid(f"the run has no step {step!r} at index {index}", code="bad_report", details=where)
    return index


def _transition(run: Run, payload: Any, where: list[dict[str, Any]]) -> Apply:
    if isinstance(payload, RunStarted):

        async def start(rec: Recorder, run: Run, runner: RunnerIdentity) -> None:
            if run.status != "queued":
                raise Conflict(f"run {run.id!r} is {run.status} already", code="bad_report", details=where)
            await transitions.start_run(rec, run, f"runner {runner.name} ({runner.id})")

        return start
    if isinstance(payload, StepStarted):
        index = _step_index(run, payload.step, payload.index, where)

        async def start_step(rec: Recorder, run: Run, _: RunnerIdentity) -> None:
            _require_state(run, index, "pending", where)
            await transitions.start_step(rec, run, index)

        return start_step
    if isinstance(payload, StepCompleted):
        index = _step_index(run, payload.step, payload.index, where)
        completed = payload

        async def finish_step(rec: Recorder, run: Run, _: RunnerIdentity) -> None:
            _require_state(run, index, "running", where, also_pending=completed.status != "succeeded")
            outputs_dir = paths.run_dir(rec.store.data_dir, run.id).outputs
            for output in completed.outputs:
                if not await asyncio.to_thread(_is_file, outputs_dir, output.path):
                    raise Conflict(
                        f"output {output.path!r} was not uploaded", code="output_missing", details=where
                    )
            await transitions.finish_step(
                rec,
                run,
                index,
                completed.status,
                exit_code=completed.exit_code,
                failure=completed.failure,
                outputs=completed.outputs,
            )

        return finish_step
    if isinstance(payload, StepSkipped):
        index = _step_index(run, payload.step, payload.index, where)
        reason = payload.reason

        async def skip(rec: Recorder, run: Run, _: RunnerIdentity) -> None:
            _require_state(run, index, "pending", where)
            await transitions.skip_step(rec, run, index, reason)

        return skip
    if isinstance(payload, RunCancelRequested):

        async def cancel_requested(rec: Recorder, run: Run, _: RunnerIdentity) -> None:
            raw = await rec.store.redis.get(keys.run_cancel(run.id))
            await transitions.request_run_cancel(rec, run, raw.decode() if raw else None)

        return cancel_requested
    assert isinstance(payload, RunCompleted)
    ended = payload

    async def finish(rec: Recorder, run: Run, _: RunnerIdentity) -> None:
        await transitions.finish_run(rec, run, ended.status, exit_code=ended.exit_code, failure=ended.failure)

    return finish


def _require_state(
    run: Run, index: int, status: str, where: list[dict[str, Any]], *, also_pending: bool = False
) -> None:
    state = steps_of(run)[index]
    if run.status != "running" or not (
        state.status == status or (also_pending and state.status == "pending")
    ):
        raise Conflict(
            f"step {state.name!r} is {state.status} (the run is {run.status}): this report does not fit",
            code="bad_report",
            details=where,
        )


def _is_file(outputs_dir: Path, relative: str) -> bool:
    try:
        fd = os.open(outputs_dir / relative, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    os.close(fd)
    return True


def output_parts(path: str) -> list[str]:
    """An output's path as components, refused (`Invalid`) if it could leave the outputs directory."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts or "\0" in path or "\\" in path or len(path.encode()) > 1024:
        raise Invalid(
            f"output path {path!r} is not a relative path inside the outputs", code="bad_output_path"
        )
    return parts


def write_output(settings: Settings, run_id: str, parts: list[str], chunks: list[bytes]) -> int:
    """Write an uploaded output into the run's outputs directory (no link followed, nothing outside it);
    over ADE_MAX_OUTPUT_BYTES with what is there already: `TooLarge`, and nothing written."""
    outputs_dir = paths.run_dir(settings.data_dir, run_id).outputs
    size = sum(len(chunk) for chunk in chunks)
    existing, _ = outputs_size(outputs_dir, root=settings.data_dir)
    if settings.max_output_bytes and existing + size > settings.max_output_bytes:
        raise TooLarge(
            f"the run's outputs would exceed {settings.max_output_bytes} bytes (ADE_MAX_OUTPUT_BYTES)",
            code="outputs_too_large",
        )
    directory_fd = os.open(outputs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=directory_fd)
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory_fd)
            os.close(directory_fd)
            directory_fd = next_fd
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        file_fd = os.open(parts[-1], flags, 0o644, dir_fd=directory_fd)
        with os.fdopen(file_fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
    finally:
        os.close(directory_fd)
    return size
