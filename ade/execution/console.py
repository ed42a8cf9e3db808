"""A step's output as events: console lines (scope `run` or `build`) and validated engine events."""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ade.core.jsondepth import json_depth
from ade.events import envelope as ev
from ade.events.payloads import ConsoleLine
from ade.events.writer import EventSpec, StreamWriter
from ade.execution.process import Line

ENGINE_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
MAX_STEP_EVENT_DEPTH = 32  # levels of nested objects/arrays in an ADE_EVENTS_FD line, the object itself is 1
_engine_decoder = msgspec.json.Decoder(dict[str, Any])


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
        message = f"[ade] ignored an event written to ADE_EVENTS_FD: {reason}"
        return (
            ConsoleLine.TYPE,
            ConsoleLine(scope=scope, stream="stderr", step=step, message=message),
            "worker",
        )
    body.pop("sequence", None)
    return ev.ENGINE_PREFIX + name, {**body, "step": step}, "engine"


class StepSink:
    """Turns a step's line batches into dispatcher batches."""

    def __init__(self, writer: StreamWriter, step: str, scope: Literal["run", "build"]) -> None:
        self._writer = writer
        self._step = step
        self._scope = scope

    async def __call__(self, pipe: str, lines: list[Line]) -> None:
        step, scope = self._step, self._scope
        specs: list[EventSpec] = []
        for text, truncated in lines:
            if pipe == "events":
                if text.strip():
                    specs.append(engine_event(text, step, self._scope))
                continue
            message = text.decode("utf-8", "replace")
            line = ConsoleLine(scope=scope, stream=pipe, step=step, message=message, truncated=truncated)
            specs.append((ConsoleLine.TYPE, line, "worker"))
        await self._writer.emit_many(specs)
