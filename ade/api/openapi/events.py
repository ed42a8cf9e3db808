"""The event envelope in the document: `Event` is one of a variant per catalog entry (its `type` a
constant, its `payload` that entry's typed struct) or an `engine.*` event (a step's own object), told
apart by `type`; and the frames of the SSE stream that carries them."""

from __future__ import annotations

import copy
from typing import Any

from ade.api.openapi.schemas import COMPONENTS, Definitions, Refs
from ade.events.envelope import ENGINE_PREFIX, Event
from ade.events.payloads import CATALOG

EVENT_TYPES: list[Any] = [Event, *CATALOG.values()]

SSE_FRAMES = """\
A `text/event-stream` (Server-Sent Events), replayed from `after_sequence` (or `Last-Event-ID`) and then
live, with no gap and no duplicate. Frames:

- `retry: <ms>` once, first: how long EventSource waits before reconnecting;
- per event: `id: <sequence>`, `event: ade.event`, `data: <an Event, as JSON on one line>`;
- `: keepalive` comments while nothing happens (and a comment before closing when the key behind the
  stream is revoked or expires);
- after the stream's last event (`run.completed` / `build.completed`): `event: end`, `data: {}`, and the
  connection closes. (A stream cut because its API process is stopping ends without `end`: resume
  elsewhere.)

Reconnect with `Last-Event-ID: <the last id seen>` to resume after it."""

SSE_EXAMPLE = (
    "retry: 2000\n\n"
    "id: 1\nevent: ade.event\n"
    'data: {"type":"run.queued","sequence":1,"event_id":"evt_01JD0000000000000000000000",'
    '"created_at":"2026-11-22T20:00:00.123456Z","source":"api","workspace_id":"ws_01JD0000000000000000000000",'
    '"run_id":"run_01JD0000000000000000000000","payload":{"status":"queued","attempt":1,"rerun_of":null}}\n\n'
    ": keepalive\n\n"
    "event: end\ndata: {}\n\n"
)

SSE_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": SSE_FRAMES
    + f"\n\nEach `data:` of an `ade.event` frame is an `Event` ({COMPONENTS}Event).",
}

NDJSON_DESCRIPTION = "NDJSON: one `Event` per line, in sequence order, each line ending with a newline."


def event_variants(definitions: Definitions, refs: Refs) -> None:
    """Turn msgspec's `Event` (whose payload is `Any`) into a oneOf of typed variants, discriminated by
    `type`; every catalog payload is a named component."""
    event_name = refs[Event]["$ref"].removeprefix(COMPONENTS)
    envelope = definitions[event_name]
    envelope_properties: dict[str, Any] = envelope["properties"]
    variants: list[dict[str, str]] = []
    mapping: dict[str, str] = {}
    for event_type, cls in CATALOG.items():
        name = f"{cls.__name__}Event"
        payload_ref = refs[cls]["$ref"]
        variant = copy.deepcopy(envelope)
        variant["title"] = name
        variant["description"] = f"A `{event_type}` event: its payload is a `{cls.__name__}`."
        variant["properties"] = {
            **envelope_properties,
            "type": {"type": "string", "enum": [event_type]},
            "payload": {"$ref": payload_ref},
        }
        variant["required"] = sorted({*envelope.get("required", ()), "payload"})
        definitions[name] = variant
        variants.append({"$ref": COMPONENTS + name})
        mapping[event_type] = COMPONENTS + name
    engine = copy.deepcopy(envelope)
    engine["title"] = "EngineEvent"
    engine["description"] = (
        "An `engine.<name>` event: an object a step wrote to `ADE_EVENTS_FD`, re-enveloped; its payload is "
        "the step's own object (without its `type`)."
    )
    engine["properties"] = {
        **envelope_properties,
        "type": {"type": "string", "pattern": "^" + ENGINE_PREFIX.replace(".", r"\.")},
        "payload": {"type": "object"},
    }
    definitions["EngineEvent"] = engine
    variants.append({"$ref": COMPONENTS + "EngineEvent"})
    definitions[event_name] = {
        "title": "Event",
        "description": "One entry of a run's or a build's stream (the envelope of DESIGN §4): `sequence` is "
        "dense per stream (1, 2, 3, …); `type` tells which payload it carries. An `engine.*` type is a "
        "step's own event (`EngineEvent`).",
        "oneOf": variants,
        # Each variant's `type` is a constant (or the engine pattern), so exactly one matches. The mapping
        # names the catalog's; an `engine.*` type is in none of them (the open-ended rest).
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
