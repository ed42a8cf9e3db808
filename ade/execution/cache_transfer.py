"""Step caches of runs on runners (README "Runners"): the API's cache store is the truth; a runner keeps a
copy only while a run needs it.

Before a step with `cache_dirs`, the runner asks the API for the current version of the step's cache
(`export_current`: the version directory as a tar) and makes it the current version of its own store
(`import_version`); the engine then restores it as a worker does. After a save, the runner sends its new
current version to the API, which imports it the same way. An import is a save (`caches._staging` then
`caches._publish`): written aside, made current whole, so nobody ever sees half a cache; the tar is read
with the `data` filter (no absolute paths, no links leaving it, no devices) and within
ADE_MAX_CACHE_BYTES by its headers before anything is written.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from typing import Protocol

from ade.core import paths
from ade.core.models import Run, Step
from ade.core.settings import Settings
from ade.execution import caches

KEY_HASH = re.compile(r"^[0-9a-f]{40}$")
MAX_MEMBERS = 100_000


class CacheTooLarge(Exception):
    pass


class CacheMirror(Protocol):
    """Where a runner's engine pulls a step's cache from before restoring it, and pushes it after a save."""

    async def pull(self, run: Run, step: Step, key_hash: str) -> None: ...

    async def push(self, run: Run, step: Step, key_hash: str) -> None: ...


def export_current(settings: Settings, run: Run, step: Step, key_hash: str) -> bytes | None:
    """The step's current cache version as a tar (None: there is none). Links are stored, never followed."""
    entry = paths.workspace_caches(settings.data_dir, run.workspace_id).entry(
        run.configuration_id, step.name, key_hash
    )
    version_fd = caches._open_current(entry)  # a shared lock: the version is not deleted meanwhile
    if version_fd is None:
        return None
    try:
        version = os.readlink(f"/proc/self/fd/{version_fd}")  # the version we hold locked
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(version, arcname=".", recursive=True)
        return buffer.getvalue()
    finally:
        os.close(version_fd)


def import_version(settings: Settings, run: Run, step: Step, key_hash: str, data: bytes) -> int:
    """Make `data` (a tar made by `export_current`) the step's current cache version; the workspace's least
    recently used caches are evicted past its limit. Returns the bytes it holds. `CacheTooLarge` or
    `tarfile.TarError`: nothing changed."""
    store = paths.workspace_caches(settings.data_dir, run.workspace_id)
    entry = store.entry(run.configuration_id, step.name, key_hash)
    limit = min(settings.max_cache_bytes, settings.max_workspace_cache_bytes)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        members = tar.getmembers()
        size = sum(member.size for member in members if member.isfile())
        if len(members) > MAX_MEMBERS or (limit and size > limit):
            raise CacheTooLarge(f"the cache holds {size} bytes in {len(members)} entries, over the limit")
        with caches._staging(store) as staging:
            tar.extractall(staging, filter="data")
            caches._publish(store, staging, entry)
    caches.evict(settings, run.workspace_id, keep=entry)
    return size
