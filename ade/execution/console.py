"""A step's output as events: console lines (scope `run` or `build`) and validated engine events, within
the stream's console budget."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ade.core.jsondepth import json_depth
from ade.events import envelope as ev
from ade.events.payloads import ConsoleLine
from ade.events.writer import Emitter, EventSpec
from ade.execution.process import Line

ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
MAX_STEP_EVENT_DEPTH = 32  # levels of nested objects/arrays in an ADE_EVENTS_FD line, the object itself is 1
_engine_decoder = msgspec.json.Decoder(dict[str, Any])
# What a console line or step event costs the budget besides its own bytes: about what its envelope adds to
# the log (type, sequence, ids, time), so the budget bounds the log, however short the lines.
EVENT_OVERHEAD_BYTES = 360


def engine_event(line: bytes, step: str, scope: Literal["run", "build"] = "run") -> EventSpec:
    """Validate one line a step wrote to ADE_EVENTS_FD and re-envelope it as `engine.<name>`.

    A step can never forge lifecycle events or choose its sequence: reserved names are refused and the
    dispatcher assigns the envelope. A line nested deeper than MAX_STEP_EVENT_DEPTH is refused before it is
    decoded: stored, it would break every later read of the stream's log.
    """
    try:
        if json_depth(line) > MAX_STEP_EVENT_DEPTH:
            raise ValueError(f"nested deeper than {MAX_STEP_EVENT_DEPTH} levels")
        body = _engine_decoder.decode(line)
        name = body.pop("type")
        if not isinstance(name, str):
            raise ValueError("`type` must be a string")
        name = name.removeprefix(ev.ENGINE_PREFIX)
        if not ENGINE_NAME.match(name) or len(name) > 64 or name.startswith(ev.RESERVED_PREFIXES):
            raise ValueError(f"`type` {name!r} is not an allowed engine event name")
    except (msgspec.DecodeError, KeyError, ValueError) as exc:
        reason = "expected a JSON object with a `type`" if isinstance(exc, KeyError) else str(exc)
        return _refused(step, scope, reason)
    body.pop("sequence", None)
    return ev.ENGINE_PREFIX + name, {**body, "step": step}, "engine"


def _refused(step: str, scope: Literal["run", "build"], reason: str) -> EventSpec:
    message = f"[ade] ignored an event written to ADE_EVENTS_FD: {reason}"
    return ConsoleLine.TYPE, ConsoleLine(scope=scope, stream="stderr", step=step, message=message), "worker"


@dataclass(slots=True)
class ConsoleBudget:
    """The bytes of console lines and step events one stream (a run's, a build's) may still add to its log,
    shared by all its steps (ADE_MAX_CONSOLE_BYTES_PER_RUN). Past it, output is dropped and one line says so;
    the run goes on."""

    limit_bytes: int
    used_bytes: int = 0
    exhausted: bool = False

    def take(self, size: int) -> bool | None:
        """True: within the budget. None: this is the first item past it (say so once). False: dropped."""
        if self.exhausted:
            return False
        if self.limit_bytes and self.used_bytes + size + EVENT_OVERHEAD_BYTES > self.limit_bytes:
            self.exhausted = True
            return None
        self.used_bytes += size + EVENT_OVERHEAD_BYTES
        return True


_budgets: weakref.WeakKeyDictionary[Emitter, ConsoleBudget] = weakref.WeakKeyDictionary()


def budget_of(writer: Emitter, limit_bytes: int) -> ConsoleBudget:
    """The console budget of the stream `writer` writes: one per writer, so one per run or build, shared
    by its steps (the first step's call sets the limit)."""
    budget = _budgets.get(writer)
    if budget is None:
        budget = _budgets[writer] = ConsoleBudget(limit_bytes)
    return budget


class StepSink:
    """Turns a step's line batches into dispatcher batches.

    An `engine.*` name holding a secret value is refused like any bad event line (the dispatcher would
    mask it, but a masked name is no name). Console lines and step events draw on the run's (or build's)
    ConsoleBudget, shared by all its steps.
    """

    def __init__(
        self, writer: Emitter, step: str, scope: Literal["run", "build"], budget: ConsoleBudget
    ) -> None:
        self._writer = writer
        self._step = step
        self._scope = scope
        self._budget = budget

    async def __call__(self, pipe: str, lines: list[Line]) -> None:
        step, scope, budget = self._step, self._scope, self._budget
        specs: list[EventSpec] = []
        for text, truncated in lines:
            if pipe == "events" and not text.strip():
                continue
            allowed = budget.take(len(text))
            if allowed is None:
                specs.append(self._limit_reached())
            if not allowed:
                continue
            if pipe == "events":
                spec = engine_event(text, step, scope)
                if spec[2] == "engine" and self._writer.reveals(spec[0]):
                    spec = _refused(step, scope, "its `type` contains a secret value")
                specs.append(spec)
                continue
            message = text.decode("utf-8", "replace")
            line = ConsoleLine(scope=scope, stream=pipe, step=step, message=message, truncated=truncated)
            specs.append((ConsoleLine.TYPE, line, "worker"))
        if specs:
            await self._writer.emit_many(specs)

    def _limit_reached(self) -> EventSpec:
        limit = self._budget.limit_bytes
        message = (
            f"[ade] this {self._scope} reached its console limit of {limit} bytes (limits.console_bytes, "
            f"at most ADE_MAX_CONSOLE_BYTES_PER_RUN; each line or step event counts its bytes plus "
            f"{EVENT_OVERHEAD_BYTES}): further console lines and step events of this {self._scope} are "
            "dropped; it goes on running"
        )
        line = ConsoleLine(scope=self._scope, stream="stderr", step=self._step, message=message)
        return ConsoleLine.TYPE, line, "worker"
