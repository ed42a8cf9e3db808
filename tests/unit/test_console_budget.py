"""A stream's console budget: shared by its steps, one marker line past it, nothing after; and step events
whose name holds a secret refused."""

from __future__ import annotations

from typing import Any, cast

import pytest

from ade.events.masking import Masker
from ade.events.payloads import ConsoleLine
from ade.events.writer import EventSpec, StreamWriter
from ade.execution.console import EVENT_OVERHEAD_BYTES, ConsoleBudget, StepSink

pytestmark = pytest.mark.anyio


class FakeWriter:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self.specs: list[EventSpec] = []
        self._masker = Masker(secrets or [])

    async def emit_many(self, specs: list[EventSpec]) -> list[Any]:
        self.specs += specs
        return []

    def reveals(self, text: str) -> bool:
        return self._masker.reveals(text)


def messages(writer: FakeWriter) -> list[str]:
    return [spec[1].message for spec in writer.specs if isinstance(spec[1], ConsoleLine)]


async def test_past_the_budget_lines_are_dropped_after_one_marker_across_steps() -> None:
    writer = FakeWriter()
    limit = 3 * (EVENT_OVERHEAD_BYTES + 3)
    budget = ConsoleBudget(limit)  # one per run, shared by its steps
    first = StepSink(cast(StreamWriter, writer), "one", "run", budget)
    await first("stdout", [(b"abc", False), (b"def", False)])
    second = StepSink(cast(StreamWriter, writer), "two", "run", budget)
    await second("stderr", [(b"ghi", False), (b"jkl", False), (b"mno", False)])
    await second("events", [(b'{"type": "progress"}', False)])
    await second("stdout", [(b"pqr", False)])
    lines = messages(writer)
    assert lines[:3] == ["abc", "def", "ghi"]
    assert len(lines) == 4 and "ADE_MAX_CONSOLE_BYTES_PER_RUN" in lines[3] and str(limit) in lines[3]
    assert writer.specs[3][1].stream == "stderr"  # type: ignore[union-attr]


async def test_an_engine_event_named_with_a_secret_is_refused() -> None:
    writer = FakeWriter(["hunter22"])
    sink = StepSink(cast(StreamWriter, writer), "s", "run", ConsoleBudget(10**6))
    await sink("events", [(b'{"type": "hunter22"}', False), (b'{"type": "ok", "v": 1}', False)])
    assert writer.specs[0][0] == "console.line" and "secret" in messages(writer)[0]
    assert "hunter22" not in messages(writer)[0]
    assert writer.specs[1][0] == "engine.ok"
