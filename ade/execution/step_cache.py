"""A step's cache as the executor sees it (README "Caches"): before the step, its key evaluated and its
cache restored (`run.cache.restored`); after it succeeded, its cache saved (`run.cache.saved`). Neither
ever fails the step: a key that cannot be evaluated, a copy that fails, a cache over its limit — the step
runs (or ends) as it would have without a cache, and the event says why.

The file work (`ade.execution.caches`) runs in a thread and stops at its next file or chunk when the step's
slot is cancelled (the run's cancel; for a `when: always` step, the cleanup grace's end) or when it has
taken as long as the step itself may run (the slot's time: its `timeout_s` within the run's timeout) — a
hostile step cannot make the worker copy for longer than that, restore and save each.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ade.core.models import Run, Step
from ade.core.settings import Settings
from ade.events.payloads import CacheRestored, CacheSaved
from ade.events.writer import Emitter
from ade.execution import cache_keys
from ade.execution.cache_copy import CopyError, Stopped
from ade.execution.cache_transfer import CacheMirror
from ade.execution.caches import Restored, Saved, key_hash, restore, save, work_parts
from ade.execution.scheduler import StepSlot

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepCache:
    """What `before_step` learnt, for `after_step`."""

    key: str | None  # as evaluated; None: it could not be (then `error` says why)
    time_s: float  # how long a restore or a save may take
    cancel: asyncio.Event
    error: str | None = None


async def before_step(
    settings: Settings,
    run: Run,
    step: Step,
    writer: Emitter,
    slot: StepSlot,
    mirror: CacheMirror | None = None,
) -> StepCache | None:
    """Evaluate the step's key and restore its cache (`run.cache.restored`); None without cache_dirs."""
    if not step.cache_dirs:
        return None
    started = time.monotonic()
    limits = StepCache(None, slot.timeout_s, slot.cancel)
    paths = list(step.cache_dirs)
    try:
        evaluate = cache_keys.evaluate
        work, max_bytes = work_parts(run.id), settings.max_cache_bytes
        key = await _in_thread(evaluate, step.cache_key, settings.data_dir, work, max_bytes, limits=limits)
    except (cache_keys.CacheKeyError, OSError, Stopped) as exc:
        why = (
            f"{_stopped(limits)} while its cache key was being evaluated"
            if isinstance(exc, Stopped)
            else f"the cache key could not be evaluated: {exc}"
        )
        event = CacheRestored(
            step=step.name, key=None, hit=False, paths=paths, duration_ms=_ms(started), error=why
        )
        await writer.emit(event)
        return StepCache(None, slot.timeout_s, slot.cancel, why)
    error: str | None = None
    try:
        if mirror is not None:  # a runner: the API's cache first
            await mirror.pull(run, step, key_hash(key, paths))
        restored = await _in_thread(restore, settings, run, step, key, limits=limits)
    except Stopped:
        restored, error = Restored(False), f"{_stopped(limits)} while its cache was being restored"
    except (CopyError, OSError) as exc:
        restored, error = Restored(False), f"the cache could not be restored: {exc}"
    await writer.emit(
        CacheRestored(
            step=step.name,
            key=key,
            hit=restored.hit,
            paths=paths,
            bytes=restored.bytes,
            files=restored.files,
            duration_ms=_ms(started),
            error=error,
        )
    )
    return StepCache(key, slot.timeout_s, slot.cancel)


async def after_step(
    settings: Settings,
    run: Run,
    step: Step,
    writer: Emitter,
    cache: StepCache | None,
    mirror: CacheMirror | None = None,
) -> None:
    """Save the cache of a step that succeeded (`run.cache.saved`); a save that cannot be made is skipped
    and the event says why — the step still succeeded."""
    if cache is None:
        return
    started = time.monotonic()
    if cache.key is None:
        saved = Saved(False, reason=cache.error)
    else:
        try:
            saved = await _in_thread(save, settings, run, step, cache.key, limits=cache)
            if saved.saved and mirror is not None:  # a runner: the API keeps it
                await mirror.push(run, step, key_hash(cache.key, list(step.cache_dirs)))
        except Stopped:
            saved = Saved(False, reason=f"{_stopped(cache)} while its cache was being saved")
        except (CopyError, OSError) as exc:
            saved = Saved(False, reason=f"the cache could not be saved: {exc}")
    await writer.emit(
        CacheSaved(
            step=step.name,
            key=cache.key,
            saved=saved.saved,
            paths=list(step.cache_dirs),
            bytes=saved.bytes,
            files=saved.files,
            duration_ms=_ms(started),
            reason=saved.reason,
            evicted=saved.evicted,
        )
    )


def _stopped(limits: StepCache) -> str:
    if limits.cancel.is_set():
        return "the run was cancelled"
    return f"{limits.time_s:g} s (the step's time) passed"


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def _in_thread(function: Callable[..., T], *args: Any, limits: StepCache) -> T:
    """`function(*args, stop)` in a thread; `stop` is set when the slot is cancelled, `limits.time_s` pass
    or this task is cancelled (the worker shutting down), and the function stops at its next file or
    chunk."""
    stop = threading.Event()
    if limits.cancel.is_set() or limits.time_s <= 0:
        stop.set()  # before the thread starts: not a byte is copied

    async def watch() -> None:
        try:
            await asyncio.wait_for(limits.cancel.wait(), limits.time_s)
        finally:
            stop.set()

    watcher = asyncio.ensure_future(watch())
    watcher.add_done_callback(lambda done: done.cancelled() or done.exception())
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, stop))
    work.add_done_callback(lambda done: done.cancelled() or done.exception())  # read, even if abandoned
    try:
        return await asyncio.shield(work)
    finally:
        stop.set()
        watcher.cancel()
