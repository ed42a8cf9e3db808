"""A build's source archive, unpacked safely: no member may escape its directory, and an archive past the
size limits is refused before it is inflated (an archive bomb never is)."""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ade.core.errors import Invalid


def check_member(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")) or (name[1:2] == ":"):
        raise Invalid(
            f"the source archive has a member escaping its directory: {name!r}", code="unsafe_archive"
        )


class ArchiveTooLarge(Invalid):
    """A source archive past ADE_MAX_ARCHIVE_UNPACKED_BYTES or ADE_MAX_ARCHIVE_MEMBERS: the build fails
    `resource_limit` (the `source` phase turns every `Invalid` into the build's failure)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="resource_limit")


BYTES_SETTING = "source_limits.unpacked_bytes, at most ADE_MAX_ARCHIVE_UNPACKED_BYTES"
MEMBERS_SETTING = "source_limits.members, at most ADE_MAX_ARCHIVE_MEMBERS"


def _over(what: str, limit: int, setting: str) -> ArchiveTooLarge:
    return ArchiveTooLarge(f"the source archive {what}, over the limit of {limit} ({setting})")


class _Limits:
    """Running totals against the limits: declared sizes before anything is written, then what was
    written (the guard during extraction)."""

    def __init__(self, max_bytes: int, max_members: int) -> None:
        unlimited = 2**63  # a maximum of 0: no maximum (as for every limit)
        self.max_bytes, self.max_members = max_bytes or unlimited, max_members or unlimited
        self.declared = self.written = self.members = 0

    def member(self, size: int) -> None:
        self.members += 1
        self.declared += size
        if self.members > self.max_members:
            raise _over(f"has more than {self.max_members} entries", self.max_members, MEMBERS_SETTING)
        if self.declared > self.max_bytes:
            raise _over(f"unpacks to more than {self.max_bytes} bytes", self.max_bytes, BYTES_SETTING)

    def extracted(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                self.written += info.st_size
        if self.written > self.max_bytes:
            raise _over(f"unpacked to more than {self.max_bytes} bytes", self.max_bytes, BYTES_SETTING)


def _zip_entries(archive: Path) -> int | None:
    """The entry count the zip's end record declares, read before its central directory is (a small
    archive can declare millions of entries, each a Python object once read)."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    with archive.open("rb") as handle:
        record = end_record(handle)
    return int(record[4]) if record else None  # zipfile._ECD_ENTRIES_TOTAL


def unpack(archive: Path, destination: Path, *, max_bytes: int, max_members: int) -> int:
    """Unpack a tar(.gz) or zip archive, refusing (not silently fixing) members that would escape, and
    archives past the limits (ADE_MAX_ARCHIVE_UNPACKED_BYTES, ADE_MAX_ARCHIVE_MEMBERS).

    The limits are checked before anything is extracted, from the sizes the members' headers declare
    (for a compressed tar, reading stops as soon as the declared total passes the limit, so a bomb is
    never inflated in full), and again during extraction, from the sizes of the files written.
    """
    limits = _Limits(max_bytes, max_members)
    destination.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        declared = _zip_entries(archive)
        if declared is not None and declared > limits.max_members:
            raise _over(f"declares {declared} entries", limits.max_members, MEMBERS_SETTING)
        with zipfile.ZipFile(archive) as bundle:
            infos = bundle.infolist()
            for info in infos:
                check_member(info.filename)
                limits.member(info.file_size)  # zipfile never reads past the declared size
            for info in infos:
                limits.extracted(Path(bundle.extract(info, destination)))
            return len(infos)
    try:
        with tarfile.open(archive, "r:*") as bundle:
            members: list[tarfile.TarInfo] = []
            for member in bundle:  # headers only: stops at the first member past a limit
                check_member(member.name)
                if member.issym() or member.islnk():
                    check_member(member.linkname)
                limits.member(member.size if member.isreg() else 0)
                members.append(member)
            for member in members:
                # The data filter also refuses devices and links leaving the tree.
                bundle.extract(member, destination, filter="data")
                limits.extracted(destination / member.name)
            return len(members)
    except tarfile.TarError as exc:
        raise Invalid(
            f"the source artifact is not a tar or zip archive: {exc}", code="unsafe_archive"
        ) from exc
