"""Artifacts: uploaded files (source archives, input documents), content-addressed and owned by workspaces.

An artifact is named by its content, `sha256:<64 lowercase hex>`. The bytes are stored once, whoever uploads
them; what a workspace owns is a metadata record. Knowing a key is not enough to read an artifact: a
workspace sees only what it uploaded itself, and "not yours" looks exactly like "missing".

Layout under the data dir:

    artifacts/sha256/<hex[:2]>/<hex>   the bytes, once (read-only)
    artifacts/tmp/                     uploads in progress, hashed while they are written
    artifacts/index/<ws>.ndjson        one Artifact per line per (workspace, key): the durable metadata

Redis holds the fast index, `keys.workspace_artifacts(ws)` (hash: key → Artifact JSON); `reindex` rebuilds
it from the index files. As elsewhere in ADE, metadata goes to disk first, then to Redis.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable
from datetime import datetime
from pathlib import Path
from typing import cast

import anyio.to_thread
import msgspec
from redis.asyncio import Redis

from ade.core import keys, paths
from ade.core.errors import Invalid, TooLarge, not_found
from ade.core.models import utcnow

KEY_PREFIX = "sha256:"
_KEY = re.compile(r"sha256:[0-9a-f]{64}")
_WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # it names a file: no dots, no slashes
_CHUNK = 1024 * 1024
MAX_COMPONENT_BYTES = 255
MAX_INPUT_NAME_BYTES = 1024
_MAX_KEPT_SUFFIX_BYTES = 32


class Artifact(msgspec.Struct, kw_only=True):
    key: str  # "sha256:<hex>"
    workspace_id: str
    size: int
    content_type: str
    filename: str | None
    created_at: datetime


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Artifact)


def validate_key(key: str) -> str:
    """The hex digest of a well-formed key; `Invalid` (invalid_artifact_key) for anything else.

    Checked before a key touches Redis or the filesystem: a key becomes a path in `path_of`.
    """
    if not _KEY.fullmatch(key):
        raise Invalid(
            f"artifact key {key[:100]!r} is not 'sha256:' followed by 64 lowercase hex digits",
            code="invalid_artifact_key",
        )
    return key[len(KEY_PREFIX) :]


def sanitize_filename(filename: str | None) -> str | None:
    """A client's filename reduced to something safe to store and show again, or None if nothing is left.

    Keeps the base name only (either separator: browsers on Windows send `C:\\dir\\file`), drops NUL and
    every other non-printable character (a filename later ends up in headers and logs), and cuts it to
    255 UTF-8 bytes, keeping a short extension.
    """
    if filename is None:
        return None
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if char.isprintable()).strip()
    if name in ("", ".", ".."):
        return None
    if len(name.encode()) <= MAX_COMPONENT_BYTES:
        return name
    stem, dot, suffix = name.rpartition(".")
    kept = dot + suffix if stem and len((dot + suffix).encode()) <= _MAX_KEPT_SUFFIX_BYTES else ""
    head = (stem if kept else name).encode()[: MAX_COMPONENT_BYTES - len(kept.encode())]
    return head.decode("utf-8", "ignore") + kept  # "ignore": never end on half a character


def safe_input_name(name: str) -> str:
    """The normalised relative path a run gives an input file (`options.input_artifacts[].name`).

    One component or several separated by `/`; `.` and empty components are dropped. Rejected with
    `Invalid` (invalid_input_name): empty, absolute, `..`, NUL or backslash, a component over 255 bytes,
    a path over 1024 bytes (UTF-8). The result never leaves the directory it is joined to.
    """

    def invalid(reason: str) -> Invalid:
        return Invalid(f"input name {name[:100]!r} {reason}", code="invalid_input_name")

    if not name:
        raise invalid("is empty")
    if "\x00" in name or "\\" in name:
        raise invalid("contains NUL or a backslash")
    if name.startswith("/"):
        raise invalid("is absolute")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts:
        raise invalid("names no file")
    if ".." in parts:
        raise invalid("contains '..'")
    try:
        if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
            raise invalid(f"has a component over {MAX_COMPONENT_BYTES} bytes")
        normalised = "/".join(parts)
        if len(normalised.encode()) > MAX_INPUT_NAME_BYTES:
            raise invalid(f"is over {MAX_INPUT_NAME_BYTES} bytes")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise invalid("is not valid Unicode") from exc
    return normalised


class ArtifactStore:
    def __init__(self, redis: Redis, data_dir: Path) -> None:
        self.redis = redis
        self.root = paths.artifacts_dir(data_dir)

    # Paths -------------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The stored file of a (validated) key, whether or not it exists."""
        digest = validate_key(key)
        return self.root / "sha256" / digest[:2] / digest

    def index_path(self, workspace_id: str) -> Path:
        if not _WORKSPACE_ID.fullmatch(workspace_id):
            raise Invalid(f"workspace id {workspace_id[:100]!r} is malformed", code="invalid_workspace_id")
        return self.root / "index" / f"{workspace_id}.ndjson"

    # Writing -----------------------------------------------------------------------------------
    async def save(
        self,
        workspace_id: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        content_type: str,
        filename: str | None,
    ) -> Artifact:
        """Store an upload, hashing it as it streams in, and record it for the workspace.

        Stops reading the moment the upload passes `max_bytes` (TooLarge, artifact_too_large); an empty
        upload is Invalid (empty_artifact). Either way, and on any other failure, nothing is left behind.
        The same bytes again in the same workspace return the existing record unchanged (its filename,
        content type and created_at); in another workspace they add only a record (the file is shared).
        """
        index_path = self.index_path(workspace_id)
        filename = sanitize_filename(filename)
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            digest, size = hashlib.sha256(), 0
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(
                            f"artifact exceeds the limit of {max_bytes} bytes (ADE_MAX_ARTIFACT_BYTES)",
                            code="artifact_too_large",
                        )
                    digest.update(chunk)
                    _write_all(fd, chunk)
                if size == 0:
                    raise Invalid("artifact is empty", code="empty_artifact")
                await anyio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
            key = KEY_PREFIX + digest.hexdigest()
            self._place(tmp, self.path_of(key))
        except BaseException:
            _discard(tmp)
            raise
        return await self._record(
            index_path,
            Artifact(
                key=key,
                workspace_id=workspace_id,
                size=size,
                content_type=content_type,
                filename=filename,
                created_at=utcnow(),
            ),
        )

    def _place(self, tmp: Path, final: Path) -> None:
        """Move a hashed upload into place, or drop it when those bytes are already stored."""
        if final.exists():
            tmp.unlink()
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.chmod(0o444)  # content-addressed: never rewritten in place
        os.replace(tmp, final)  # a concurrent upload of the same bytes renames identical content

    async def _record(self, index_path: Path, artifact: Artifact) -> Artifact:
        """The workspace's record for this key: the existing one, else `artifact`, written to disk first.

        Two concurrent uploads of the same bytes to one workspace may both append a line; HSETNX picks
        one record for Redis and the other upload returns it. `reindex` keeps the first line per key, so
        after that rare race a rebuilt created_at may differ from the served one by the race's width.
        """
        hash_key = keys.workspace_artifacts(artifact.workspace_id)
        existing = await cast(Awaitable[bytes | None], self.redis.hget(hash_key, artifact.key))
        if existing is not None:
            return _decoder.decode(existing)
        line = _encoder.encode(artifact)
        _append_line(index_path, line)
        if await cast(Awaitable[int], self.redis.hsetnx(hash_key, artifact.key, line.decode())):
            return artifact
        winner = await cast(Awaitable[bytes | None], self.redis.hget(hash_key, artifact.key))
        return artifact if winner is None else _decoder.decode(winner)

    async def reindex(self) -> int:
        """Rebuild the Redis records from the index files (after Redis lost them); returns how many were
        missing. The first line per (workspace, key) wins; a torn last line (a crash mid-append) is skipped.
        """
        restored = 0
        for line in await anyio.to_thread.run_sync(_index_lines, self.root / "index"):
            try:
                artifact = _decoder.decode(line)
            except msgspec.DecodeError:
                continue
            hash_key = keys.workspace_artifacts(artifact.workspace_id)
            restored += await cast(Awaitable[int], self.redis.hsetnx(hash_key, artifact.key, line.decode()))
        return restored

    # Reading -----------------------------------------------------------------------------------
    async def get(self, workspace_id: str, key: str) -> Artifact:
        """The workspace's record of `key`; `not_found` also when only other workspaces hold it."""
        validate_key(key)
        raw = await cast(
            Awaitable[bytes | None], self.redis.hget(keys.workspace_artifacts(workspace_id), key)
        )
        if raw is None:
            raise not_found("artifact", key)
        return _decoder.decode(raw)

    async def list_artifacts(self, workspace_id: str) -> list[Artifact]:
        """Every artifact the workspace uploaded, oldest first."""
        raws = await cast(
            Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.workspace_artifacts(workspace_id))
        )
        return sorted(map(_decoder.decode, raws.values()), key=lambda a: (a.created_at, a.key))

    async def copy_into(self, workspace_id: str, key: str, destination: Path) -> None:
        """Place a workspace's artifact at `destination` (a run's input), creating parent directories.

        A private copy, never a hard link: the stored file is shared by every workspace that uploaded
        those bytes, and a step (same uid) could chmod and rewrite a linked inode. On Linux the copy is
        made in the kernel (`copy_file_range`: a reflink on btrfs/XFS), so it stays cheap where it can.
        Written to a temp file then renamed, so a symlink already at `destination` is replaced, not followed.
        """
        await self.get(workspace_id, key)
        await anyio.to_thread.run_sync(_copy_file, self.path_of(key), destination)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _index_lines(index_dir: Path) -> list[bytes]:
    paths = sorted(index_dir.glob("*.ndjson")) if index_dir.is_dir() else []
    return [line for path in paths for line in path.read_bytes().splitlines()]


def _append_line(path: Path, line: bytes) -> None:
    """One write(2) with O_APPEND: concurrent appenders never interleave within a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        _write_all(fd, line + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_fd(source: int, destination: int) -> None:
    """Copy from the current offsets to the end: in the kernel when possible, else read/write."""
    if sys.platform == "linux":
        try:
            while os.copy_file_range(source, destination, 64 * _CHUNK):
                pass
            return
        except OSError:
            pass  # EXDEV, ENOSYS, EINVAL (old kernels, some filesystems): go on from where it stopped
    while chunk := os.read(source, _CHUNK):
        _write_all(destination, chunk)


def _copy_file(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name[:200]}.", suffix=".tmp")
    try:
        try:
            src = os.open(source, os.O_RDONLY)
            try:
                _copy_fd(src, fd)
            finally:
                os.close(src)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
