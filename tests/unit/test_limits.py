"""Per-step limits: a step's own values, capped by the operator's maxima; a breach named from what the
limit did to the step."""

from __future__ import annotations

import pytest

from ade.core.models import Step
from ade.core.settings import Settings
from ade.execution.limits import Limits, LimitWatch

pytestmark = pytest.mark.anyio


def test_a_steps_limits_never_exceed_the_operators_maximum() -> None:
    settings = Settings(step_max_memory_mb=1024, step_max_processes=100)
    assert Limits.of(settings, Step(name="s", script="true")) == Limits(memory_mb=1024, processes=100)
    lower = Step(name="s", script="true", memory_mb=64, max_processes=8)
    assert Limits.of(settings, lower) == Limits(memory_mb=64, processes=8)
    higher = Step(name="s", script="true", memory_mb=10**6, max_processes=10**6)
    assert Limits.of(settings, higher) == Limits(memory_mb=1024, processes=100)
    unlimited = Settings(step_max_memory_mb=0, step_max_processes=0)
    assert Limits.of(unlimited, Step(name="s", script="true")) == Limits(memory_mb=0, processes=0)


async def test_a_failed_allocation_or_fork_on_stderr_names_the_limit() -> None:
    seen: list[tuple[str, int]] = []

    async def sink(name: str, lines: list[tuple[bytes, bool]]) -> None:
        seen.append((name, len(lines)))

    watch = LimitWatch(sink, Limits(memory_mb=64, processes=8))
    await watch("stdout", [(b"MemoryError", False)])  # stdout is the step's to print anything on
    assert watch.failure("s", "step", oom_killed=False) is None
    await watch("stderr", [(b"bash: fork: retry: Resource temporarily unavailable", False)])
    failure = watch.failure("s", "step", oom_killed=False)
    assert (
        failure is not None and failure.code == "resource_limit" and "process limit of 8" in failure.message
    )
    await watch("stderr", [(b"MemoryError", False)])
    failure = watch.failure("s", "step", oom_killed=False)
    assert failure is not None and "memory limit of 64 MB" in failure.message
    assert seen == [("stdout", 1), ("stderr", 1), ("stderr", 1)]  # every line still reaches the log


def test_an_oom_kill_is_a_memory_breach() -> None:
    async def sink(name: str, lines: list[tuple[bytes, bool]]) -> None: ...

    failure = LimitWatch(sink, Limits(memory_mb=64, processes=0)).failure("s", "step", oom_killed=True)
    assert failure is not None and "killed for exceeding its memory limit of 64 MB" in failure.message
