"""Step caches between runs (README "Caches"): a step's `cache_dirs` restored before it starts and saved
after it succeeds, keyed by workspace, configuration, step and `cache_key` (`ade.execution.cache_keys`).

On disk (`ade.core.paths.WorkspaceCaches`, never bound into a step):

    caches/<ws>/<cfg>/<step>/<key hash>/current     names the version a restore reads ("v-<ulid>")
    caches/<ws>/<cfg>/<step>/<key hash>/v-<ulid>/   a complete version: meta.json, used, tree/<i>/
    caches/<ws>/.tmp/<ulid>/                        a save being written
    caches/<ws>/.trash/…                            versions on their way out
    caches/<ws>/.lock                               serialises evictions and deletions

Atomicity. A save copies into `.tmp/<ulid>/` (holding an flock on it, so a sweep never takes a live one),
then, under an flock on the key's directory, renames it to `v-<ulid>` and replaces `current` (a temp file
renamed over it). A reader sees the old version or the new one, whole; a save killed half-way leaves a
`.tmp` directory the next sweep removes and `current` untouched. Two saves of the same key: the later
swap wins whole, the earlier version is discarded. A restore holds a shared flock on the version it copies
from; a version is only deleted under an exclusive one taken without waiting (else it stays until a
later sweep), after being renamed out of reach, so a restore never reads a version being deleted.

Use. `used` in a version is touched by every restore (and written by its save): its mtime is the
`last_used_at` that least-recently-used eviction orders by.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from ulid import ULID

from ade.core import paths
from ade.core.models import Run, Step
from ade.core.safe_open import open_directory
from ade.core.settings import Settings
from ade.execution.cache_copy import CopyError, OverLimit, Stopped, Tally, copy_tree, finish_dir
from ade.execution.cache_copy import open_or_make_dir as _open_or_make_dir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_VERSION = re.compile(r"^v-[0-9A-Z]{26}$")
_CURRENT, _META, _USED, _TREE, _LIVE = "current", "meta.json", "used", "tree", "LIVE"
ABANDONED_UNMARKED_S = 3600.0  # a `.tmp` save that died before marking itself live is removed after this


class CacheEntry(msgspec.Struct, kw_only=True):
    """One cache of a workspace: what a configuration's step saved under a key (the current version)."""

    configuration_id: str
    step: str
    key: str
    paths: list[str]  # the step's cache_dirs, relative to the work directory
    bytes: int
    files: int
    created_at: datetime  # when this version was saved
    last_used_at: datetime  # its last restore (or its save)
    run_id: str  # the run that saved it


class CacheList(msgspec.Struct, kw_only=True):
    items: list[CacheEntry]  # most recently used first
    total_bytes: int
    max_workspace_bytes: int  # ADE_MAX_WORKSPACE_CACHE_BYTES


_META_DECODER = msgspec.json.Decoder(CacheEntry)


@dataclass(frozen=True, slots=True)
class Restored:
    hit: bool
    bytes: int = 0
    files: int = 0


@dataclass(frozen=True, slots=True)
class Saved:
    saved: bool
    bytes: int = 0
    files: int = 0
    reason: str | None = None
    evicted: int = 0


def key_hash(key: str, cache_dirs: list[str]) -> str:
    """The key's directory name: the key and the step's cache_dirs (other dirs, another cache)."""
    return hashlib.sha256(json.dumps([key, cache_dirs]).encode()).hexdigest()[:40]


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def work_parts(run_id: str) -> list[str]:
    """The run's work directory as components below the data directory (opened without following)."""
    work = paths.run_dir(Path("/"), run_id).work
    return list(work.parts[1:])


def _owner(settings: Settings) -> int | None:
    """Whom restored files belong to: the sandbox uid when the worker is root (`prepare_dirs`)."""
    return settings.sandbox_uid if os.geteuid() == 0 else None


# Locks ----------------------------------------------------------------------------------------------


def _lock_entry(entry: Path) -> int:
    """An exclusive flock on the key's directory (made if missing), held by the returned fd. A directory
    removed while we waited (a deletion) is made again."""
    for _ in range(1000):
        try:
            entry.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(entry, _DIR_FLAGS)
        except FileNotFoundError:
            continue  # a parent was removed under us: again
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(entry, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(errno.EAGAIN, f"could not lock {entry}")


@contextlib.contextmanager
def _workspace_lock(caches: paths.WorkspaceCaches) -> Iterator[None]:
    caches.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(caches.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# Versions -------------------------------------------------------------------------------------------


def _current(entry: Path) -> str | None:
    try:
        name = (entry / _CURRENT).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return name if _VERSION.match(name) else None


def _set_current(entry: Path, version: str) -> None:
    temporary = entry / f".{_CURRENT}.{ULID()}"
    temporary.write_text(version)
    os.rename(temporary, entry / _CURRENT)


def _retire(caches: paths.WorkspaceCaches, directory: Path) -> bool:
    """Move a version (or an abandoned save) into the trash unless someone holds a lock on it (a restore
    reading it, a save writing it); True when it is gone from where it was. `_empty_trash` deletes it."""
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except FileNotFoundError:
        return True
    try:
        if not _try_lock(fd):
            return False
        caches.trash.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.rename(directory, caches.trash / f"{directory.name}-{ULID()}")  # out of reach, then deleted
    finally:
        os.close(fd)
    return True


def _empty_trash(caches: paths.WorkspaceCaches) -> None:
    """Delete what was retired (by anyone: also what a process that died half-way through left)."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(caches.trash):
            shutil.rmtree(caches.trash / name, ignore_errors=True)


def _collect_garbage(caches: paths.WorkspaceCaches, entry: Path) -> None:
    """Retire the key's versions that are not current (call with its lock held)."""
    current = _current(entry)
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(entry):
            if _VERSION.match(name) and name != current:
                _retire(caches, entry / name)


def _sweep(caches: paths.WorkspaceCaches) -> None:
    """Remove what dead processes left: saves nobody holds any more, half-deleted versions."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(caches.staging):
            live = (caches.staging / name / _LIVE).exists()
            if live or _age_s(name) > ABANDONED_UNMARKED_S:  # unmarked: its saver may be about to lock it
                _retire(caches, caches.staging / name)
    _empty_trash(caches)


def _age_s(ulid_text: str) -> float:
    try:
        return time.time() - ULID.from_str(ulid_text).timestamp
    except ValueError:
        return float("inf")


# Save -----------------------------------------------------------------------------------------------


def save(settings: Settings, run: Run, step: Step, key: str, stop: threading.Event | None = None) -> Saved:
    """Copy the step's cache_dirs from the run's work directory into a new version of its cache and make
    it current, then evict the workspace's least recently used caches over its limit. `stop` set: Stopped
    (nothing kept)."""
    caches = paths.workspace_caches(settings.data_dir, run.workspace_id)
    limit = min(settings.max_cache_bytes, settings.max_workspace_cache_bytes)
    tally = Tally(limit=limit, stop=stop or threading.Event())
    entry = caches.entry(run.configuration_id, step.name, key_hash(key, list(step.cache_dirs)))
    with _staging(caches) as staging:
        try:
            present = _copy_out(settings, run, step, staging, tally)
        except Stopped:
            raise  # the caller knows why it stopped us
        except CopyError as exc:
            return Saved(False, tally.bytes, tally.files, reason=_why_not_saved(exc, settings, limit))
        if not present:
            reason = "none of its cache_dirs is a directory in the work directory (links are not followed)"
            return Saved(False, reason=reason)
        now = datetime.now(UTC)
        meta = CacheEntry(
            configuration_id=run.configuration_id,
            step=step.name,
            key=key,
            paths=list(step.cache_dirs),
            bytes=tally.bytes,
            files=tally.files,
            created_at=now,
            last_used_at=now,
            run_id=run.id,
        )
        (staging / _META).write_bytes(msgspec.json.encode(meta))
        (staging / _USED).touch()
        _publish(caches, staging, entry)
    evicted = evict(settings, run.workspace_id, keep=entry)
    return Saved(True, tally.bytes, tally.files, evicted=evicted)


@contextlib.contextmanager
def _staging(caches: paths.WorkspaceCaches) -> Iterator[Path]:
    """A new directory in `.tmp/`, locked (and marked live) while the save writes it; removed afterwards
    unless it was published."""
    caches.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = caches.staging / str(ULID())
    os.mkdir(staging, 0o700)
    fd = os.open(staging, _DIR_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        (staging / _LIVE).touch()  # from now on a sweep that can lock it knows its saver is gone
        yield staging
    finally:
        os.close(fd)
        if staging.exists():
            _retire(caches, staging)
        _empty_trash(caches)


def _publish(caches: paths.WorkspaceCaches, staging: Path, entry: Path) -> None:
    """Make a complete save the key's current version: renamed into the key's directory, then named by
    `current` (replaced by a rename), all under the key's lock."""
    os.unlink(staging / _LIVE)
    version = f"v-{staging.name}"
    entry_fd = _lock_entry(entry)
    try:
        os.rename(staging, entry / version)
        _set_current(entry, version)
        _collect_garbage(caches, entry)  # the version this one replaced, unless a restore reads it
    finally:
        os.close(entry_fd)


def _copy_out(settings: Settings, run: Run, step: Step, staging: Path, tally: Tally) -> int:
    tree = staging / _TREE
    tree.mkdir(mode=0o700)
    present = 0
    for index, path in enumerate(step.cache_dirs):
        try:
            source = open_directory(settings.data_dir, [*work_parts(run.id), *_parts(path)])
        except (FileNotFoundError, NotADirectoryError):
            continue  # missing, a file, or a link (never followed)
        try:
            os.mkdir(tree / str(index), 0o700)
            target = os.open(tree / str(index), _DIR_FLAGS)
            try:
                copy_tree(source, target, tally)
                finish_dir(target, os.fstat(source), Tally())
            finally:
                os.close(target)
        finally:
            os.close(source)
        present += 1
    return present


def _why_not_saved(exc: CopyError, settings: Settings, limit: int) -> str:
    if isinstance(exc, OverLimit):
        setting = (
            "ADE_MAX_CACHE_BYTES"
            if limit == settings.max_cache_bytes
            else "ADE_MAX_WORKSPACE_CACHE_BYTES, the whole workspace's"
        )
        return f"the cache is larger than {limit} bytes ({setting})"
    return f"the cache could not be saved: {exc}"


# Restore --------------------------------------------------------------------------------------------


def restore(
    settings: Settings, run: Run, step: Step, key: str, stop: threading.Event | None = None
) -> Restored:
    """Copy the current version of the step's cache (if any) into the run's work directory, each cache
    dir at its path, replacing what is in the way and chowned to the step's uid."""
    caches = paths.workspace_caches(settings.data_dir, run.workspace_id)
    entry = caches.entry(run.configuration_id, step.name, key_hash(key, list(step.cache_dirs)))
    version_fd = _open_current(entry)
    if version_fd is None:
        return Restored(False)
    tally = Tally(stop=stop or threading.Event(), owner=_owner(settings))
    try:
        with contextlib.suppress(OSError):
            os.utime(_USED, dir_fd=version_fd)  # a restore is a use (LRU)
        work = open_directory(settings.data_dir, work_parts(run.id))
        try:
            for index, path in enumerate(step.cache_dirs):
                try:
                    source = os.open(f"{_TREE}/{index}", _DIR_FLAGS, dir_fd=version_fd)
                except FileNotFoundError:
                    continue  # it was not there when the cache was saved
                try:
                    target = _make_path(work, _parts(path), tally.owner)
                    try:
                        copy_tree(source, target, tally)
                        finish_dir(target, os.fstat(source), tally)
                    finally:
                        os.close(target)
                finally:
                    os.close(source)
        finally:
            os.close(work)
    finally:
        os.close(version_fd)  # releases the shared lock
    return Restored(True, tally.bytes, tally.files)


def _open_current(entry: Path) -> int | None:
    """The current version's directory fd, with a shared flock that keeps it from being deleted."""
    for _ in range(100):
        version = _current(entry)
        if version is None:
            return None
        try:
            fd = os.open(entry / version, _DIR_FLAGS)
        except FileNotFoundError:
            continue  # replaced and deleted since we read `current`
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(entry / version, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # deleted while we waited for the lock
    return None


def _make_path(work: int, parts: list[str], owner: int | None) -> int:
    """A directory fd of `work/parts…`, each component a real directory (made if missing; a link or a
    file in the way is removed, never followed)."""
    fd = os.dup(work)
    try:
        for part in parts:
            child = _open_or_make_dir(fd, part, owner)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


# Eviction, listing, deletion ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    entry: Path
    version: str
    meta: CacheEntry


def _scan(caches: paths.WorkspaceCaches) -> list[_Found]:
    """Every key's current version, with its metadata and last use."""
    found = []
    for entry in caches.root.glob("cfg_*/*/*"):
        version = _current(entry)
        if version is None:
            continue
        try:
            meta = _META_DECODER.decode((entry / version / _META).read_bytes())
            used = os.stat(entry / version / _USED).st_mtime
        except (OSError, msgspec.DecodeError):
            continue  # deleted meanwhile
        meta.last_used_at = datetime.fromtimestamp(used, UTC)
        found.append(_Found(entry, version, meta))
    return found


def _remove(caches: paths.WorkspaceCaches, found: _Found) -> bool:
    """Remove a cache unless it was replaced since it was found; True when removed."""
    entry_fd = _lock_entry(found.entry)
    try:
        if _current(found.entry) != found.version:
            return False
        os.unlink(found.entry / _CURRENT)
        _collect_garbage(caches, found.entry)
        with contextlib.suppress(OSError):  # not empty: a version a restore still reads stays for now
            os.rmdir(found.entry)
    finally:
        os.close(entry_fd)
    for parent in (found.entry.parent, found.entry.parent.parent):
        with contextlib.suppress(OSError):
            os.rmdir(parent)
    return True


def evict(settings: Settings, workspace_id: str, keep: Path | None = None) -> int:
    """Remove the workspace's least recently used caches (never `keep`) until the rest fit within
    ADE_MAX_WORKSPACE_CACHE_BYTES; sweep what dead processes left. Returns how many were removed."""
    caches = paths.workspace_caches(settings.data_dir, workspace_id)
    removed = 0
    with _workspace_lock(caches):
        _sweep(caches)
        found = _scan(caches)
        total = sum(item.meta.bytes for item in found)
        for item in sorted(found, key=lambda item: item.meta.last_used_at):
            if total <= settings.max_workspace_cache_bytes:
                break
            if item.entry != keep and _remove(caches, item):
                total -= item.meta.bytes
                removed += 1
        _empty_trash(caches)
    return removed


def list_caches(settings: Settings, workspace_id: str) -> CacheList:
    caches = paths.workspace_caches(settings.data_dir, workspace_id)
    items = sorted((item.meta for item in _scan(caches)), key=lambda m: m.last_used_at, reverse=True)
    return CacheList(
        items=items,
        total_bytes=sum(item.bytes for item in items),
        max_workspace_bytes=settings.max_workspace_cache_bytes,
    )


def delete_caches(
    settings: Settings,
    workspace_id: str,
    *,
    configuration_id: str | None = None,
    step: str | None = None,
    key: str | None = None,
) -> int:
    """Remove the workspace's caches that match every filter given; returns how many."""
    caches = paths.workspace_caches(settings.data_dir, workspace_id)
    removed = 0
    with _workspace_lock(caches):
        for item in _scan(caches):
            meta = item.meta
            if (
                configuration_id in (None, meta.configuration_id)
                and step in (None, meta.step)
                and key in (None, meta.key)
                and _remove(caches, item)
            ):
                removed += 1
        _sweep(caches)
    return removed
