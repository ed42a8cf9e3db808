"""Splitting step output into console lines, and validating what steps write to ADE_EVENTS_FD."""

from __future__ import annotations

import pytest

from ade.events.payloads import ConsoleLine
from ade.execution.console import MAX_STEP_EVENT_DEPTH, engine_event
from ade.execution.process import LineSplitter


def split(chunks: list[bytes], max_bytes: int = 10) -> list[tuple[bytes, bool]]:
    splitter = LineSplitter(max_bytes)
    out = [line for chunk in chunks for line in splitter.feed(chunk)]
    return out + splitter.finish()


def test_lines_split_across_chunks_are_joined() -> None:
    assert split([b"ab", b"c\nde", b"f\n"]) == [(b"abc", False), (b"def", False)]


def test_final_line_without_newline_is_kept() -> None:
    assert split([b"one\ntwo"]) == [(b"one", False), (b"two", False)]


def test_empty_lines_are_lines() -> None:
    assert split([b"\n\nx\n"]) == [(b"", False), (b"", False), (b"x", False)]


def test_overlong_line_is_cut_and_marked_and_the_rest_discarded() -> None:
    assert split([b"0123456789ABCDEF\nok\n"]) == [(b"0123456789", True), (b"ok", False)]
    # The same when the overlong line spans many chunks, with no newline yet in sight.
    assert split([b"01234567", b"89ABCD", b"EFGH", b"IJ\nok"]) == [(b"0123456789", True), (b"ok", False)]


def test_overlong_final_line_is_cut() -> None:
    assert split([b"0123456789ABC"]) == [(b"0123456789", True)]


def test_engine_event_is_reenveloped_with_its_step() -> None:
    assert engine_event(b'{"type": "progress", "current": 2, "total": 4}', "load") == (
        "engine.progress",
        {"current": 2, "total": 4, "step": "load"},
        "engine",
    )
    assert engine_event(b'{"type": "engine.summary", "sequence": 5}', "s")[:2] == (
        "engine.summary",
        {"step": "s"},
    )


def test_an_engine_event_may_nest_as_deep_as_the_limit() -> None:
    inner = b"[" * (MAX_STEP_EVENT_DEPTH - 1) + b"]" * (MAX_STEP_EVENT_DEPTH - 1)
    assert engine_event(b'{"type": "deep", "v": ' + inner + b"}", "s")[0] == "engine.deep"


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"no_type": 1}',
        b'{"type": 7}',
        b'{"type": "run.completed"}',
        b'{"type": "console.line"}',
        b'{"type": "build.completed"}',
        b'{"type": "Bad Name"}',
        b'{"type": "deep", "v": ' + b"[" * MAX_STEP_EVENT_DEPTH + b"]" * MAX_STEP_EVENT_DEPTH + b"}",
        b"[" * 50_000,
    ],
)
def test_invalid_or_reserved_engine_events_become_a_warning_line(line: bytes) -> None:
    type_, payload, source = engine_event(line, "s")
    assert isinstance(payload, ConsoleLine)
    assert (type_, source, payload.stream) == ("console.line", "worker", "stderr")
    assert payload.message.startswith("[ade] ignored an event")
