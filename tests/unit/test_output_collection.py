"""Declared outputs below the HTTP layer (`ade.execution.outputs`, `ade.records.outputs`): glob matching
without following links, copying into the outputs without writing through links, putting files written to
$ADE_OUTPUT_DIR down to the step that ran, the last writer winning, the steps a failed-only re-run keeps,
and archives streamed in bounded pieces that hold exactly the outputs."""

from __future__ import annotations

import io
import os
import tarfile
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ade.core import paths
from ade.core.models import Plan, Run, Step, StepOutput, StepState
from ade.execution.outputs import (
    MAX_STEP_OUTPUTS,
    _Refused,
    _Window,
    copy_file,
    gather,
    glob_regex,
    kept_steps,
    match_files,
)
from ade.records.outputs import (
    ARCHIVE_PIECE_BYTES,
    PARTIAL_PREFIX,
    list_outputs,
    owners_of,
    tar_gz_pieces,
    zip_pieces,
)

RUN = "run_01TEST"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    run_dir = paths.run_dir(tmp_path, RUN)
    run_dir.work.mkdir(parents=True)
    run_dir.outputs.mkdir(parents=True)
    return tmp_path


def work(data_dir: Path) -> Path:
    return paths.run_dir(data_dir, RUN).work


def outputs(data_dir: Path) -> Path:
    return paths.run_dir(data_dir, RUN).outputs


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def work_below(data_dir: Path) -> list[str]:
    return list(work(data_dir).relative_to(data_dir).parts)


def step(name: str = "s", **fields: object) -> Step:
    return Step(name=name, script="true", **fields)  # type: ignore[arg-type]


NOW_NS = time.time_ns()
ONLY_THIS = _Window(NOW_NS - 60 * 10**9, [])


# Matching --------------------------------------------------------------------------------------------


def test_globs_match_components_double_stars_and_classes() -> None:
    assert glob_regex("reports/*.xml").fullmatch("reports/a.xml")
    assert not glob_regex("reports/*.xml").fullmatch("reports/sub/a.xml")
    assert glob_regex("**/*.xml").fullmatch("a.xml") and glob_regex("**/*.xml").fullmatch("x/y/a.xml")
    assert glob_regex("dist/**").fullmatch("dist/a/b")
    assert glob_regex("log-?.[ab]").fullmatch("log-1.a")
    assert not glob_regex("log-?.[!ab]").fullmatch("log-1.a")
    assert glob_regex("./out//x.txt").fullmatch("out/x.txt")
    assert glob_regex("*").fullmatch(".hidden")


def test_matching_follows_no_link_and_reports_patterns_that_matched_nothing(data_dir: Path) -> None:
    root = work(data_dir)
    write(root / "reports" / "unit.xml", b"<u/>")
    write(root / "reports" / "deep" / "more.xml", b"<m/>")
    write(root / "dist" / "app.bin", b"app")
    write(root / "dist" / "lib" / "x.so", b"so")
    write(root / "notes.txt", b"n")
    outside = data_dir / "outside"
    write(outside / "secret.xml", b"secret")
    (root / "reports" / "passwd.xml").symlink_to("/etc/passwd")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "notes-link.txt").symlink_to(root / "notes.txt")
    patterns = ["**/*.xml", "dist", "notes*.txt", "missing/*.log"]
    found, unmatched = match_files(data_dir, work_below(data_dir), patterns)
    assert found == {
        "reports/unit.xml": 4,
        "reports/deep/more.xml": 4,
        "dist/app.bin": 3,
        "dist/lib/x.so": 2,
        "notes.txt": 1,
    }
    assert unmatched == ["missing/*.log"]
    assert match_files(data_dir, work_below(data_dir), ["notes-link.txt", "linked/*"]) == (
        {},
        ["notes-link.txt", "linked/*"],
    )


# Copying ---------------------------------------------------------------------------------------------


def test_a_copy_never_writes_through_a_link_planted_in_the_outputs(data_dir: Path) -> None:
    write(work(data_dir) / "reports" / "r.txt", b"report")
    write(work(data_dir) / "top.txt", b"top")
    outside = data_dir / "outside"
    write(outside / "victim.txt", b"victim")
    (outputs(data_dir) / "reports").symlink_to(outside, target_is_directory=True)
    (outputs(data_dir) / "top.txt").symlink_to(outside / "victim.txt")
    below = list(outputs(data_dir).relative_to(data_dir).parts)
    with pytest.raises(_Refused):
        copy_file(data_dir, [*work_below(data_dir), "reports", "r.txt"], below, ["reports", "r.txt"], None)
    assert copy_file(data_dir, [*work_below(data_dir), "top.txt"], below, ["top.txt"], None) == 3
    assert (outside / "victim.txt").read_bytes() == b"victim" and not (outside / "r.txt").exists()
    assert not (outputs(data_dir) / "top.txt").is_symlink()
    assert (outputs(data_dir) / "top.txt").read_bytes() == b"top"
    assert not [p for p in outputs(data_dir).iterdir() if p.name.startswith(PARTIAL_PREFIX)]


# Gathering -------------------------------------------------------------------------------------------


def test_declared_outputs_are_copied_and_direct_ones_put_down_to_the_step(data_dir: Path) -> None:
    write(work(data_dir) / "reports" / "a.xml", b"<a/>")
    write(outputs(data_dir) / "direct.txt", b"direct")
    found = gather(data_dir, RUN, step(), ["reports/*.xml"], {}, ONLY_THIS, 0)
    assert found.failure is None and found.notes == []
    assert found.outputs == [
        StepOutput(path="direct.txt", size=6, source="output_dir"),
        StepOutput(path="reports/a.xml", size=4, source="output_paths"),
    ]
    assert (outputs(data_dir) / "reports" / "a.xml").read_bytes() == b"<a/>"


def test_a_file_written_while_another_step_ran_has_no_step(data_dir: Path) -> None:
    write(outputs(data_dir) / "shared.txt", b"x")
    other_running = _Window(NOW_NS - 60 * 10**9, [(NOW_NS - 60 * 10**9, None)])
    assert gather(data_dir, RUN, step(), [], {}, other_running, 0).outputs == []
    before_this_step = _Window(time.time_ns() + 10**9, [])
    assert gather(data_dir, RUN, step(), [], {}, before_this_step, 0).outputs == []
    assert gather(data_dir, RUN, step(), [], {"shared.txt": "earlier"}, ONLY_THIS, 0).outputs == []


def test_the_last_writer_wins_and_says_whom_it_replaced(data_dir: Path) -> None:
    write(outputs(data_dir) / "out.txt", b"first")
    write(work(data_dir) / "out.txt", b"second")
    found = gather(data_dir, RUN, step("late"), ["out.txt"], {"out.txt": "early"}, ONLY_THIS, 0)
    assert found.outputs == [StepOutput(path="out.txt", size=6, source="output_paths", replaced="early")]
    assert found.notes == ["[ade] output 'out.txt' replaces step 'early''s output (the last writer wins)"]
    assert (outputs(data_dir) / "out.txt").read_bytes() == b"second"


def test_declared_outputs_past_the_run_limit_are_not_collected_and_fail_the_step(data_dir: Path) -> None:
    write(outputs(data_dir) / "already.bin", b"x" * 60)
    write(work(data_dir) / "big.bin", b"y" * 50)
    found = gather(data_dir, RUN, step(), ["*.bin"], {}, _Window(None, []), 100)
    assert found.failure is not None and found.failure.code == "resource_limit"
    assert "110 bytes" in found.failure.message and "limit of 100 bytes" in found.failure.message
    assert not (outputs(data_dir) / "big.bin").exists() and found.outputs == []


def test_a_step_records_at_most_its_share_of_outputs(data_dir: Path) -> None:
    for i in range(MAX_STEP_OUTPUTS + 1):
        write(work(data_dir) / "many" / f"{i}.txt", b"")
    found = gather(data_dir, RUN, step(), ["many"], {}, ONLY_THIS, 0)
    assert found.failure is not None and found.failure.code == "resource_limit" and found.outputs == []


# Owners and failed-only re-runs ----------------------------------------------------------------------


def at(seconds: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def state(name: str, status: str = "succeeded", *outputs: StepOutput, done: int = 0) -> StepState:
    return StepState(name=name, status=status, completed_at=at(done), outputs=list(outputs))  # type: ignore[arg-type]


def test_owners_follow_the_replaced_chain_whatever_the_completion_order() -> None:
    p = StepOutput(path="p", size=1, source="output_paths")
    states = [
        state("a", "succeeded", p, done=1),
        state("c", "succeeded", StepOutput(path="p", size=1, source="output_paths", replaced="b"), done=2),
        state("b", "succeeded", StepOutput(path="p", size=1, source="output_paths", replaced="a"), done=3),
        state("d", "succeeded", StepOutput(path="q", size=1, source="output_dir"), done=4),
    ]
    assert owners_of(states) == {"p": "c", "q": "d"}


def run_of(steps: list[Step], states: list[StepState]) -> Run:
    plan = Plan(configuration_id="cfg", name="c", steps=steps, environment={}, timeout_s=None)
    return Run(
        id="run_src",
        workspace_id="ws",
        configuration_id="cfg",
        status="failed",
        plan=plan,
        created_at=at(0),
        steps=states,
    )


def test_a_failed_only_rerun_keeps_what_succeeded_upstream_of_every_failure() -> None:
    chain = run_of(
        [step("one"), step("two"), step("three"), step("cleanup", when="always")],
        [state("one"), state("two", "failed"), state("three", "skipped"), state("cleanup")],
    )
    assert kept_steps(chain) == {0: "run_src"}
    graph = run_of(
        [
            step("a"),
            step("b", depends_on=["a"]),
            step("c", depends_on=["b"]),
            step("lint"),
            step("notify", depends_on=["b"], when="on_failure"),
        ],
        [
            StepState(name="a", status="succeeded", reused_from="run_first"),
            state("b", "failed"),
            state("c", "skipped"),
            state("lint"),
            state("notify"),
        ],
    )
    assert kept_steps(graph) == {0: "run_first", 3: "run_src"}


# Archives --------------------------------------------------------------------------------------------


def archive_fixture(data_dir: Path) -> dict[str, bytes]:
    files = {
        "report.txt": b"done\n",
        "reports/deep/data.bin": os.urandom(3 * 1024 * 1024),
        "empty.txt": b"",
        "ünïcode name.txt": b"u",
    }
    for relative, data in files.items():
        write(outputs(data_dir) / relative, data)
    (outputs(data_dir) / "passwd").symlink_to("/etc/passwd")
    write(outputs(data_dir) / f"{PARTIAL_PREFIX}abc", b"half-copied")
    return files


def test_a_tar_gz_holds_exactly_the_outputs_and_comes_in_bounded_pieces(data_dir: Path) -> None:
    files = archive_fixture(data_dir)
    pieces = list(tar_gz_pieces(outputs(data_dir), root=data_dir))
    assert len(pieces) > 1 and max(map(len, pieces)) <= 3 * ARCHIVE_PIECE_BYTES
    with tarfile.open(fileobj=io.BytesIO(b"".join(pieces)), mode="r:gz") as archive:
        members = archive.getmembers()
        assert all(member.isreg() and member.mode == 0o644 for member in members)
        got = {m.name: archive.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    assert got == files


def test_a_zip_holds_exactly_the_outputs_and_can_be_filtered(data_dir: Path) -> None:
    files = archive_fixture(data_dir)
    pieces = list(zip_pieces(outputs(data_dir), root=data_dir))
    assert max(map(len, pieces)) <= 3 * ARCHIVE_PIECE_BYTES
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == files
    only = b"".join(zip_pieces(outputs(data_dir), root=data_dir, include=lambda path: path.endswith(".txt")))
    with zipfile.ZipFile(io.BytesIO(only)) as archive:
        assert sorted(archive.namelist()) == ["empty.txt", "report.txt", "ünïcode name.txt"]
    empty = outputs(data_dir) / "none"
    empty.mkdir()
    with zipfile.ZipFile(io.BytesIO(b"".join(zip_pieces(empty, root=data_dir)))) as archive:
        assert archive.namelist() == []


def test_the_listing_carries_each_files_step(data_dir: Path) -> None:
    write(outputs(data_dir) / "a.txt", b"a")
    write(outputs(data_dir) / "b.txt", b"b")
    listed = list_outputs(outputs(data_dir), root=data_dir, owners={"a.txt": "build"})
    assert [(item.path, item.step) for item in listed] == [("a.txt", "build"), ("b.txt", None)]
