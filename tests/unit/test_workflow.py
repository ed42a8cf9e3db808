"""The graph checks a configuration's steps pass when it is saved, and the dependencies the scheduler
follows (`ade.core.workflow`)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ade.core import workflow
from ade.core.models import Step


def steps(*specs: dict[str, Any]) -> list[Step]:
    return [msgspec.convert({"script": "true", **spec}, Step) for spec in specs]


def problems_of(*specs: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.problem, p.key) for p in workflow.check(steps(*specs))]


def test_a_sequence_without_depends_on_makes_each_step_depend_on_every_earlier_one() -> None:
    plan = steps({"name": "a"}, {"name": "b"}, {"name": "c", "when": "always"})
    assert not workflow.is_graph(plan)
    assert workflow.dependencies(plan) == [[], [0], [0, 1]]
    assert workflow.check(plan) == []


def test_with_depends_on_a_step_without_it_is_a_root() -> None:
    plan = steps(
        {"name": "d", "depends_on": ["b", "c", "b"]},
        {"name": "b", "depends_on": ["a"]},
        {"name": "c", "depends_on": ["a"]},
        {"name": "a"},
    )
    assert workflow.is_graph(plan)
    assert workflow.dependencies(plan) == [[1, 2], [3], [3], []]  # each once, in the order given
    assert workflow.check(plan) == []


def test_a_cycle_is_named_with_its_steps_in_order() -> None:
    plan = steps(
        {"name": "a", "depends_on": ["c"]},
        {"name": "b", "depends_on": ["a"]},
        {"name": "c", "depends_on": ["b"]},
        {"name": "free"},
    )
    [problem] = workflow.check(plan)
    assert problem.problem == "cycle" and problem.key == "steps"
    assert problem.cycle == ("a", "c", "b", "a")  # a depends on c, which depends on b, which depends on a
    assert "a → c → b → a" in problem.message
    assert problem.detail()["cycle"] == ["a", "c", "b", "a"]


def test_every_separate_cycle_is_reported_once() -> None:
    plan = steps(
        {"name": "a", "depends_on": ["b"]},
        {"name": "b", "depends_on": ["a", "c"]},
        {"name": "c", "depends_on": ["b"]},  # a ⇄ b ⇄ c: one strongly connected part
        {"name": "x", "depends_on": ["y"]},
        {"name": "y", "depends_on": ["x"]},
    )
    cycles = [p.cycle for p in workflow.check(plan)]
    assert cycles == [("a", "b", "a"), ("x", "y", "x")]


def test_a_long_chain_is_checked_without_recursion() -> None:
    chain = [{"name": f"s{i}", "depends_on": [f"s{i - 1}"]} for i in range(1, 5000)]
    plan = steps({"name": "s0", "depends_on": ["s4999"]}, *chain)
    [problem] = workflow.check(plan)
    assert problem.problem == "cycle" and len(problem.cycle) == 5001


def test_unknown_and_self_dependencies_are_named_where_they_are() -> None:
    assert problems_of(
        {"name": "a", "depends_on": ["a"]},
        {"name": "b", "depends_on": ["a", "nope"]},
    ) == [("self_dependency", "steps[0].depends_on[0]"), ("unknown_dependency", "steps[1].depends_on[1]")]
    [unknown] = workflow.check(steps({"name": "b", "depends_on": ["nope"]}))
    assert unknown.step == "b" and "'nope'" in unknown.message


def test_duplicate_names_are_refused() -> None:
    [problem] = workflow.check(steps({"name": "same"}, {"name": "other"}, {"name": "same"}))
    assert (problem.problem, problem.key, problem.step) == ("duplicate_name", "steps", "same")
    assert "steps[0], steps[2]" in problem.message


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/etc", "absolute"),
        ("../up", "'..'"),
        ("a/../../b", "'..'"),
        ("a/..", "'..'"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
    ],
)
def test_a_path_that_could_leave_the_work_directory_is_refused(path: str, why: str) -> None:
    for field in ("cache_dirs", "output_paths"):
        [problem] = workflow.check(steps({"name": "s", field: ["ok/dir", path]}))
        assert (problem.problem, problem.key, problem.step) == ("path_escape", f"steps[0].{field}[1]", "s")
        assert why in problem.message


@pytest.mark.parametrize("path", ["dist", "./build/out", "reports/**/*.xml", "a..b", "..hidden", ".cache"])
def test_paths_inside_the_work_directory_are_fine(path: str) -> None:
    assert workflow.path_problem(path) is None


def test_build_steps_take_paths_but_no_graph_fields() -> None:
    build = steps({"name": "a"}, {"name": "b", "depends_on": ["a"], "when": "always", "cache_dirs": ["/x"]})
    found = [(p.problem, p.key) for p in workflow.check_build_steps(build)]
    assert found == [
        ("path_escape", "build.steps[1].cache_dirs[0]"),
        ("not_supported", "build.steps[1].depends_on"),
        ("not_supported", "build.steps[1].when"),
    ]


def test_msgspec_checks_each_field() -> None:
    for bad in (
        {"name": "s", "when": "sometimes"},
        {"name": "s", "output_when": "on_failure"},
        {"name": "s", "depends_on": ["not a name"]},
        {"name": "s", "cache_key": ""},
        {"name": "s", "cache_key": "k" * 513},
        {"name": "s", "cache_dirs": [""]},
        {"name": "s", "cache_dirs": ["d"] * 21},
    ):
        with pytest.raises(msgspec.ValidationError):
            steps(bad)
    [step] = steps({"name": "s", "cache_key": "deps-{{ hashFiles('requirements*.txt') }}"})
    assert step.cache_key and step.when == "on_success" and step.output_when == "on_success"
