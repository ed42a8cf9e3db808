"""Once a step exited, its output is read to the end however slowly it is handed on (the dispatcher or a
runner's API pushing back); only a pump stuck *waiting on its pipe* is given up on after
PUMP_DRAIN_TIMEOUT_S (`ade.execution.process._drain`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ade.execution import process
from ade.execution.process import Line, run_step
from ade.execution.sandbox import Spawned

pytestmark = pytest.mark.anyio


def _spawner(script: str, cwd: Path) -> process.Spawn:
    async def spawn(events_fd: int) -> Spawned:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return Spawned(proc)

    return spawn


async def _run(script: str, tmp_path: Path, on_lines: process.LinesHandler) -> process.StepOutcome:
    async def never() -> None:
        return None

    return await run_step(
        _spawner(script, tmp_path),
        timeout_s=30,
        grace_s=1,
        max_line_bytes=1024,
        on_lines=on_lines,
        cancel=asyncio.Event(),
        on_cancel=never,
    )


async def test_a_slow_consumer_loses_no_line_after_the_step_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "PUMP_DRAIN_TIMEOUT_S", 0.2)
    seen: list[bytes] = []

    async def slow(pipe: str, lines: list[Line]) -> None:
        if pipe == "stdout":
            if not seen:
                await asyncio.sleep(1.0)  # the step (its output fits the pipe) exits meanwhile
            seen.extend(text for text, _ in lines)

    started = time.monotonic()
    outcome = await _run("seq 1 5000", tmp_path, slow)
    assert outcome.exit_code == 0
    assert seen == [str(i).encode() for i in range(1, 5001)]
    assert time.monotonic() - started >= 1.0  # five drain timeouts: it was waited for, not given up on
