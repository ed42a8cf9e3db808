"""Views derived from a stream's log: a run's summary and its console lines.

A summary folds every event of the log once; the fold is kept per API process (a small LRU keyed by
stream) with the log offset it reached, so asking again only reads what was appended since.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ade.core.models import Failure, Step, StepState, StepStatus, When
from ade.events import eventlog, payloads
from ade.events.envelope import EVENT_DECODER, Event
from ade.events.payloads import ConsoleLine as ConsoleLinePayload

_CACHE_STREAMS = 256
_PAGE_EVENTS = 5000


class StepSummary(msgspec.Struct, kw_only=True):
    name: str
    status: StepStatus
    exit_code: int | None = None
    duration_ms: int | None = None
    failure: Failure | None = None
    skipped_reason: str | None = None
    depends_on: list[str] = msgspec.field(default_factory=list)  # as configured: none means "in order"
    when: When = "on_success"
    reused_from: str | None = None  # a failed-only re-run kept it from that run (it did not run here)
    outputs_count: int = 0  # files it added to the run's outputs
    step_id: str | None = (
        None  # `<run_id>.<index>`: its id in the build server's runner API (README "Step mode")
    )

    @classmethod
    def of(cls, state: StepState, step: Step | None = None, step_id: str | None = None) -> StepSummary:
        duration_ms = None
        if state.started_at and state.completed_at:
            duration_ms = round((state.completed_at - state.started_at).total_seconds() * 1000)
        return cls(
            name=state.name,
            status=state.status,
            exit_code=state.exit_code,
            duration_ms=duration_ms,
            failure=state.failure,
            skipped_reason=state.skipped_reason,
            depends_on=list(step.depends_on) if step else [],
            when=step.when if step else "on_success",
            reused_from=state.reused_from,
            outputs_count=len(state.outputs),
            step_id=step_id,
        )


class EventCounts(msgspec.Struct, kw_only=True):
    total: int
    by_type: dict[str, int]
    console_lines_by_stream: dict[str, int]


class RunSummary(msgspec.Struct, kw_only=True):
    run_id: str
    status: str
    attempt: int
    duration_ms: int | None
    exit_code: int | None
    failure: dict[str, Any] | None
    steps: list[StepSummary]
    events: EventCounts
    last_progress: dict[str, Any] | None
    summary: dict[str, Any] | None  # the payload of the last `engine.summary` a step emitted
    outputs_count: int


@dataclass
class _Fold:
    offset: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_stream: Counter[str] = field(default_factory=Counter)
    last_progress: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None

    def add(self, event: Event) -> None:
        """Counts, and the last progress and summary a step reported (steps' statuses are the record's)."""
        self.by_type[event.type] += 1
        payload = event.payload
        if event.type == ConsoleLinePayload.TYPE:
            self.by_stream[str(payload.get("stream"))] += 1
        elif event.type == "engine.progress":
            self.last_progress = payload
        elif event.type == "engine.summary":
            self.summary = payload


class Summaries:
    """Incremental folds of stream logs, bounded in number."""

    def __init__(self) -> None:
        self._folds: OrderedDict[Path, _Fold] = OrderedDict()

    def fold(self, log_path: Path) -> _Fold:
        fold = self._folds.pop(log_path, None) or _Fold()
        while (page := eventlog.read_lines(log_path, fold.offset, _PAGE_EVENTS)).lines:
            for line in page.lines:
                fold.add(EVENT_DECODER.decode(line))
            fold.offset = page.next_offset
        self._folds[log_path] = fold
        while len(self._folds) > _CACHE_STREAMS:
            self._folds.popitem(last=False)
        return fold

    def counts(self, fold: _Fold) -> EventCounts:
        return EventCounts(
            total=sum(fold.by_type.values()),
            by_type=dict(fold.by_type),
            console_lines_by_stream=dict(fold.by_stream),
        )


class ConsoleLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    sequence: int
    created_at: str
    stream: str
    step: str | None = None
    message: str
    truncated: bool = False


class ConsolePage(msgspec.Struct, kw_only=True):
    items: list[ConsoleLine]
    next_after_sequence: int


def console_line(event: Event) -> ConsoleLine | None:
    if event.type != ConsoleLinePayload.TYPE:
        return None
    line = payloads.read(event.payload, ConsoleLinePayload)
    return ConsoleLine(
        sequence=event.sequence,
        created_at=event.created_at.isoformat().replace("+00:00", "Z"),
        stream=line.stream,
        step=line.step,
        message=line.message,
        truncated=line.truncated,
    )


def console_page(log_path: Path, after_sequence: int, limit: int, stream: str | None) -> ConsolePage:
    """Up to `limit` console lines after `after_sequence` (optionally of one stream), scanning at most
    ten pages of events; `next_after_sequence` is where to continue."""
    offset = eventlog.offset_after(log_path, after_sequence)
    items: list[ConsoleLine] = []
    last = after_sequence
    for _ in range(10):
        page = eventlog.read_lines(log_path, offset, 1000)
        if not page.lines:
            break
        for line in page.lines:
            event = EVENT_DECODER.decode(line)
            last = event.sequence
            item = console_line(event)
            if item is not None and (stream is None or item.stream == stream):
                items.append(item)
                if len(items) == limit:
                    return ConsolePage(items=items, next_after_sequence=last)
        offset = page.next_offset
    return ConsolePage(items=items, next_after_sequence=last)
