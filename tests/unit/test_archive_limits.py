"""Build source archives: refused before extraction past the unpacked-size and member-count limits."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from ade.core.errors import Invalid
from ade.execution.archives import unpack


def gz_bomb(path: Path, size: int) -> Path:
    """A tar.gz with one file of `size` zero bytes (it compresses about 1000:1)."""
    with tarfile.open(path, "w:gz") as bundle:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        bundle.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_a_tar_bomb_is_refused_from_its_headers_before_anything_is_written(tmp_path: Path) -> None:
    archive = gz_bomb(tmp_path / "bomb.tar.gz", 201 * 1024 * 1024)
    assert archive.stat().st_size < 300 * 1024
    started = time.monotonic()
    with pytest.raises(Invalid) as caught:
        unpack(archive, tmp_path / "out", max_bytes=100 * 1024 * 1024, max_members=100)
    assert time.monotonic() - started < 2  # the 201 MB are never inflated
    assert caught.value.code == "resource_limit"
    assert "ADE_MAX_ARCHIVE_UNPACKED_BYTES" in caught.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as bundle:
        for index in range(11):
            info = tarfile.TarInfo(f"f{index}")
            bundle.addfile(info, io.BytesIO(b""))
    with pytest.raises(Invalid) as caught:
        unpack(archive, tmp_path / "out", max_bytes=10**9, max_members=10)
    assert caught.value.code == "resource_limit" and "ADE_MAX_ARCHIVE_MEMBERS" in caught.value.message
    assert unpack(archive, tmp_path / "ok", max_bytes=10**9, max_members=11) == 11


def test_zip_limits(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a.bin", bytes(5 * 1024 * 1024))
        bundle.writestr("b.txt", b"small")
    with pytest.raises(Invalid) as caught:
        unpack(archive, tmp_path / "out", max_bytes=1024 * 1024, max_members=10)
    assert caught.value.code == "resource_limit"
    assert not (tmp_path / "out" / "a.bin").exists()
    with pytest.raises(Invalid) as caught:
        unpack(archive, tmp_path / "out", max_bytes=10**9, max_members=1)
    assert "ADE_MAX_ARCHIVE_MEMBERS" in caught.value.message
    assert unpack(archive, tmp_path / "ok", max_bytes=10**9, max_members=2) == 2
    assert (tmp_path / "ok" / "b.txt").read_bytes() == b"small"


def test_hard_links_count_what_they_extract(tmp_path: Path) -> None:
    """Extraction is guarded too: a hard link declares no size but extracts as a whole file."""
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as bundle:
        info = tarfile.TarInfo("big")
        info.size = 600
        bundle.addfile(info, io.BytesIO(bytes(600)))
        link = tarfile.TarInfo("again")
        link.type, link.linkname = tarfile.LNKTYPE, "big"
        bundle.addfile(link)
    with pytest.raises(Invalid) as caught:
        unpack(archive, tmp_path / "out", max_bytes=1000, max_members=10)
    assert caught.value.code == "resource_limit" and "unpacked to more than" in caught.value.message
