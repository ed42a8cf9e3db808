"""Build retention: builds whose logs are past ADE_BUILD_LOG_RETENTION_S, or whose environment has not
been used for ADE_BUILD_ENV_RETENTION_S, become `expired` and their directories are freed — never while a
queued or running run needs the environment (`keys.build_users`). A docker build's image is removed from
this host's runtime store first (the worker that built it has it; elsewhere there is nothing to remove)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Awaitable
from typing import cast

from ade.core import keys
from ade.core.errors import NotFound
from ade.core.models import Build, utcnow
from ade.core.settings import Settings
from ade.execution import container
from ade.execution.deps import WorkerDeps
from ade.lifecycle import transitions

log = logging.getLogger(__name__)
EXPIRABLE = frozenset({"ready", "failed", "cancelled"})


def is_due(build: Build, *, log_retention_s: float, env_retention_s: float) -> bool:
    if build.status not in EXPIRABLE or build.completed_at is None:
        return False
    now = utcnow()
    logs_age_s = (now - build.completed_at).total_seconds()
    idle_s = (now - (build.last_used_at or build.completed_at)).total_seconds()
    return logs_age_s > log_retention_s or idle_s > env_retention_s


async def sweep(deps: WorkerDeps) -> list[str]:
    """Expire what is due; return the ids expired."""
    settings, store, redis = deps.settings, deps.store, deps.redis
    expired = []
    for raw in await redis.zrange(keys.ALL_BUILDS, 0, -1):
        try:
            build = await store.get_build(raw.decode())
        except NotFound:
            continue
        if not is_due(
            build,
            log_retention_s=settings.build_log_retention_s,
            env_retention_s=settings.build_env_retention_s,
        ):
            continue
        if await cast(Awaitable[int], redis.scard(keys.build_users(build.id))):
            continue  # an unfinished run needs this environment
        await remove_image(settings, build)
        await transitions.expire_build(store, build)
        expired.append(build.id)
    if expired:
        log.info("retention expired %d build(s): %s", len(expired), ", ".join(expired))
    return expired


async def remove_image(settings: Settings, build: Build) -> None:
    """The image a ready docker build made, out of this host's runtime store (a reuse record shares its
    origin's image: that one goes when the origin expires)."""
    if build.image is None or build.reused_from is not None or build.status != "ready":
        return
    if shutil.which(settings.container_runtime) is None:
        return
    removed, message = await container.remove_image(settings, build.image)
    if not removed:
        log.warning("retention could not remove image %s of %s: %s", build.image, build.id, message)
