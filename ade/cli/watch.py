"""`ade runs watch` and `ade builds watch`: a run's or a build's event stream rendered live with rich.

- step starts (`▶ name`) and completions (`✓ name succeeded in 1.2s`, `✗ name failed (exit 3) in 0.4s`);
  a build's phases the same way, named `build: <phase>` (`▶ build: environment`, `✓ build: step:prep
  succeeded in 12ms`), whether they come from the build's own stream or from a run waiting for its build;
- console lines indented under their step or phase: stdout as is, stderr in red behind `! ` (so the two stay
  apart without colour too, e.g. in a pipe or a CI log);
- `engine.progress` as a progress bar per step (the bar's final state stays on screen; without a terminal
  only the final state is printed, when the step ends); other `engine.*` events as a dim line;
- the outcome last: `run run_… succeeded in 3.2s`, `build build_… ready in 1.4s`.

The watched stream's own outcome (`run.completed` for a run, `build.completed` for a build) decides the exit
code: see `EXIT_CODES`. In a run's stream, `build.completed` is the build's news, not the outcome.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from ade.events.envelope import Event

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_ERROR = 3  # the API refused or could not be reached; nothing is known about the run's outcome
EXIT_CODES = {  # a run's final status, or a build's
    "succeeded": EXIT_SUCCEEDED,
    "ready": EXIT_SUCCEEDED,
    "failed": EXIT_FAILED,
    "cancelled": EXIT_CANCELLED,
}

_STEP_MARKS = {"succeeded": ("✓", "green"), "failed": ("✗", "red"), "timed_out": ("✗", "red")}


def duration(ms: object) -> str:
    """`850ms`, `12.3s`, `4m05s`, `1h02m`."""
    if not isinstance(ms, int | float):
        return "?"
    seconds = ms / 1000
    if seconds < 1:
        return f"{ms:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


Kind = Literal["run", "build"]


class StreamView:
    """Renders one run's or one build's events, in order, on a rich console; `outcome` is the watched
    run's or build's final status."""

    def __init__(self, console: Console, kind: Kind = "run") -> None:
        self.console = console
        self.kind = kind
        self.outcome: str | None = None
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._step: str | None = None

    def __enter__(self) -> StreamView:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_progress()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.outcome or "", EXIT_ERROR)

    def _line(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style), soft_wrap=True)

    def handle(self, event: Event) -> None:
        payload = event.payload
        kind = event.type
        if kind == "console.line":
            self._console_line(payload)
        elif kind == "engine.progress":
            self._update_progress(payload)
        elif kind in ("run.step.started", "build.phase.started"):
            self._step = _step_name(payload)
            self._line(f"▶ {self._step}", "bold")
        elif kind in ("run.step.completed", "build.phase.completed"):
            self._step_completed(payload)
        elif kind == "run.queued":
            self._line(f"{event.run_id} queued (attempt {payload.get('attempt', 1)})", "dim")
        elif kind == "build.queued":
            self._build_queued(event)
        elif kind in ("run.started", "build.started"):
            self._line(f"{_build_prefix(kind)}started on worker {payload.get('worker') or '?'}", "dim")
        elif kind == "run.waiting_for_build":
            self._line(f"waiting for build {payload.get('build_id') or '?'}", "dim")
        elif kind in ("run.cancel_requested", "build.cancel_requested"):
            who = payload.get("requested_by") or "someone"
            self._line(f"{_build_prefix(kind)}cancel requested by {who}", "yellow")
        elif kind in ("run.completed", "build.completed"):
            self._completed(event)
        else:
            details = json.dumps(payload, separators=(",", ":"), default=str)
            self._line(f"  · {kind} {details}", "dim cyan")

    def _build_queued(self, event: Event) -> None:
        payload = event.payload
        text = f"build {_build_id(event)} queued"
        if payload.get("fingerprint"):
            text += f" (fingerprint {str(payload['fingerprint'])[:12]}"
            text += ", forced)" if payload.get("force") else ")"
        self._line(text, "dim")

    def _console_line(self, payload: dict[str, Any]) -> None:
        text = Text("  ")
        message = str(payload.get("message", ""))
        if payload.get("stream") == "stderr":
            text.append(f"! {message}", style="red")
        else:
            text.append(message)
        if payload.get("truncated"):
            text.append(" […truncated]", style="dim")
        self.console.print(text, soft_wrap=True)

    def _update_progress(self, payload: dict[str, Any]) -> None:
        step = str(payload.get("step") or self._step or "")
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        description = str(payload.get("message") or step)
        total, current = _number(payload.get("total")), _number(payload.get("current"))
        if step not in self._tasks:
            self._tasks[step] = self._progress.add_task(description, total=total)
        self._progress.update(self._tasks[step], description=description, total=total, completed=current or 0)

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()

    def _step_completed(self, payload: dict[str, Any]) -> None:
        self._stop_progress()
        name, status = _step_name(payload), str(payload.get("status"))
        mark, style = _STEP_MARKS.get(status, ("■", "yellow"))
        exit_code = payload.get("exit_code")
        what = status.replace("_", " ")
        if status == "failed" and exit_code is not None:
            what += f" (exit {exit_code})"
        self._line(f"{mark} {name} {what} in {duration(payload.get('duration_ms'))}", style)
        self._step = None

    def _completed(self, event: Event) -> None:
        """`run.completed` or `build.completed`: the outcome when it ends the watched stream, else (a run's
        build) a line of news."""
        self._stop_progress()
        payload = event.payload
        of = event.type.split(".")[0]
        status = str(payload.get("status"))
        text = f"{of} {event.run_id if of == 'run' else _build_id(event)} {status}"
        if payload.get("reused"):
            text += f" (reused {payload['reused_from']})" if payload.get("reused_from") else " (reused)"
        elif "duration_ms" in payload:
            text += f" in {duration(payload.get('duration_ms'))}"
        failure = payload.get("failure")
        if isinstance(failure, dict):
            text += f": {failure.get('message')} ({failure.get('code')})"
        if status == "cancelled" and payload.get("cancelled_by"):
            text += f" (by {payload['cancelled_by']})"
        style = "green" if status in ("succeeded", "ready") else "red" if status == "failed" else "yellow"
        if of == self.kind:
            self.outcome = status
            style = f"bold {style}"
        self._line(text, style)


def _step_name(payload: dict[str, Any]) -> str:
    """A run step's name, or `build: <phase>` for a build phase."""
    return f"build: {payload['phase']}" if "phase" in payload else str(payload.get("step"))


def _build_prefix(kind: str) -> str:
    """`build ` before a build event's line, so that a run's stream tells its build's news apart."""
    return "build " if kind.startswith("build.") else ""


def _build_id(event: Event) -> str:
    """The build an event is about: its own stream's, or the one a run's stream names in the payload."""
    return str(event.payload.get("build_id") or event.build_id or "?")
