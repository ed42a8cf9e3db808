"""`ade runs watch` and `ade builds watch`: a run's or a build's event stream rendered live with rich.

- step starts (`▶ name`) and completions (`✓ name succeeded in 1.2s`, `✗ name failed (exit 3) in 0.4s`),
  skipped steps with why (`○ deploy skipped: dependency 'test' failed`); a build's phases the same way,
  named `build: <phase>` (`▶ build: environment`, `✓ build: step:prep succeeded in 12ms`), whether they
  come from the build's own stream or from a run waiting for its build;
- steps running at the same time (a workflow with `depends_on`): each start and end says which still run
  (`▶ test (running: lint, test)`), and console lines carry their step (`  lint | …`);
- console lines indented under their step or phase: stdout as is, stderr in red behind `! ` (so the two stay
  apart without colour too, e.g. in a pipe or a CI log);
- `engine.progress` as a progress bar per step (the bar's final state stays on screen; without a terminal
  only the final state is printed, when the step ends); other `engine.*` events as a dim line;
- on a terminal, a live timer per running step and one for the run, each from when it really started (the
  events' own times: attached mid-run, a timer shows the true age, not the time since attaching);
- steps that never started or were skipped: `○ deploy skipped: …` as it happens, and at the end
  `○ deploy not run` for any the run ended without reaching;
- `timestamps=True`: each line the stream caused starts with its event's local time (`14:05:09 `);
- the outcome last: `run succeeded in 3.2s` (a run's id is in the header its command prints, not repeated),
  `build build_… ready in 1.4s`.

The watched stream's own outcome (`run.completed` for a run, `build.completed` for a build) decides the exit
code: see `EXIT_CODES`. In a run's stream, `build.completed` is the build's news, not the outcome.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ade.events.envelope import Event
from ade.events.payloads import (
    BuildCancelRequested,
    BuildCompleted,
    BuildQueued,
    BuildStarted,
    ConsoleLine,
    PhaseCompleted,
    PhaseStarted,
    RunCancelRequested,
    RunCompleted,
    RunQueued,
    RunStarted,
    RunWaitingForBuild,
    StepCompleted,
    StepSkipped,
    StepStarted,
    payload_of,
)

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

RUN_TIMER = "\0run"  # the run's (or build's) own timer among the steps' in the live display

_STEP_MARKS = {"succeeded": ("✓", "green"), "failed": ("✗", "red")}


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

    def __init__(
        self, console: Console, kind: Kind = "run", steps: Sequence[str] = (), *, timestamps: bool = False
    ) -> None:
        self.console = console
        self._steps = list(steps)
        self._pending = set(steps)  # a run's steps that have neither started nor been skipped
        self.kind = kind
        self.timestamps = timestamps
        self.outcome: str | None = None
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started_at: dict[str, datetime] = {}  # when each step (or the run, as RUN_TIMER) started
        self._step: str | None = None
        self._running: list[str] = []  # steps running now, in the order they started
        self._stamp = ""  # the time of the event being handled, when `timestamps`

    def __enter__(self) -> StreamView:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop_progress()

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.outcome or "", EXIT_ERROR)

    def _line(self, text: str, style: str = "") -> None:
        self.console.print(Text(self._stamp) + Text(text, style=style), soft_wrap=True)

    def handle(self, event: Event) -> None:
        payload = payload_of(event.type, event.payload)
        prefix = _build_prefix(event.type)
        if self.timestamps:
            self._stamp = event.created_at.astimezone().strftime("%H:%M:%S ")
        match payload:
            case ConsoleLine():
                self._console_line(payload)
            case StepStarted() | PhaseStarted():
                self._step = _step_name(payload)
                self._pending.discard(self._step)
                self._running.append(self._step)
                steps_only = isinstance(payload, StepStarted)  # a build's phases are not the run's steps
                self._started_at[self._step] = event.created_at
                self._line(f"▶ {self._step}{self._others(pending=steps_only)}", "bold")
                if self.console.is_terminal:  # a live timer while it runs (its true age, even mid-run)
                    self._task_of(self._step, f"▶ {self._step}")
            case StepCompleted() | PhaseCompleted():
                self._step_completed(payload)
            case StepSkipped():
                self._pending.discard(payload.step)
                self._line(f"○ {payload.step} skipped: {payload.reason}{self._others()}", "dim")
            case RunQueued():
                self._line(f"queued (attempt {payload.attempt})", "dim")
            case BuildQueued():
                text = f"build {_build_id(event)} queued (fingerprint {payload.fingerprint[:12]}"
                self._line(text + (", forced)" if payload.force else ")"), "dim")
            case RunStarted(worker=worker) | BuildStarted(worker=worker):
                self._line(f"{prefix}started on worker {worker or '?'}", "dim")
                if event.type.split(".")[0] == self.kind:
                    self._started_at[RUN_TIMER] = event.created_at
                    if self.console.is_terminal:
                        self._task_of(RUN_TIMER, f"{self.kind} running")
            case RunWaitingForBuild():
                self._line(f"waiting for build {payload.build_id}", "dim")
            case RunCancelRequested(requested_by=who) | BuildCancelRequested(requested_by=who):
                self._line(f"{prefix}cancel requested by {who or 'someone'}", "yellow")
            case RunCompleted() | BuildCompleted():
                self._completed(event, payload)
            case dict() if event.type == "engine.progress":
                self._update_progress(payload)
            case _:
                details = json.dumps(event.payload, separators=(",", ":"), default=str)
                self._line(f"  · {event.type} {details}", "dim cyan")

    def _others(self, at_least: int = 2, *, pending: bool = True) -> str:
        """`(running: a, b · pending: 3)`: the steps running side by side (on a start, more than the one
        starting) and how many have yet to start, when there are any."""
        parts = [f"running: {', '.join(self._running)}"] if len(self._running) >= at_least else []
        if pending and self._pending:
            parts.append(f"pending: {len(self._pending)}")
        return f" ({' · '.join(parts)})" if parts else ""

    def _console_line(self, line: ConsoleLine) -> None:
        text = Text(f"{self._stamp}  ")
        if line.step and len(self._running) > 1:
            text.append(f"{line.step} | ", style="dim")
        if line.stream == "stderr":
            text.append(f"! {line.message}", style="red")
        else:
            text.append(line.message)
        if line.truncated:
            text.append(" […truncated]", style="dim")
        self.console.print(text, soft_wrap=True)

    def _task_of(self, step: str, description: str) -> TaskID:
        """The step's line in the live display (a timer, and a bar once it reports progress), timed from
        when the step started (its event's time), not from now."""
        if self._progress is None:
            self._progress = Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        if step not in self._tasks:
            self._tasks[step] = self._progress.add_task(description, total=None)
            since = self._started_at.get(step)
            if since is not None:  # elapsed from when the step really started, not from when we attached
                age_s = max((datetime.now(UTC) - since).total_seconds(), 0.0)
                self._progress.tasks[-1].start_time = self._progress.get_time() - age_s
        return self._tasks[step]

    def _freeze_timer(self, step: str, duration_ms: object) -> None:
        """A step's progress bar stays on screen once it ended: its timer stops at the step's duration."""
        task = self._task_state(step)
        seconds = _number(duration_ms)
        if task is not None and task.start_time is not None and seconds is not None:
            task.stop_time = task.start_time + seconds / 1000

    def _is_timer(self, task_id: TaskID) -> bool:
        assert self._progress is not None
        return self._progress.tasks[self._progress.task_ids.index(task_id)].total is None

    def _task_state(self, step: str) -> Task | None:
        if self._progress is None or step not in self._tasks:
            return None
        return self._progress.tasks[self._progress.task_ids.index(self._tasks[step])]

    def _update_progress(self, payload: dict[str, Any]) -> None:
        step = str(payload.get("step") or self._step or "")
        description = str(payload.get("message") or step)
        total, current = _number(payload.get("total")), _number(payload.get("current"))
        task = self._task_of(step, description)
        assert self._progress is not None
        self._progress.update(task, description=description, total=total, completed=current or 0)

    def _stop_progress(self, step: str | None = None) -> None:
        """End a step's timer (a progress bar stays, in its final state), and the display once no step
        runs; without `step`, all of it."""
        if self._progress is None:
            return
        if step is not None and (task := self._task_state(step)) is not None and task.total is None:
            self._progress.remove_task(self._tasks.pop(step))
        if step is None or not (self._running or RUN_TIMER in self._tasks):
            for name in [name for name, task_id in self._tasks.items() if self._is_timer(task_id)]:
                self._progress.remove_task(self._tasks.pop(name))  # the final frame keeps the bars only
            self._progress.stop()
            self._progress = None
            self._tasks.clear()

    def _step_completed(self, payload: StepCompleted | PhaseCompleted) -> None:
        name, status = _step_name(payload), payload.status
        if name in self._running:
            self._running.remove(name)
        self._freeze_timer(name, payload.duration_ms)
        self._stop_progress(name)
        mark, style = _STEP_MARKS.get(status, ("■", "yellow"))
        what: str = status
        if isinstance(payload, StepCompleted):
            if payload.failure is not None and payload.failure.code == "timeout":
                what = "timed out"
            elif status == "failed" and payload.exit_code is not None:
                what += f" (exit {payload.exit_code})"
        self._pending.discard(name)
        if isinstance(payload, StepCompleted) and payload.reused_from is not None:
            self._line(f"{mark} {name} {what} in {payload.reused_from} (kept, not run again)", style)
            return
        others = self._others(1, pending=isinstance(payload, StepCompleted))
        self._line(f"{mark} {name} {what} in {duration(payload.duration_ms)}{others}", style)
        self._step = self._running[-1] if self._running else None

    def _completed(self, event: Event, payload: RunCompleted | BuildCompleted) -> None:
        """`run.completed` or `build.completed`: the outcome when it ends the watched stream, else (a run's
        build) a line of news."""
        of = event.type.split(".")[0]
        if of == self.kind:
            self._stop_progress()
            self._not_run()
        status = payload.status
        text = f"run {status}" if of == "run" else f"build {_build_id(event)} {status}"
        if isinstance(payload, BuildCompleted) and payload.reused:
            text += f" (reused {payload.reused_from})" if payload.reused_from else " (reused)"
        elif payload.duration_ms is not None:
            text += f" in {duration(payload.duration_ms)}"
        if payload.failure is not None:
            text += f": {payload.failure.message} ({payload.failure.code})"
        if status == "cancelled" and payload.cancelled_by:
            text += f" (by {payload.cancelled_by})"
        style = "green" if status in ("succeeded", "ready") else "red" if status == "failed" else "yellow"
        if of == self.kind:
            self.outcome = status
            style = f"bold {style}"
        self._line(text, style)

    def _not_run(self) -> None:
        """The run's steps it ended without starting or skipping (a cancel, a failure that stops it)."""
        for step in self._steps:
            if step in self._pending:
                self._line(f"○ {step} not run", "dim")
        self._pending.clear()


def _step_name(payload: StepStarted | StepCompleted | PhaseStarted | PhaseCompleted) -> str:
    """A run step's name, or `build: <phase>` for a build phase."""
    if isinstance(payload, PhaseStarted | PhaseCompleted):
        return f"build: {payload.phase}"
    return payload.step


def _build_prefix(kind: str) -> str:
    """`build ` before a build event's line, so that a run's stream tells its build's news apart."""
    return "build " if kind.startswith("build.") else ""


def _build_id(event: Event) -> str:
    """The build an event is about: its own stream's, or the one a run's stream names in the payload."""
    named = event.payload.get("build_id") if isinstance(event.payload, dict) else None
    return str(named or event.build_id or "?")
