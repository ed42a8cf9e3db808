"""`ade runs watch` on a workflow: skipped steps with why, which steps run side by side, and each console
line's step while more than one runs."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from ade.cli.watch import StreamView
from ade.events.envelope import Event


def event(sequence: int, kind: str, **payload: Any) -> Event:
    return Event(
        type=kind,
        sequence=sequence,
        event_id=f"evt_{sequence}",
        created_at=datetime.now(UTC),
        source="worker",
        workspace_id="ws_x",
        run_id="run_x",
        payload=payload,
    )


def test_watch_shows_parallel_steps_and_skips() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    events = [
        ("run.step.started", {"step": "b", "index": 1}),
        ("run.step.started", {"step": "c", "index": 2}),
        ("console.line", {"scope": "run", "stream": "stdout", "step": "c", "message": "from c"}),
        (
            "run.step.completed",
            {"step": "c", "index": 2, "status": "failed", "exit_code": 3, "duration_ms": 5},
        ),
        ("console.line", {"scope": "run", "stream": "stdout", "step": "b", "message": "from b"}),
        ("run.step.skipped", {"step": "d", "index": 3, "reason": "dependency 'c' failed"}),
        (
            "run.step.completed",
            {"step": "b", "index": 1, "status": "succeeded", "exit_code": 0, "duration_ms": 9},
        ),
    ]
    with StreamView(console) as view:
        for sequence, (kind, payload) in enumerate(events, start=1):
            view.handle(event(sequence, kind, **payload))
    assert out.getvalue().splitlines() == [
        "▶ b",
        "▶ c (running: b, c)",
        "  c | from c",
        "✗ c failed (exit 3) in 5ms (running: b)",
        "  from b",
        "○ d skipped: dependency 'c' failed",
        "✓ b succeeded in 9ms",
    ]


def test_on_a_terminal_each_running_step_has_a_live_timer_of_its_true_age() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    with StreamView(console) as view:
        started = event(1, "run.step.started", step="build", index=0)
        started.created_at = datetime.now(UTC) - timedelta(seconds=42)  # we attached mid-run
        view.handle(started)
        view.handle(event(2, "run.step.started", step="test", index=1))
        assert view._progress is not None
        ages = {task.description: task.elapsed or 0.0 for task in view._progress.tasks}
        assert ages["▶ build"] >= 42 and ages["▶ test"] < 5
        done = {"index": 0, "status": "succeeded", "exit_code": 0, "duration_ms": 42000}
        view.handle(event(3, "run.step.completed", step="build", **done))
        assert [task.description for task in view._progress.tasks] == ["▶ test"]  # its timer is gone
        view.handle(event(4, "run.step.completed", step="test", **{**done, "index": 1}))
        assert view._progress is None  # no step runs: the live display ended


def test_watch_counts_the_steps_yet_to_start() -> None:
    out = io.StringIO()
    with StreamView(Console(file=out, width=200, color_system=None), "run", ["a", "b", "c", "d"]) as view:
        view.handle(event(1, "run.step.started", step="a", index=0))
        view.handle(event(2, "run.step.skipped", step="d", index=3, reason="an earlier step ('a') failed"))
    lines = out.getvalue().splitlines()
    assert lines[0] == "▶ a (pending: 3)"
    assert lines[1] == "○ d skipped: an earlier step ('a') failed (pending: 2)"
