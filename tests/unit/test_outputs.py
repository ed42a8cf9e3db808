"""Output files: listing, confinement of download paths to the output directory, and Range parsing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ade.core.errors import AdeError, Invalid, NotFound
from ade.records.outputs import (
    OutputFile,
    RangeNotSatisfiable,
    list_outputs,
    open_output,
    outputs_size,
    parse_range,
)


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """runs/<id>/outputs with nested files, and a secret next to it that no path may reach."""
    out = tmp_path / "run" / "outputs"
    (out / "reports" / "2024").mkdir(parents=True)
    (out / "report.txt").write_bytes(b"done\n")
    (out / "reports" / "summary.json").write_bytes(b"{}")
    (out / "reports" / "2024" / "data.bin").write_bytes(b"\x00" * 3000)
    (out / "empty").mkdir()
    (tmp_path / "run" / "secret.txt").write_bytes(b"secret")
    return out


def read(output_dir: Path, requested: str, root: Path | None = None) -> bytes:
    with open_output(output_dir, requested, root=root) as handle:
        return handle.read()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def add_symlinks(out: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stolen.txt").write_bytes(b"stolen")
    (out / "passwd").symlink_to("/etc/passwd")
    (out / "inside-link.txt").symlink_to(out / "report.txt")
    (out / "linked-dir").symlink_to(outside, target_is_directory=True)
    (out / "reports" / "secret-link").symlink_to(tmp_path / "run" / "secret.txt")


# list_outputs ----------------------------------------------------------------------------------------


def test_list_outputs_walks_nested_directories_sorted(outputs: Path) -> None:
    assert list_outputs(outputs) == [
        OutputFile(path="report.txt", size=5, content_type="text/plain", sha256=sha(b"done\n")),
        OutputFile(
            path="reports/2024/data.bin",
            size=3000,
            content_type="application/octet-stream",
            sha256=sha(b"\x00" * 3000),
        ),
        OutputFile(path="reports/summary.json", size=2, content_type="application/json", sha256=sha(b"{}")),
    ]


def test_list_outputs_hashes_files_larger_than_one_chunk(tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 * 2 + 7)
    (tmp_path / "big.unknownext").write_bytes(data)
    [big] = list_outputs(tmp_path)
    assert (big.size, big.sha256, big.content_type) == (len(data), sha(data), "application/octet-stream")


def test_list_outputs_skips_symlinks_and_never_enters_symlinked_dirs(outputs: Path, tmp_path: Path) -> None:
    add_symlinks(outputs, tmp_path)
    paths = [output.path for output in list_outputs(outputs)]
    assert paths == ["report.txt", "reports/2024/data.bin", "reports/summary.json"]


def test_list_outputs_of_a_missing_or_symlinked_directory_is_empty(outputs: Path, tmp_path: Path) -> None:
    assert list_outputs(tmp_path / "nope") == []
    link = tmp_path / "outputs-link"
    link.symlink_to(outputs, target_is_directory=True)
    assert list_outputs(link) == []


def test_list_outputs_skips_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_bytes(b"x")
    assert [output.path for output in list_outputs(tmp_path)] == ["file"]


# open_output ----------------------------------------------------------------------------------------


def test_open_output_finds_nested_files(outputs: Path) -> None:
    assert read(outputs, "reports/2024/data.bin") == b"\x00" * 3000
    assert read(outputs, "report.txt") == b"done\n"
    assert read(outputs, "./reports//summary.json") == b"{}"


@pytest.mark.parametrize(
    "requested",
    [
        "",
        "..",
        "../secret.txt",
        "/etc/passwd",
        "a/../../x",
        "reports/../report.txt",  # `..` is refused even when it would stay inside
        "%2e%2e/x",
        "%2E%2E/secret.txt",
        "..%2fx",
        "..%2Fsecret.txt",
        "%2fetc%2fpasswd",
        "reports\\..\\..\\secret.txt",
        "a\\b",
        "report.txt\x00.png",
        "report.txt%00",
        ".",
        "./",
    ],
)
def test_open_output_rejects_traversal_as_invalid_path(outputs: Path, requested: str) -> None:
    with pytest.raises(Invalid) as caught:
        open_output(outputs, requested)
    assert caught.value.code == "invalid_path"


@pytest.mark.parametrize(
    "requested",
    [
        "missing.txt",
        "reports",  # a directory
        "empty",
        "reports/2024",
        "report.txt/x",  # a file used as a directory
        "passwd",  # symlink to /etc/passwd
        "inside-link.txt",  # symlink, even to a file inside
        "linked-dir/stolen.txt",  # symlinked parent directory
        "reports/secret-link",  # symlink inside a real directory, pointing outside
        "x" * 300,  # name too long for the filesystem
    ],
)
def test_open_output_treats_non_files_and_symlinks_as_absent(
    outputs: Path, tmp_path: Path, requested: str
) -> None:
    add_symlinks(outputs, tmp_path)
    with pytest.raises(NotFound) as caught:
        open_output(outputs, requested)
    assert caught.value.code == "output_not_found"


def test_open_output_refuses_an_output_dir_replaced_by_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_bytes(b"secret")
    out = tmp_path / "outputs"
    out.symlink_to(tmp_path, target_is_directory=True)  # a step did `rm -r $ADE_OUTPUT_DIR; ln -s .. …`
    with pytest.raises(NotFound):
        open_output(out, "secret.txt")


def test_open_output_accepts_odd_but_harmless_names(outputs: Path) -> None:
    (outputs / "100%.txt").write_bytes(b"full")
    (outputs / "a%20b.txt").write_bytes(b"literal")
    (outputs / "...").write_bytes(b"dots")
    assert read(outputs, "100%.txt") == b"full"
    assert read(outputs, "a%20b.txt") == b"literal"  # looked up as requested
    assert read(outputs, "...") == b"dots"


def test_open_output_refuses_fifos_without_waiting_for_a_writer(outputs: Path) -> None:
    os.mkfifo(outputs / "pipe")
    with pytest.raises(NotFound):
        open_output(outputs, "pipe")


def test_every_component_below_the_root_is_checked(tmp_path: Path) -> None:
    """A run directory swapped for a link to another run's: with the data directory as the root, the
    outputs below the link are neither served, listed nor counted."""
    other = tmp_path / "runs" / "run_other" / "outputs"
    other.mkdir(parents=True)
    (other / "theirs.txt").write_bytes(b"another tenant's")
    (tmp_path / "runs" / "run_mine").symlink_to(other.parent, target_is_directory=True)
    mine = tmp_path / "runs" / "run_mine" / "outputs"
    assert read(mine, "theirs.txt") == b"another tenant's"  # what the old check on outputs/ alone allowed
    with pytest.raises(NotFound):
        open_output(mine, "theirs.txt", root=tmp_path)
    assert list_outputs(mine, root=tmp_path) == []
    assert outputs_size(mine, root=tmp_path) == (0, 0)


def test_an_open_output_stays_the_file_that_was_checked(outputs: Path) -> None:
    with open_output(outputs, "report.txt") as handle:
        (outputs / "report.txt").unlink()
        (outputs / "report.txt").symlink_to("/etc/passwd")
        assert handle.read() == b"done\n"


def test_outputs_size_counts_regular_files_only(outputs: Path, tmp_path: Path) -> None:
    add_symlinks(outputs, tmp_path)
    os.mkfifo(outputs / "pipe")
    assert outputs_size(outputs) == (5 + 2 + 3000, 3)
    with open(outputs / "sparse", "wb") as handle:
        handle.truncate(10**9)  # a sparse file counts its apparent size
    assert outputs_size(outputs) == (5 + 2 + 3000 + 10**9, 4)


def test_deep_directories_are_neither_listed_nor_served(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d"] * 70)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    (tmp_path / "top").write_bytes(b"y")
    assert [output.path for output in list_outputs(tmp_path)] == ["top"]
    with pytest.raises(NotFound):
        open_output(tmp_path, "/".join(["d"] * 70 + ["f"]))


# parse_range -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),  # suffix longer than the file: all of it
        ("bytes=50-5000", 100, (50, 99)),  # end clipped
        ("bytes=99-99", 100, (99, 99)),
        ("bytes=0-0", 1, (0, 0)),
        ("Bytes=1-2", 100, (1, 2)),  # the unit is case-insensitive
        ("  bytes=1-2  ", 100, (1, 2)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: serve the whole file
        ("bytes=0-1, 200-300", 100, None),
        ("bytes=5-2", 100, None),  # malformed: ignored
        ("bytes=-", 100, None),
        ("bytes=", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=1-2-3", 100, None),
        ("bytes=-1-2", 100, None),
        ("bytes = 1-2", 100, None),
        ("items=0-1", 100, None),
        ("bytes=０-1", 100, None),  # fullwidth digit  # noqa: RUF001
        ("bytes=²-3", 100, None),  # superscript: str.isdigit() says yes
        ("", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=500-", 100), ("bytes=-0", 100), ("bytes=0-", 0)],
)
def test_unsatisfiable_range_is_416(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    error: AdeError = caught.value
    assert (error.status_code, error.code, caught.value.size) == (416, "range_not_satisfiable", size)


def test_empty_file_suffix_range_is_416() -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-5", 0)
