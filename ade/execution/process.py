"""One step as a real subprocess, started by an executor (ade.execution.sandbox): its stdout, stderr and
ADE_EVENTS_FD pipes read chunk by chunk and split into lines, a deadline, and a kill at the end.

When the step's main process exits (or its deadline passes: SIGTERM, a grace period, then SIGKILL), the
executor kills everything the step started (its PID namespace, its container or its process group), so
no background process of a step outlives it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ade.execution.sandbox import Spawned

READ_CHUNK_BYTES = 64 * 1024
PUMP_DRAIN_TIMEOUT_S = 5.0

Line = tuple[bytes, bool]  # (line without newline, truncated)
LinesHandler = Callable[[str, list[Line]], Awaitable[None]]


class LineSplitter:
    """Splits a byte stream into lines; a line longer than `max_bytes` is cut there and marked truncated,
    the rest of it discarded up to its newline. A final line without a newline is kept."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._rest = b""
        self._discarding = False

    def feed(self, chunk: bytes) -> list[Line]:
        parts = (self._rest + chunk).split(b"\n")
        rest = parts.pop()
        if self._discarding and parts:
            parts.pop(0)  # the tail of an overlong line that was already cut
            self._discarding = False
        limit = self._max
        lines = [(part[:limit], True) if len(part) > limit else (part, False) for part in parts]
        if self._discarding:
            rest = b""
        elif len(rest) > limit:
            lines.append((rest[:limit], True))
            self._discarding = True
            rest = b""
        self._rest = rest
        return lines

    def finish(self) -> list[Line]:
        rest, self._rest = self._rest, b""
        return [(rest, False)] if rest and not self._discarding else []


@dataclass(slots=True)
class StepOutcome:
    exit_code: int | None  # None when the step was killed (deadline or cancel)
    timed_out: bool
    cancelled: bool
    duration_s: float
    oom_killed: bool = False  # a container's memory limit ended it


Spawn = Callable[[int], Awaitable[Spawned]]  # events write fd → the started step


class _PipeWait:
    """Since when a pump has been waiting for its pipe (None: it is handing lines on, or it is done). Once
    the step exited, only a pump that keeps *waiting for its pipe* is abandoned (a process that escaped the
    group holds it open); one that is slow to hand lines on (the dispatcher, or a runner's API, pushing
    back) is waited for, or its lines would be lost."""

    def __init__(self) -> None:
        self.since: float | None = None

    def stuck(self, now: float) -> bool:
        return self.since is not None and now - self.since > PUMP_DRAIN_TIMEOUT_S


async def _pump(
    reader: asyncio.StreamReader, name: str, max_bytes: int, on_lines: LinesHandler, wait: _PipeWait
) -> None:
    splitter = LineSplitter(max_bytes)
    while True:
        wait.since = time.monotonic()
        chunk = await reader.read(READ_CHUNK_BYTES)
        wait.since = None
        if not chunk:
            break
        lines = splitter.feed(chunk)
        if lines:
            await on_lines(name, lines)
    if tail := splitter.finish():
        await on_lines(name, tail)


async def _drain(pumps: asyncio.Future[Any], waits: list[_PipeWait]) -> None:
    """Wait for the pumps to read their pipes to the end; give up on those stuck on a pipe for
    PUMP_DRAIN_TIMEOUT_S (see `_PipeWait`)."""
    while not pumps.done():
        await asyncio.wait({pumps}, timeout=PUMP_DRAIN_TIMEOUT_S / 5)
        if not pumps.done() and any(wait.stuck(time.monotonic()) for wait in waits):
            pumps.cancel()  # a process that escaped the group still holds a pipe open
            return
    pumps.result()  # what handing lines on failed with (a log that cannot be written) is the caller's


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK_BYTES)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader, transport


async def run_step(
    spawn: Spawn,
    *,
    timeout_s: float,
    grace_s: float,
    max_line_bytes: int,
    on_lines: LinesHandler,
    cancel: asyncio.Event,
    on_cancel: Callable[[], Awaitable[None]],
    on_spawn: Callable[[int], Awaitable[None]] | None = None,
) -> StepOutcome:
    """Run a step started by `spawn` (an executor, ade.execution.sandbox); `on_lines` receives
    ("stdout" | "stderr" | "events", lines) batches in order per pipe.

    The step ends when its process exits, its deadline passes, or `cancel` is set (then `on_cancel` runs
    first); in the last two cases everything in it gets SIGTERM, then SIGKILL after `grace_s`. Whatever
    ended it, nothing it started is left running.
    """
    events_read_fd, events_write_fd = os.pipe()
    started = time.monotonic()
    try:
        step = await spawn(events_write_fd)
    except BaseException:
        os.close(events_read_fd)
        raise
    finally:
        os.close(events_write_fd)
    proc = step.proc
    if on_spawn is not None:
        await on_spawn(step.pgid)
    events_reader, events_transport = await _pipe_reader(events_read_fd)
    assert proc.stdout is not None and proc.stderr is not None
    waits = [_PipeWait(), _PipeWait(), _PipeWait()]
    pumps = asyncio.gather(
        _pump(proc.stdout, "stdout", max_line_bytes, on_lines, waits[0]),
        _pump(proc.stderr, "stderr", max_line_bytes, on_lines, waits[1]),
        _pump(events_reader, "events", max_line_bytes, on_lines, waits[2]),
    )
    # Read in every path: when the step is abandoned (worker shutdown) nobody awaits the pumps any more,
    # and an exception they ended with would be logged as "never retrieved".
    pumps.add_done_callback(lambda done: done.cancelled() or done.exception())
    timed_out = cancelled = False
    exited = asyncio.ensure_future(proc.wait())
    cancelled_wait = asyncio.ensure_future(cancel.wait())
    try:
        done, _ = await asyncio.wait(
            {exited, cancelled_wait}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        if exited not in done:
            cancelled = cancelled_wait in done
            timed_out = not cancelled
            if cancelled:
                await on_cancel()
            await step.terminate()
            try:
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(exited)
            except TimeoutError:
                pass
        await step.kill()  # leftovers of the step never outlive it
        await proc.wait()
        await _drain(pumps, waits)
    except BaseException:
        await asyncio.shield(step.kill())
        pumps.cancel()
        raise
    finally:
        cancelled_wait.cancel()
        events_transport.close()
    return StepOutcome(
        exit_code=None if timed_out or cancelled else proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        duration_s=time.monotonic() - started,
        oom_killed=step.oom_killed,
    )
