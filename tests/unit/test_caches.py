"""The cache store below the engine (README "Caches"): versions published whole, restores that copy and
never follow a link, limits, least-recently-used eviction, sweeping what dead savers left; and cache keys
with hashFiles. Real files in a temporary data directory."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from ade.core import paths
from ade.core.models import Plan, Run, Step, utcnow
from ade.core.settings import Settings
from ade.execution import cache_keys, caches, step_cache
from ade.execution.cache_keys import CacheKeyError
from ade.execution.scheduler import StepSlot
from ade.execution.step_cache import StepCache

WS, CFG = "ws_01AAAAAAAAAAAAAAAAAAAAAAAA", "cfg_01AAAAAAAAAAAAAAAAAAAAAAAA"


def make_run(run_id: str, step: Step, workspace_id: str = WS) -> Run:
    plan = Plan(configuration_id=CFG, name="c", steps=[step], environment={}, timeout_s=None)
    return Run(
        id=run_id, workspace_id=workspace_id, configuration_id=CFG, status="running", plan=plan,
        created_at=utcnow(),
    )  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def work(settings: Settings, run: Run) -> Path:
    directory = paths.run_dir(settings.data_dir, run.id).work
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def entry_of(settings: Settings, step: str, cache_dirs: list[str], key: str = "k") -> Path:
    return paths.workspace_caches(settings.data_dir, WS).entry(CFG, step, caches.key_hash(key, cache_dirs))


STEP = Step(name="build", script="true", cache_dirs=["deps", "./out/bin"])


def test_a_saved_cache_is_restored_whole_into_another_run(settings: Settings) -> None:
    first, second = make_run("run_1", STEP), make_run("run_2", STEP)
    src = work(settings, first)
    (src / "deps" / "sub").mkdir(parents=True)
    (src / "deps" / "sub" / "lib.txt").write_text("library")
    (src / "deps" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "deps" / "run.sh", 0o4755)  # setuid is dropped
    os.utime(src / "deps" / "sub" / "lib.txt", (1_000_000, 1_000_000))
    (src / "out" / "bin").mkdir(parents=True)
    (src / "out" / "bin" / "tool").write_bytes(b"\x00" * 1000)
    saved = caches.save(settings, first, STEP, "k")
    assert saved.saved and saved.files == 3 and saved.bytes == len("library") + 10 + 1000

    dst = work(settings, second)
    assert caches.restore(settings, second, STEP, "other-key") == caches.Restored(False)
    restored = caches.restore(settings, second, STEP, "k")
    assert restored.hit and restored.files == 3 and restored.bytes == saved.bytes
    assert (dst / "deps" / "sub" / "lib.txt").read_text() == "library"
    assert (dst / "deps" / "sub" / "lib.txt").stat().st_mtime == 1_000_000
    assert stat.S_IMODE((dst / "deps" / "run.sh").stat().st_mode) == 0o755
    assert (dst / "out" / "bin" / "tool").read_bytes() == b"\x00" * 1000
    listed = caches.list_caches(settings, WS)
    assert [(i.configuration_id, i.step, i.key, i.bytes, i.run_id) for i in listed.items] == [
        (CFG, "build", "k", saved.bytes, "run_1")
    ]


def test_links_are_stored_as_links_and_never_followed(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    step = Step(name="s", script="true", cache_dirs=["c", "linked"])
    first, second = make_run("run_1", step), make_run("run_2", step)
    src = work(settings, first)
    (src / "c").mkdir()
    (src / "c" / "to-secret").symlink_to(outside / "secret")
    (src / "c" / "to-dir").symlink_to(outside)
    (src / "linked").symlink_to(outside)  # a cache dir that is itself a link: not saved
    saved = caches.save(settings, first, step, "k")
    assert saved.saved and saved.files == 2
    store = paths.workspace_caches(settings.data_dir, WS).root
    stored = [p for p in store.rglob("*") if not p.is_symlink() and p.is_file()]
    assert stored and not [p for p in stored if b"host secret" in p.read_bytes()]

    dst = work(settings, second)
    (dst / "c").symlink_to(outside)  # planted where the cache goes: replaced, not written through
    assert caches.restore(settings, second, step, "k").hit
    assert (dst / "c").is_dir() and not (dst / "c").is_symlink()
    assert os.readlink(dst / "c" / "to-secret") == str(outside / "secret")
    assert sorted(os.listdir(outside)) == ["secret"] and not (dst / "linked").exists()

    only_link = make_run("run_3", Step(name="l", script="true", cache_dirs=["linked"]))
    (work(settings, only_link) / "linked").symlink_to(outside)
    skipped = caches.save(settings, only_link, only_link.plan.steps[0], "k")
    assert not skipped.saved and "links are not followed" in (skipped.reason or "")


def test_a_cache_over_its_limit_is_not_saved_and_leaves_nothing(settings: Settings) -> None:
    small = dataclasses.replace(settings, max_cache_bytes=1000)
    run = make_run("run_1", STEP)
    (work(settings, run) / "deps").mkdir()
    (work(settings, run) / "deps" / "big").write_bytes(b"x" * 1001)
    saved = caches.save(small, run, STEP, "k")
    assert not saved.saved and "ADE_MAX_CACHE_BYTES" in (saved.reason or "")
    root = paths.workspace_caches(settings.data_dir, WS)
    assert caches.list_caches(small, WS).items == [] and os.listdir(root.staging) == []


def test_a_new_version_replaces_the_old_and_a_read_version_outlives_its_replacement(
    settings: Settings,
) -> None:
    run = make_run("run_1", STEP)
    deps = work(settings, run) / "deps"
    deps.mkdir()
    (deps / "v").write_text("1")
    caches.save(settings, run, STEP, "k")
    entry = paths.workspace_caches(settings.data_dir, WS).entry(
        CFG, "build", caches.key_hash("k", STEP.cache_dirs)
    )
    reader = caches._open_current(entry)  # a restore in progress holds the old version
    assert reader is not None
    try:
        (deps / "v").write_text("2")
        caches.save(settings, run, STEP, "k")
        versions = sorted(p.name for p in entry.iterdir() if p.name.startswith("v-"))
        assert len(versions) == 2  # the old one is still being read
        assert (entry / caches._current(entry) / "tree" / "0" / "v").read_text() == "2"
    finally:
        os.close(reader)
    (deps / "v").write_text("3")
    caches.save(settings, run, STEP, "k")  # collects the garbage now nobody reads it
    assert len([p for p in entry.iterdir() if p.name.startswith("v-")]) == 1


def test_concurrent_saves_leave_one_whole_cache(settings: Settings) -> None:
    runs = [make_run(f"run_{n}", STEP) for n in range(4)]
    for n, run in enumerate(runs):
        deps = work(settings, run) / "deps"
        deps.mkdir()
        for index in range(200):
            (deps / f"f{index}").write_text(str(n))
    threads = [threading.Thread(target=caches.save, args=(settings, run, STEP, "k")) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = make_run("run_r", STEP)
    work(settings, reader)
    assert caches.restore(settings, reader, STEP, "k").hit
    restored = list((work(settings, reader) / "deps").iterdir())
    assert len(restored) == 200 and len({p.read_text() for p in restored}) == 1  # all from one save
    [listed] = caches.list_caches(settings, WS).items
    assert listed.run_id == f"run_{restored[0].read_text()}"
    entry = paths.workspace_caches(settings.data_dir, WS).entry(
        CFG, "build", caches.key_hash("k", STEP.cache_dirs)
    )
    assert len([p for p in entry.iterdir() if p.name.startswith("v-")]) == 1
    assert os.listdir(paths.workspace_caches(settings.data_dir, WS).staging) == []


def test_an_abandoned_save_is_swept_and_a_live_one_is_not(settings: Settings) -> None:
    root = paths.workspace_caches(settings.data_dir, WS)
    root.staging.mkdir(parents=True)
    dead, live = root.staging / "01AAAAAAAAAAAAAAAAAAAAAAAA", root.staging / "01BBBBBBBBBBBBBBBBBBBBBBBB"
    for directory in (dead, live):
        directory.mkdir()
        (directory / caches._LIVE).touch()
    holder = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        caches.evict(settings, WS)
        assert not dead.exists() and live.exists()
    finally:
        os.close(holder)


def saved_step(settings: Settings, name: str, key: str = "k", workspace_id: str = WS) -> tuple[Run, Step]:
    step = Step(name=name, script="true", cache_dirs=["d"])
    run = make_run(f"run_{workspace_id[-2:]}{name}", step, workspace_id)
    (work(settings, run) / "d").mkdir(exist_ok=True)
    (work(settings, run) / "d" / "f").write_bytes(b"x" * 1000)
    assert caches.save(settings, run, step, key).saved
    return run, step


def set_used(settings: Settings, step: str, when: float) -> None:
    entry = entry_of(settings, step, ["d"])
    os.utime(entry / str(caches._current(entry)) / caches._USED, (when, when))


def test_least_recently_used_caches_are_evicted_past_the_workspace_limit(settings: Settings) -> None:
    limited = dataclasses.replace(settings, max_workspace_cache_bytes=2500)
    run0, step0 = saved_step(limited, "s0")
    saved_step(limited, "s1")
    set_used(limited, "s0", 1)  # s0 is the older of the two ...
    set_used(limited, "s1", 2)
    assert caches.restore(limited, run0, step0, "k").hit  # ... until a restore uses it
    saved_step(limited, "s2")  # 3000 bytes: one must go, the least recently used
    assert {item.step for item in caches.list_caches(limited, WS).items} == {"s0", "s2"}
    # A cache larger than the whole workspace's allowance is not saved (it could never stay).
    too_big = dataclasses.replace(limited, max_cache_bytes=10_000)
    big = Step(name="big", script="true", cache_dirs=["d"])
    run = make_run("run_big", big)
    (work(settings, run) / "d").mkdir()
    (work(settings, run) / "d" / "f").write_bytes(b"x" * 2501)
    saved = caches.save(too_big, run, big, "k")
    assert not saved.saved and "ADE_MAX_WORKSPACE_CACHE_BYTES" in (saved.reason or "")


def test_delete_takes_filters_and_never_another_workspaces(settings: Settings) -> None:
    other = "ws_01BBBBBBBBBBBBBBBBBBBBBBBB"
    for ws in (WS, other):
        saved_step(settings, "a", "one", ws)
        saved_step(settings, "a", "two", ws)
        saved_step(settings, "b", "one", ws)
    assert caches.delete_caches(settings, WS, step="a", key="two") == 1
    assert {(i.step, i.key) for i in caches.list_caches(settings, WS).items} == {("a", "one"), ("b", "one")}
    assert caches.delete_caches(settings, WS, configuration_id="cfg_other") == 0
    assert caches.delete_caches(settings, WS) == 2
    assert caches.list_caches(settings, WS).items == []
    assert sorted(os.listdir(paths.workspace_caches(settings.data_dir, WS).root)) == [
        ".lock",
        ".tmp",
        ".trash",
    ]
    assert len(caches.list_caches(settings, other).items) == 3


def test_hash_files_follows_contents_names_and_never_links(settings: Settings, tmp_path: Path) -> None:
    run = make_run("run_1", STEP)
    root = work(settings, run)
    (root / "pkg").mkdir()
    (root / "pkg" / "requirements.txt").write_text("a==1\n")
    (root / "requirements-dev.txt").write_text("b==2\n")
    work_parts = caches.work_parts(run.id)

    def key(template: str) -> str:
        return cache_keys.evaluate(template, settings.data_dir, work_parts, 10_000)

    template = "deps-{{ hashFiles('**/requirements*.txt') }}"
    first = key(template)
    assert first.startswith("deps-") and len(first) == 5 + 64
    assert key(template) == first
    assert key("{{ hashFiles('requirements*.txt') }}") != key("{{ hashFiles('**/requirements*.txt') }}")
    assert key("{{ hashFiles('**/*.txt', '!pkg/**') }}") == key("{{ hashFiles('requirements-dev.txt') }}")
    assert key("{{ hashFiles('nothing/*') }}") == "" and key(None) == "default"
    (root / "pkg" / "requirements.txt").write_text("a==2\n")
    assert key(template) != first
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "requirements.txt").write_text("x")
    before = key(template)
    (root / "linked").symlink_to(outside)
    (root / "requirements-link.txt").symlink_to(outside / "requirements.txt")
    assert key(template) == before
    with pytest.raises(CacheKeyError, match="ADE_MAX_CACHE_BYTES"):
        cache_keys.evaluate(template, settings.data_dir, work_parts, 5)


@pytest.mark.parametrize(
    "template",
    ["{{ env.HOME }}", "{{ hashFiles() }}", "{{ hashFiles('../x') }}", "{{ hashFiles('/etc/*') }}",
     "{{ hashFiles('a') ", "{{ hashFiles('a' 'b') }}", "{{ hashFiles('!a') }}"],
)  # fmt: skip
def test_bad_keys_say_what_is_wrong(template: str) -> None:
    with pytest.raises(CacheKeyError):
        cache_keys.parse(template)


class Writer:
    """Collects the payloads a step's cache emits."""

    def __init__(self) -> None:
        self.payloads: list[Any] = []

    async def emit(self, payload: Any) -> None:
        self.payloads.append(payload)


@pytest.mark.anyio
async def test_a_save_stopped_by_a_cancel_or_the_steps_time_keeps_the_previous_cache(
    settings: Settings,
) -> None:
    run = make_run("run_1", STEP)
    (work(settings, run) / "deps").mkdir()
    (work(settings, run) / "deps" / "v").write_text("1")
    assert caches.save(settings, run, STEP, "k").saved
    (work(settings, run) / "deps" / "v").write_text("2")
    writer = Writer()
    cancelled = asyncio.Event()
    cancelled.set()
    for cache in (StepCache("k", 60.0, cancelled), StepCache("k", 0.0, asyncio.Event())):
        await step_cache.after_step(settings, run, STEP, writer, cache)
    reasons = [(p.saved, p.reason) for p in writer.payloads]
    assert reasons == [
        (False, "the run was cancelled while its cache was being saved"),
        (False, "0 s (the step's time) passed while its cache was being saved"),
    ]
    reader = make_run("run_2", STEP)
    work(settings, reader)
    assert caches.restore(settings, reader, STEP, "k").hit
    assert (work(settings, reader) / "deps" / "v").read_text() == "1"
    assert os.listdir(paths.workspace_caches(settings.data_dir, WS).staging) == []


@pytest.mark.anyio
async def test_a_step_without_cache_dirs_has_no_cache_events(settings: Settings) -> None:
    step = Step(name="plain", script="true")
    writer = Writer()
    slot = StepSlot(0, 60.0, "its timeout", asyncio.Event(), asyncio.Event().wait)
    cache = await step_cache.before_step(settings, make_run("run_1", step), step, writer, slot)
    await step_cache.after_step(settings, make_run("run_1", step), step, writer, cache)
    assert cache is None and writer.payloads == []
