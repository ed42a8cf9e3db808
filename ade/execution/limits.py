"""A step's resource limits: what applies (the step's own values, capped by the operator's maximum), and
how a breach is recognised once the step has ended.

A breach is recognised from what the limit does to the step: in a container the kernel's OOM killer
ends it (exit 137 that the engine did not cause); under the sandbox's rlimits an allocation or a fork
fails, which the step's tools report on stderr (`MemoryError`, `Cannot allocate memory`, `fork: …
Resource temporarily unavailable`). A step that fails after such a report fails `resource_limit`; one
that swallows the error and exits 0 succeeds; one that reports nothing fails `exit_nonzero`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ade.core.models import Failure, Step
from ade.core.settings import Settings

Line = tuple[bytes, bool]
LinesHandler = Callable[[str, list[Line]], Awaitable[None]]

MEMORY_MARKERS = (
    b"MemoryError",
    b"Cannot allocate memory",
    b"cannot allocate memory",
    b"xmalloc: cannot allocate",
    b"xrealloc: cannot allocate",
    b"out of memory",
    b"Out of memory",
    b"memory exhausted",
    b"std::bad_alloc",
)
PROCESS_MARKERS = (
    b"Resource temporarily unavailable",
    b"fork: retry",
    b"can't fork",
    b"Cannot fork",
    b"cannot fork",
)


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int  # 0: unlimited
    processes: int  # 0: unlimited

    @classmethod
    def of(cls, settings: Settings, step: Step) -> Limits:
        return cls(
            memory_mb=capped(step.memory_mb, settings.step_max_memory_mb),
            processes=capped(step.max_processes, settings.step_max_processes),
        )

    def describe(self, kind: str) -> str:
        if kind == "memory":
            return f"its memory limit of {self.memory_mb} MB (memory_mb, at most ADE_STEP_MAX_MEMORY_MB)"
        return f"its process limit of {self.processes} (max_processes, at most ADE_STEP_MAX_PROCESSES)"


def capped(asked: int | None, maximum: int) -> int:
    """A configuration's own limit, never above the operator's maximum, which applies when it asks none
    (a maximum of 0: no maximum)."""
    if maximum <= 0:
        return asked or 0
    return min(asked, maximum) if asked else maximum


@dataclass(slots=True)
class LimitWatch:
    """Passes a step's lines on, noting on the way any report of a failed allocation or fork."""

    inner: LinesHandler
    limits: Limits
    seen: set[str] = field(default_factory=set)

    async def __call__(self, name: str, lines: list[Line]) -> None:
        if name == "stderr" and len(self.seen) < 2:
            for text, _ in lines:
                if self.limits.memory_mb and any(marker in text for marker in MEMORY_MARKERS):
                    self.seen.add("memory")
                if self.limits.processes and any(marker in text for marker in PROCESS_MARKERS):
                    self.seen.add("processes")
        await self.inner(name, lines)

    def failure(self, step: str, stage: str, *, oom_killed: bool) -> Failure | None:
        """The `resource_limit` failure of a step that did not succeed, if a limit explains it."""
        kind = "memory" if oom_killed or "memory" in self.seen else "processes" if self.seen else None
        if kind is None:
            return None
        how = "was killed for exceeding" if oom_killed else "hit"
        message = f"step {step!r} {how} {self.limits.describe(kind)}"
        return Failure(stage=stage, code="resource_limit", message=message, step=step)
