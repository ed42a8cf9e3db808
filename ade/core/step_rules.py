"""When a step of a run may start, and when it is skipped and why (README "Workflows"): pure functions over
the steps' statuses, used by the worker's scheduler (`ade.execution.scheduler`, which adds what only a
running engine knows: cancel, the run's timeout, the cleanup grace, the parallel limit) and by step mode
(`ade.lifecycle.step_mode`, where a runner asks for the steps one by one).

Dependencies come from `ade.core.workflow.dependencies`: without any `depends_on` each step depends on every
earlier one. A step waits while one of its dependencies is pending or running. Once they all ended:

- `on_success` (the default) starts if they all succeeded — in a sequence, a skipped earlier step counts as
  passed (it was itself skipped for a reason reported on it) — else it is skipped: "dependency 'x' failed";
- `always` starts, whatever they did;
- `on_failure` starts if one of them, or a step above it in the graph, failed; else it is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from ade.core import workflow
from ade.core.models import Step

Decision = bool | str  # True: the step may start; False: it waits; a string: it is skipped, and why
WAITING = ("pending", "running")
_DEPENDENCY_ENDED = {"failed": "failed", "cancelled": "was cancelled", "skipped": "was skipped"}


def decide(
    steps: Sequence[Step],
    deps: Sequence[Sequence[int]],
    status: Sequence[str],
    failure_above: Sequence[bool],
    index: int,
) -> Decision:
    """A pending step's fate given the others' statuses (`failure_above`: see `failures_above`)."""
    step, graph = steps[index], any(s.depends_on for s in steps)
    if any(status[dep] in WAITING for dep in deps[index]):
        return False
    if step.when == "always":
        return True
    if step.when == "on_failure":
        if any(failure_above[dep] for dep in deps[index]):
            return True
        return "none of its dependencies failed" if graph else "no earlier step failed"
    for dep in deps[index]:
        if status[dep] != "succeeded" and (graph or status[dep] != "skipped"):
            name, what = steps[dep].name, _DEPENDENCY_ENDED.get(status[dep], status[dep])
            return f"dependency {name!r} {what}" if graph else f"an earlier step ({name!r}) {what}"
    return True


def failures_above(deps: Sequence[Sequence[int]], status: Sequence[str]) -> list[bool]:
    """For each step: it failed, or a step it depends on (transitively) did. (The graph has no cycle: a
    configuration with one is refused when it is saved.)"""
    found: dict[int, bool] = {}

    def above(index: int) -> bool:
        if index not in found:
            found[index] = False  # a cycle (never saved) ends here rather than recursing forever
            found[index] = status[index] == "failed" or any(above(dep) for dep in deps[index])
        return found[index]

    return [above(index) for index in range(len(status))]


def waiting_on(deps: Sequence[Sequence[int]], status: Sequence[str], index: int) -> list[int]:
    """The dependencies a step still waits for (pending or running)."""
    return [dep for dep in deps[index] if status[dep] in WAITING]


def settle(steps: Sequence[Step], status: Sequence[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """What follows from the statuses: (the pending steps that may start now, the pending steps to skip with
    their reasons, in the order they are decided). A skip can decide more skips: each is seen by the steps
    looked at after it, until nothing changes, so the answer is complete."""
    deps = workflow.dependencies(list(steps))
    current = list(status)
    above = failures_above(deps, current)  # skipping never changes it: only failures do
    skips: list[tuple[int, str]] = []
    changed = True
    while changed:  # in plan order, each skip seen by the steps after it, as the scheduler does
        changed = False
        for index, state in enumerate(current):
            if state != "pending":
                continue
            decision = decide(steps, deps, current, above, index)
            if isinstance(decision, str):
                skips.append((index, decision))
                current[index] = "skipped"
                changed = True
    ready = [
        index
        for index, state in enumerate(current)
        if state == "pending" and decide(steps, deps, current, above, index) is True
    ]
    return ready, skips
