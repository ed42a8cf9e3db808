"""One typed payload per catalog entry (DESIGN.md §4).

Every code path that emits an event builds its payload from these structs, and every reader (summary, CLI
watch, client) reads them back with `payload_of`. The wire format is the struct's JSON: `None` fields are
written as `null`, except in `console.line`, whose optional fields are left out (it is most of every log).

`engine.<name>` events are a step's own JSON objects (validated by `ade.execution.console`), so they stay
plain dicts.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from ade.core.models import Failure, StepOutput

StepEndStatus = Literal["succeeded", "failed", "cancelled"]
RunEndStatus = Literal["succeeded", "failed", "cancelled"]
BuildEndStatus = Literal["ready", "failed", "cancelled"]


class Payload(msgspec.Struct, kw_only=True):
    """A lifecycle event's payload; `TYPE` is the catalog name it is emitted under."""

    TYPE: ClassVar[str]


class RunQueued(Payload, kw_only=True):
    TYPE = "run.queued"
    status: Literal["queued"] = "queued"
    attempt: int = 1
    rerun_of: str | None = None


class RunWaitingForBuild(Payload, kw_only=True):
    TYPE = "run.waiting_for_build"
    status: Literal["waiting_for_build"] = "waiting_for_build"
    build_id: str


class RunStarted(Payload, kw_only=True):
    TYPE = "run.started"
    status: Literal["running"] = "running"
    attempt: int = 1
    worker: str | None = None


class StepStarted(Payload, kw_only=True):
    TYPE = "run.step.started"
    step: str
    index: int


class StepCompleted(Payload, kw_only=True):
    """A step ended: `failed` carries why (`exit_nonzero`, `timeout`, or the run's own failure when the run
    ended around it); `cancelled` steps were running when the run was cancelled. `outputs`: the files it
    added to the run's outputs. `reused_from`: a failed-only re-run kept this step, which succeeded in that
    run, without running it (no `run.step.started`; its outputs were copied)."""

    TYPE = "run.step.completed"
    step: str
    index: int
    status: StepEndStatus
    exit_code: int | None = None
    duration_ms: int | None = None
    failure: Failure | None = None
    outputs: list[StepOutput] = msgspec.field(default_factory=list)
    reused_from: str | None = None


class StepSkipped(Payload, kw_only=True):
    """A step that never started and never will: the run ended before it, or (DAG) a dependency failed."""

    TYPE = "run.step.skipped"
    step: str
    index: int
    reason: str


class CacheRestored(Payload, kw_only=True):
    """Before a step with `cache_dirs` starts: whether its cache (`key`, as evaluated) was found and copied
    into the work directory. `error` says why there is no cache (a key that cannot be evaluated, a failed
    copy); a miss without one is simply a cache nobody saved yet (or one evicted)."""

    TYPE = "run.cache.restored"
    step: str
    key: str | None  # None when the key could not be evaluated
    hit: bool
    paths: list[str]
    bytes: int = 0
    files: int = 0
    duration_ms: int = 0
    error: str | None = None


class CacheSaved(Payload, kw_only=True):
    """After a step with `cache_dirs` succeeded: its cache saved (`saved`), or skipped and why (`reason`:
    over ADE_MAX_CACHE_BYTES, nothing to save, a key that cannot be evaluated, …; the step still
    succeeded). `evicted` counts the workspace's least recently used caches removed to stay within
    ADE_MAX_WORKSPACE_CACHE_BYTES."""

    TYPE = "run.cache.saved"
    step: str
    key: str | None
    saved: bool
    paths: list[str]
    bytes: int = 0
    files: int = 0
    duration_ms: int = 0
    reason: str | None = None
    evicted: int = 0


class RunCancelRequested(Payload, kw_only=True):
    TYPE = "run.cancel_requested"
    requested_by: str | None = None


class RunCompleted(Payload, kw_only=True):
    """The last event of a run's stream, whoever ended the run (worker, API cancel, reaper)."""

    TYPE = "run.completed"
    status: RunEndStatus
    exit_code: int | None = None
    duration_ms: int | None = None  # from `run.started`; None if it never started
    failure: Failure | None = None
    cancelled_by: str | None = None


class BuildQueued(Payload, kw_only=True):
    TYPE = "build.queued"
    status: Literal["queued"] = "queued"
    fingerprint: str
    force: bool = False


class BuildStarted(Payload, kw_only=True):
    TYPE = "build.started"
    status: Literal["building"] = "building"
    worker: str | None = None
    fingerprint: str


class PhaseStarted(Payload, kw_only=True):
    TYPE = "build.phase.started"
    phase: str


class PhaseCompleted(Payload, kw_only=True):
    TYPE = "build.phase.completed"
    phase: str
    status: StepEndStatus
    duration_ms: int


class BuildCancelRequested(Payload, kw_only=True):
    TYPE = "build.cancel_requested"
    requested_by: str | None = None


class BuildCompleted(Payload, kw_only=True):
    """The last event of a build's stream; in a run's stream, the news of the run's build."""

    TYPE = "build.completed"
    status: BuildEndStatus
    build_id: str | None = None  # whose environment the run gets (a reuse names the original)
    duration_ms: int | None = None
    failure: Failure | None = None
    cancelled_by: str | None = None
    reused: bool = False
    reused_from: str | None = None


class ConsoleLine(Payload, kw_only=True, omit_defaults=True):
    TYPE = "console.line"
    scope: Literal["run", "build"]
    stream: str  # stdout or stderr
    step: str | None = None
    message: str
    truncated: bool = False


CATALOG: dict[str, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        RunQueued, RunWaitingForBuild, RunStarted, StepStarted, StepCompleted, StepSkipped,
        CacheRestored, CacheSaved, RunCancelRequested, RunCompleted, BuildQueued, BuildStarted,
        PhaseStarted, PhaseCompleted, BuildCancelRequested, BuildCompleted, ConsoleLine,
    )
}  # fmt: skip

P = TypeVar("P", bound=Payload)


def payload_of(event_type: str, payload: dict[str, Any]) -> Payload | dict[str, Any]:
    """A decoded event's payload as its catalog struct (an `engine.*` event's stays a dict)."""
    cls = CATALOG.get(event_type)
    return payload if cls is None else msgspec.convert(payload, cls)


def read(payload: dict[str, Any], cls: type[P]) -> P:
    """A payload read as the struct its reader expects."""
    return msgspec.convert(payload, cls)
