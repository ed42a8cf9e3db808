"""The rule of which step may start and which is skipped (`ade.core.step_rules`), shared by the worker's
scheduler and step mode: pure decisions over the steps' statuses."""

from __future__ import annotations

from typing import Any

from ade.core.models import Step
from ade.core.step_rules import failures_above, settle, waiting_on
from ade.core.workflow import dependencies


def steps(*specs: tuple[str, dict[str, Any]]) -> list[Step]:
    return [Step(name=name, script="true", **extra) for name, extra in specs]


SEQUENCE = steps(("a", {}), ("b", {}), ("c", {"when": "always"}), ("d", {"when": "on_failure"}))
GRAPH = steps(
    ("build", {}),
    ("lint", {}),
    ("test", {"depends_on": ["build"]}),
    ("notify", {"depends_on": ["test"], "when": "on_failure"}),
    ("cleanup", {"depends_on": ["test"], "when": "always"}),
    ("publish", {"depends_on": ["test", "lint"]}),
)


def test_a_sequence_starts_with_its_first_step_only() -> None:
    assert settle(SEQUENCE, ["pending"] * 4) == ([0], [])


def test_in_a_sequence_each_step_waits_for_the_one_before() -> None:
    assert settle(SEQUENCE, ["running", "pending", "pending", "pending"]) == ([], [])
    assert settle(SEQUENCE, ["succeeded", "pending", "pending", "pending"]) == ([1], [])


def test_a_failure_in_a_sequence_skips_on_success_steps_and_runs_always_and_on_failure() -> None:
    ready, skips = settle(SEQUENCE, ["failed", "pending", "pending", "pending"])
    assert skips == [(1, "an earlier step ('a') failed")]
    assert ready == [2]  # `always`; `on_failure` waits for it (it depends on every earlier step)
    ready, skips = settle(SEQUENCE, ["failed", "skipped", "succeeded", "pending"])
    assert (ready, skips) == ([3], [])


def test_on_failure_is_skipped_when_nothing_failed() -> None:
    ready, skips = settle(SEQUENCE, ["succeeded", "succeeded", "succeeded", "pending"])
    assert (ready, skips) == ([], [(3, "no earlier step failed")])


def test_independent_steps_of_a_graph_are_ready_together() -> None:
    assert settle(GRAPH, ["pending"] * 6) == ([0, 1], [])


def test_a_failed_dependency_skips_its_dependents_transitively_and_starts_the_cleanup() -> None:
    status = ["failed", "succeeded", "pending", "pending", "pending", "pending"]
    ready, skips = settle(GRAPH, status)
    assert skips == [(2, "dependency 'build' failed"), (5, "dependency 'test' was skipped")]
    # `notify` runs: a step above it (build) failed, though its own dependency was skipped.
    assert ready == [3, 4]


def test_a_graph_that_succeeded_skips_its_on_failure_step() -> None:
    status = ["succeeded", "succeeded", "succeeded", "pending", "pending", "pending"]
    assert settle(GRAPH, status) == ([4, 5], [(3, "none of its dependencies failed")])


def test_ended_steps_are_neither_ready_nor_skipped() -> None:
    assert settle(GRAPH, ["succeeded"] * 6) == ([], [])


def test_what_a_step_waits_on() -> None:
    deps = dependencies(GRAPH)
    status = ["succeeded", "running", "succeeded", "pending", "pending", "pending"]
    assert waiting_on(deps, status, 5) == [1]
    assert waiting_on(deps, status, 3) == []


def test_failures_propagate_down_the_graph_only() -> None:
    deps = dependencies(GRAPH)
    status = ["failed", "succeeded", "skipped", "pending", "pending", "pending"]
    assert failures_above(deps, status) == [True, False, True, True, True, True]
