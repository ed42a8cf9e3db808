"""A configuration's steps as a graph (DESIGN.md §3 "Steps form a DAG"; README "Workflows").

Pure functions: the checks a configuration passes when it is saved (unique names, known dependencies, no
self-dependency, no cycle, paths that stay inside the work directory) and the dependencies the scheduler
(`ade.execution.scheduler`) follows. msgspec has already checked each field on its own (types, lengths,
`when`); what needs more than one field, or a clear message, is here.

Without any `depends_on` in a configuration its steps run in order: each depends on every step before it,
which gives GitHub's step semantics (`on_success`: no earlier step failed; `always`; `on_failure`: an
earlier step failed). With one, the steps are a graph and a step without `depends_on` starts at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ade.core.models import Step


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a configuration's steps are refused: `details[]` of its 400."""

    key: str  # where: `steps[2].depends_on[0]`
    problem: str  # duplicate_name, unknown_dependency, self_dependency, cycle, path_escape, not_supported
    message: str
    step: str | None = None
    cycle: tuple[str, ...] = ()  # a cycle's steps in order, the first again at the end

    def detail(self) -> dict[str, Any]:
        found: dict[str, Any] = {"key": self.key, "problem": self.problem, "message": self.message}
        if self.step is not None:
            found["step"] = self.step
        if self.cycle:
            found["cycle"] = list(self.cycle)
        return found


def is_graph(steps: list[Step]) -> bool:
    """Whether the steps form a graph (some `depends_on`) rather than a sequence."""
    return any(step.depends_on for step in steps)


def dependencies(steps: list[Step]) -> list[list[int]]:
    """Each step's dependencies as plan indices: every earlier step for a sequence, else its `depends_on`
    (known names other than its own, each once, in the order given)."""
    if not is_graph(steps):
        return [list(range(index)) for index in range(len(steps))]
    where: dict[str, int] = {}
    for index, step in enumerate(steps):
        where.setdefault(step.name, index)
    return [
        [where[name] for name in dict.fromkeys(step.depends_on) if where.get(name, index) != index]
        for index, step in enumerate(steps)
    ]


def path_problem(path: str) -> str | None:
    """Why `path` (relative to the work directory, possibly a glob) could leave it, or None."""
    if "\x00" in path:
        return "contains a NUL character"
    if "\\" in path:
        return "contains a backslash (separate directories with /)"
    if path.startswith("/"):
        return "is absolute (paths are relative to the work directory)"
    if ".." in path.split("/"):
        return "has a '..' component (it would leave the work directory)"
    return None


def check(steps: list[Step], where: str = "steps") -> list[Problem]:
    """Every problem of a configuration's steps, in plan order (an empty list: the steps are fine)."""
    problems = _names(steps, where) + _dependencies(steps, where) + _paths(steps, where)
    if not any(p.problem in ("unknown_dependency", "self_dependency") for p in problems):
        problems += _cycles(steps, where)
    return problems


def check_build_steps(steps: list[Step], where: str = "build.steps") -> list[Problem]:
    """A build's steps run in order, one after the other: only their paths are checked, and a graph field
    is refused rather than ignored."""
    problems = _paths(steps, where)
    for index, step in enumerate(steps):
        for field, set_ in (("depends_on", bool(step.depends_on)), ("when", step.when != "on_success")):
            if set_:
                message = f"build step {step.name!r}: a build's steps run in order and take no {field}"
                key = f"{where}[{index}].{field}"
                problems.append(Problem(key=key, problem="not_supported", step=step.name, message=message))
    return problems


def _names(steps: list[Step], where: str) -> list[Problem]:
    seen: dict[str, list[int]] = {}
    for index, step in enumerate(steps):
        seen.setdefault(step.name, []).append(index)
    return [
        Problem(
            key=where,
            problem="duplicate_name",
            step=name,
            message=f"step names must be unique: {name!r} names "
            + ", ".join(f"{where}[{index}]" for index in indices),
        )
        for name, indices in seen.items()
        if len(indices) > 1
    ]


def _dependencies(steps: list[Step], where: str) -> list[Problem]:
    names = {step.name for step in steps}
    problems = []
    for index, step in enumerate(steps):
        for position, name in enumerate(step.depends_on):
            key = f"{where}[{index}].depends_on[{position}]"
            if name == step.name:
                problem, message = "self_dependency", f"step {step.name!r} depends on itself"
            elif name not in names:
                problem = "unknown_dependency"
                message = f"step {step.name!r} depends on {name!r}, which is not a step of this configuration"
            else:
                continue
            problems.append(Problem(key=key, problem=problem, step=step.name, message=message))
    return problems


def _paths(steps: list[Step], where: str) -> list[Problem]:
    problems = []
    for index, step in enumerate(steps):
        for field in ("cache_dirs", "output_paths"):
            for position, path in enumerate(getattr(step, field)):
                if (why := path_problem(path)) is not None:
                    problems.append(
                        Problem(
                            key=f"{where}[{index}].{field}[{position}]",
                            problem="path_escape",
                            step=step.name,
                            message=f"{field} entry {path!r} of step {step.name!r} {why}",
                        )
                    )
    return problems


def _cycles(steps: list[Step], where: str) -> list[Problem]:
    """One cycle per strongly connected part of the graph that has one, each named in order."""
    graph = dependencies(steps)
    problems = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue  # a self-dependency is reported on its own
        cycle = _cycle_within(graph, set(component), min(component))
        names = tuple(steps[index].name for index in cycle)
        message = "the steps' dependencies form a cycle: " + " → ".join(names)
        problems.append(Problem(key=where, problem="cycle", message=message, cycle=names))
    return problems


def _strongly_connected(graph: list[list[int]]) -> list[list[int]]:
    """Tarjan's algorithm, iterative (no recursion limit for long chains); components in discovery order."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []
    counter = 0
    for root in range(len(graph)):
        if root in index_of:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            node, edge = work.pop()
            if edge == 0:
                index_of[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if edge < len(graph[node]):
                work.append((node, edge + 1))
                child = graph[node][edge]
                if child not in index_of:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index_of[child])
                continue
            if low[node] == index_of[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_within(graph: list[list[int]], component: set[int], start: int) -> list[int]:
    """A cycle through `start` inside its strongly connected component, in dependency order: `start`
    depends on the next step, and so on back to `start`."""
    path, seen = [start], {start}
    while True:
        node = path[-1]
        if start in graph[node] and len(path) > 1:
            return [*path, start]
        step = next((n for n in graph[node] if n in component and n not in seen), None)
        if step is None:  # dead end within the component: back up
            path.pop()
            if not path:  # cannot happen in a strongly connected component
                return [start, start]
            continue
        path.append(step)
        seen.add(step)
