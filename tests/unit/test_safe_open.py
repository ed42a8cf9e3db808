"""Opening run files without following links: the helper, and the event log's readers and appender."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ade.core.errors import LogWriteFailed
from ade.core.safe_open import open_no_follow
from ade.events import eventlog
from ade.events.envelope import StreamRef


def test_every_component_is_opened_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "real" / "dir").mkdir(parents=True)
    (tmp_path / "real" / "dir" / "f").write_bytes(b"data")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real" / "dir" / "to-passwd").symlink_to("/etc/passwd")
    fd = open_no_follow(tmp_path, "real/dir/f")
    assert os.read(fd, 10) == b"data"
    os.close(fd)
    for relative in ("link/dir/f", "real/dir/to-passwd", "real/dir", "real/dir/f/x", "real/../real/dir/f"):
        with pytest.raises(FileNotFoundError):
            open_no_follow(tmp_path, relative)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError):
        open_no_follow(tmp_path, "pipe")


def test_a_log_replaced_by_a_symlink_reads_as_missing(tmp_path: Path) -> None:
    stream = StreamRef.for_run(tmp_path, "run_x")
    stream.log_path.parent.mkdir(parents=True)
    stream.log_path.symlink_to("/etc/hostname")
    assert eventlog.tail(stream.log_path) is None
    assert eventlog.offset_after(stream.log_path, 3) == 0
    assert eventlog.read_lines(stream.log_path, 0, 10).lines == []
    with pytest.raises(LogWriteFailed):  # the appender never writes through it either
        eventlog.LogWriter(stream.log_path)


def test_a_logs_directory_replaced_by_a_link_to_another_runs_reads_as_missing(tmp_path: Path) -> None:
    theirs = StreamRef.for_run(tmp_path, "run_theirs")
    theirs.log_path.parent.mkdir(parents=True)
    theirs.log_path.write_bytes(b'{"sequence":1,"type":"run.queued"}\n')
    mine = StreamRef.for_run(tmp_path, "run_mine")
    mine.log_path.parent.parent.mkdir(parents=True)
    mine.log_path.parent.symlink_to(theirs.log_path.parent, target_is_directory=True)
    assert eventlog.read_lines(theirs.log_path, 0, 10).lines != []
    assert eventlog.read_lines(mine.log_path, 0, 10).lines == []
    assert eventlog.tail(mine.log_path) is None
