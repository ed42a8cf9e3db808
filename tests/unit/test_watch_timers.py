"""`ade runs watch` on a terminal: the run's and each step's live timer count from when they really started
(the events' times), a progress bar's timer stops at its step's duration, and steps a run ended without
reaching are shown as not run."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console

from ade.cli.watch import RUN_TIMER, StreamView
from ade.events.envelope import Event


def event(sequence: int, kind: str, age_s: float = 0.0, **payload: Any) -> Event:
    return Event(
        type=kind,
        sequence=sequence,
        event_id=f"evt_{sequence}",
        created_at=datetime.now(UTC) - timedelta(seconds=age_s),
        source="worker",
        workspace_id="ws_x",
        run_id="run_x",
        payload=payload,
    )


def elapsed(view: StreamView) -> dict[str, float]:
    assert view._progress is not None
    return {task.description: task.elapsed or 0.0 for task in view._progress.tasks}


def test_the_run_timer_and_a_finished_bar_keep_their_true_times() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    with StreamView(console, "run", ["build", "test"]) as view:
        view.handle(event(1, "run.started", age_s=90, status="running", worker="w1"))  # attached 90 s late
        view.handle(event(2, "run.step.started", age_s=80, step="build", index=0))
        assert elapsed(view)["run running"] >= 90 and 80 <= elapsed(view)["▶ build"] < 90
        view.handle(event(3, "engine.progress", age_s=50, step="build", current=2, total=2))
        done = {"index": 0, "status": "succeeded", "exit_code": 0, "duration_ms": 30000}
        view.handle(event(4, "run.step.completed", age_s=50, step="build", **done))
        assert elapsed(view)["build"] == 30.0  # the bar stays, its timer stopped at the step's duration
        assert RUN_TIMER in view._tasks  # the display lives on while the run runs
        view.handle(event(5, "run.completed", status="failed", duration_ms=90000))
        assert view._progress is None and view.outcome == "failed"
    assert "○ test not run" in console.file.getvalue()  # type: ignore[attr-defined]


def test_timestamps_start_each_line_with_its_events_local_time() -> None:
    out = io.StringIO()
    with StreamView(Console(file=out, width=200, color_system=None), "run", ["a"], timestamps=True) as view:
        started = event(1, "run.step.started", step="a", index=0)
        view.handle(started)
        view.handle(event(2, "console.line", scope="run", stream="stderr", step="a", message="careful"))
    stamp = started.created_at.astimezone().strftime("%H:%M:%S")
    assert out.getvalue().splitlines() == [f"{stamp} ▶ a", f"{stamp}   ! careful"]
