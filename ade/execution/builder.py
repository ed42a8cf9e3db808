"""Preparing a build's environment: unpack the source, make the virtualenv, install requirements, run the
build steps, build a docker build's image — each a phase with its own events, all in the build's own
stream. Plain functions.

A build is prepared in its own directory (`builds/<id>/env`, `builds/<id>/source`), which nothing uses
until the build is `ready`: the status and a `READY` marker are written only when every phase succeeded.
(A virtualenv cannot be moved after creation — its scripts hold absolute paths — so "temporary" means
"private to this build id until ready" rather than a renamed directory.) A failed or cancelled build's
directories are removed. A docker build's image is tagged (`Build.image`) only when `podman build`
succeeded, as its last phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
from collections import deque
from functools import partial
from pathlib import Path

from redis.exceptions import RedisError

from ade.core import keys, paths
from ade.core.errors import Conflict, Invalid, NotFound
from ade.core.logs import current_build_id
from ade.core.models import (
    TERMINAL_BUILD_STATUSES,
    Build,
    Failure,
    Step,
    plain_environment,
    secret_values,
)
from ade.events.payloads import ConsoleLine, PhaseCompleted, PhaseStarted, StepEndStatus
from ade.events.writer import StreamWriter
from ade.execution import containerfile, isolation
from ade.execution.archives import check_member, unpack
from ade.execution.console import StepSink, budget_of
from ade.execution.container import (
    CONTAINERFILES,
    IGNORE_FILES,
    UNAVAILABLE,
    ImageBuildJob,
    ImageUnavailable,
    spawn_image_build,
)
from ade.execution.deps import WorkerDeps, base_environment, process_recorder
from ade.execution.limits import Limits, LimitWatch, capped
from ade.execution.process import Line, run_step
from ade.execution.sandbox import Bind, prepare_dirs
from ade.lifecycle import transitions
from ade.lifecycle.builds import build_writer, interpreter
from ade.lifecycle.transitions import Recorder

log = logging.getLogger(__name__)


class BuildStopped(Exception):
    def __init__(self, failure: Failure | None) -> None:
        super().__init__(failure.message if failure else "cancelled")
        self.failure = failure  # None: cancelled


def env_dir(deps: WorkerDeps, build: Build) -> Path:
    return paths.build_dir(deps.settings.data_dir, build.environment_build_id).env


def source_dir(deps: WorkerDeps, build: Build) -> Path:
    return paths.build_dir(deps.settings.data_dir, build.environment_build_id).source


def run_binds_of_build(deps: WorkerDeps, build: Build) -> list[Bind]:
    """What a run step of a ready build sees of it: its source and virtualenv, read-only."""
    build_dir = paths.build_dir(deps.settings.data_dir, build.environment_build_id)
    python = build.spec.constructor == "python"
    binds = isolation.build_binds(build_dir, writable=False, python=python)
    return binds + (isolation.python_binds(build_dir.env / "bin" / "python") if python else [])


def environment_for(deps: WorkerDeps, build: Build) -> dict[str, str]:
    """What a run's steps add to their environment to run inside a ready build."""
    extra = {"ADE_BUILD_ID": build.environment_build_id, "ADE_BUILD_SOURCE_DIR": str(source_dir(deps, build))}
    if build.spec.constructor == "python":
        venv = env_dir(deps, build)
        extra["VIRTUAL_ENV"] = str(venv)
        extra["PATH"] = f"{venv / 'bin'}{os.pathsep}" + os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    return extra


async def execute_build(deps: WorkerDeps, build_id: str, *, wait_for_lease: bool = True) -> Build:
    """Prepare a build, unless it already ended or another worker holds its stream (then return at once)."""
    store = deps.store
    try:
        build = await store.get_build(build_id)
    except NotFound:
        log.error("build %s vanished before it started", build_id)
        raise
    if build.status in TERMINAL_BUILD_STATUSES:
        return build
    secrets = secret_values(build.spec.environment)
    for step in build.spec.steps:
        secrets += secret_values(step.environment)
    cancel_event = deps.cancels.register(build.id)
    build_token = current_build_id.set(build.id)
    try:
        async with build_writer(
            deps.settings, deps.redis, build, acquire_timeout_s=5.0 if wait_for_lease else 0.0, redact=secrets
        ) as writer:
            build = await store.get_build(build_id)  # under the lease: it may have ended meanwhile
            if build.status in TERMINAL_BUILD_STATUSES:
                return build
            with contextlib.suppress(RedisError, OSError):  # the pub/sub signal still reaches us
                if await deps.redis.exists(keys.run_cancel(build.id)):
                    cancel_event.set()
            await _prepare(deps, build, Recorder(store, writer), cancel_event)
    except Conflict as exc:
        if exc.code != "stream_busy":
            raise
    finally:
        deps.cancels.unregister(build.id)
        current_build_id.reset(build_token)
    return await store.get_build(build_id)


async def _prepare(deps: WorkerDeps, build: Build, rec: Recorder, cancel: asyncio.Event) -> None:
    await transitions.start_build(rec, build, deps.name)
    deadline = time.monotonic() + (build.spec.timeout_s or deps.settings.default_run_timeout_s)
    try:
        await _phases(deps, build, rec, cancel, deadline)
    except BuildStopped as stop:
        if stop.failure is None:
            await transitions.finish_build(rec, build, "cancelled")
        else:
            await transitions.finish_build(rec, build, "failed", failure=stop.failure)
    except asyncio.CancelledError:
        lost = Failure(stage="build", code="worker_lost", message="the worker shut down during the build")
        await asyncio.shield(transitions.finish_build(rec, build, "failed", failure=lost))
        raise
    except Exception as exc:
        log.exception("build %s failed inside the worker", build.id)
        failure = Failure(stage="build", code="internal_error", message=f"{type(exc).__name__}: {exc}")
        await transitions.finish_build(rec, build, "failed", failure=failure)
    else:
        await transitions.finish_build(rec, build, "ready")


async def _phases(
    deps: WorkerDeps, build: Build, rec: Recorder, cancel: asyncio.Event, deadline: float
) -> None:
    spec = build.spec
    source = source_dir(deps, build)
    source.mkdir(parents=True, exist_ok=True)
    if spec.source:
        async with _phase(rec.writer, "source"):
            archive = paths.build_dir(deps.settings.data_dir, build.id).source_archive
            await deps.artifacts.copy_into(build.workspace_id, spec.source, archive)
            own = spec.source_limits
            try:
                count = await asyncio.to_thread(
                    partial(
                        unpack,
                        archive,
                        source,
                        max_bytes=capped(own.unpacked_bytes, deps.settings.max_archive_unpacked_bytes),
                        max_members=capped(own.members, deps.settings.max_archive_members),
                    )
                )
            except Invalid as exc:
                raise BuildStopped(Failure(stage="source", code=exc.code, message=exc.message)) from exc
            finally:
                archive.unlink(missing_ok=True)
            await rec.writer.emit(
                ConsoleLine(
                    scope="build", stream="stdout", step="source", message=f"unpacked {count} entries"
                )
            )
    # The sandbox's uid prepares the build: the source (writable by its steps) and the virtualenv.
    venv_dirs = [env_dir(deps, build)] if spec.constructor == "python" else []
    await asyncio.to_thread(partial(prepare_dirs, deps.settings, source, *venv_dirs, recursive=True))
    environment = {**base_environment(), **plain_environment(spec.environment)}
    if spec.constructor == "python":
        venv = env_dir(deps, build)
        python = interpreter(deps.settings.build_python).rsplit(" ", 1)[0]
        async with _phase(rec.writer, "environment"):
            await _command(
                deps,
                build,
                rec,
                cancel,
                deadline,
                "environment",
                [python, "-m", "venv", "--without-pip", str(venv)],
                environment,
            )
        environment.update(environment_for(deps, build))
        if spec.requirements:
            async with _phase(rec.writer, "requirements"):
                # The venv has no pip of its own (no ensurepip: seconds saved): the worker's pip fills it.
                pip = [
                    sys.executable,
                    "-m",
                    "pip",
                    "--python",
                    str(venv / "bin" / "python"),
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                ]
                if spec.no_index:
                    pip.append("--no-index")
                for link in spec.find_links:
                    check_member(link)
                    pip += ["--find-links", str(source / link)]
                if deps.settings.pip_find_links:
                    pip += ["--find-links", deps.settings.pip_find_links]
                await _command(
                    deps,
                    build,
                    rec,
                    cancel,
                    deadline,
                    "requirements",
                    pip + list(spec.requirements),
                    environment,
                )
    for step in spec.steps:
        async with _phase(rec.writer, f"step:{step.name}"):
            step_env = {**environment, **plain_environment(step.environment), "ADE_BUILD_ID": build.id}
            await _run(deps, rec, build, cancel, deadline, step, step_env)
    if spec.constructor == "docker":
        async with _phase(rec.writer, "image"):
            await _image(deps, rec, build, cancel, deadline)


class _phase:
    """build.phase.started … build.phase.completed around one phase."""

    def __init__(self, writer: StreamWriter, name: str) -> None:
        self._writer, self._name = writer, name

    async def __aenter__(self) -> None:
        self._started = time.monotonic()
        await self._writer.emit(PhaseStarted(phase=self._name))

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: object) -> None:
        status: StepEndStatus = (
            "succeeded"
            if exc is None
            else ("cancelled" if isinstance(exc, BuildStopped) and exc.failure is None else "failed")
        )
        duration_ms = round((time.monotonic() - self._started) * 1000)
        await asyncio.shield(
            self._writer.emit(PhaseCompleted(phase=self._name, status=status, duration_ms=duration_ms))
        )


async def _announce_cancel(deps: WorkerDeps, rec: Recorder, build: Build) -> None:
    requested_by = None
    with contextlib.suppress(RedisError, OSError):
        raw = await deps.redis.get(keys.run_cancel(build.id))
        requested_by = raw.decode() if raw else None
    await transitions.request_build_cancel(rec, build, requested_by)


async def _command(
    deps: WorkerDeps,
    build: Build,
    rec: Recorder,
    cancel: asyncio.Event,
    deadline: float,
    phase: str,
    argv: list[str],
    environment: dict[str, str],
) -> None:
    """One of the build's own commands (venv, pip): the worker's interpreter, never a container."""
    step = Step(name=phase, script=shlex.join(argv))
    await _run(deps, rec, build, cancel, deadline, step, environment, host_python=True)


async def _run(
    deps: WorkerDeps,
    rec: Recorder,
    build: Build,
    cancel: asyncio.Event,
    deadline: float,
    step: Step,
    environment: dict[str, str],
    *,
    host_python: bool = False,
) -> None:
    settings = deps.settings
    remaining_s = deadline - time.monotonic()
    build_dir = paths.build_dir(settings.data_dir, build.id)
    python = build.spec.constructor == "python"
    image, failure = await isolation.image_of(deps, build.workspace_id, step, "build")
    if failure is not None:
        raise BuildStopped(failure)
    executor = await isolation.executor_for(settings, image, needs_host_python=host_python)
    binds = isolation.build_binds(build_dir, writable=True, python=python)
    if host_python or (python and executor != "container"):
        binds += isolation.worker_python_binds(settings, with_wheels=host_python)
    limits = Limits.of(settings, step)
    job = isolation.step_job(
        settings,
        name=isolation.container_name(build.id, step.name.replace(":", "-")),
        script=step.script,
        env=environment,
        executor=executor,
        host_cwd=build_dir.source,
        cwd=str(build_dir.source),
        binds=binds,
        network=build.spec.network,
        limits=limits,
        image=image,
    )
    budget = budget_of(rec.writer, settings.max_console_bytes_per_run)
    watch = LimitWatch(StepSink(rec.writer, step.name, "build", budget), limits)
    try:
        outcome = await run_step(
            isolation.spawner(settings, job, executor),
            timeout_s=max(min(step.timeout_s or remaining_s, remaining_s), 0.0),
            grace_s=settings.kill_grace_s,
            max_line_bytes=settings.console_line_max_bytes,
            on_lines=watch,
            cancel=cancel,
            on_cancel=partial(_announce_cancel, deps, rec, build),
            on_spawn=process_recorder(deps, build.id),
        )
    except ImageUnavailable as exc:
        message = f"{step.name!r}: image {job.image!r} is not available: {exc}"
        raise BuildStopped(
            Failure(stage="build", code="image_unavailable", message=message, step=step.name)
        ) from exc
    if outcome.cancelled:
        raise BuildStopped(None)
    if outcome.timed_out:
        raise BuildStopped(
            Failure(
                stage="build",
                code="timeout",
                message=f"{step.name!r} exceeded the build's time",
                step=step.name,
            )
        )
    if outcome.exit_code != 0:
        message = f"{step.name!r} exited with code {outcome.exit_code}"
        failure = watch.failure(step.name, "build", oom_killed=outcome.oom_killed)
        raise BuildStopped(
            failure or Failure(stage="build", code="exit_nonzero", message=message, step=step.name)
        )


IMAGE_PHASE = "image"


def _image_failure(code: str, message: str) -> BuildStopped:
    return BuildStopped(Failure(stage="build", code=code, message=message, step=IMAGE_PHASE))


def _containerfile(source: Path, *, network: bool) -> Path:
    """The source's Containerfile (else Dockerfile), checked (`ade.execution.containerfile`). The runtime
    reads it and the ignore files as the worker's user: none of them may be a link (a build step could
    have made one pointing at any host file)."""
    for name in CONTAINERFILES + IGNORE_FILES:
        if (source / name).is_symlink():
            raise _image_failure("unsafe_archive", f"the source's {name} is a symbolic link")
    found = next((source / name for name in CONTAINERFILES if (source / name).is_file()), None)
    if found is None:
        raise _image_failure(
            "no_containerfile", "a docker build needs a Containerfile or Dockerfile at the root of its source"
        )
    problems = containerfile.problems(found.read_text(errors="replace"), network=network)
    if problems:
        raise _image_failure("unsafe_containerfile", f"{found.name}: " + "; ".join(problems))
    return found


class _ErrorTail:
    """Passes the image phase's lines on, keeping the last lines of stderr: the runtime's error."""

    def __init__(self, inner: LimitWatch) -> None:
        self.inner = inner
        self.stderr: deque[str] = deque(maxlen=5)

    async def __call__(self, name: str, lines: list[Line]) -> None:
        if name == "stderr":
            self.stderr.extend(text.decode(errors="replace").strip() for text, _ in lines)
        await self.inner(name, lines)

    @property
    def error(self) -> str:
        errors = [line for line in self.stderr if line.startswith("Error")]
        return (errors or [line for line in self.stderr if line] or [""])[-1]


async def _image(
    deps: WorkerDeps, rec: Recorder, build: Build, cancel: asyncio.Event, deadline: float
) -> None:
    """`podman build` of the source's Containerfile, tagged `build.image`; its output is the phase's console
    lines. A FROM image the runtime lacks (and may not pull) is `image_unavailable`, other failures
    `exit_nonzero`, each with the runtime's message."""
    settings, spec = deps.settings, build.spec
    source = source_dir(deps, build)
    found = await asyncio.to_thread(partial(_containerfile, source, network=spec.network))
    assert build.image is not None
    build_args = {  # secret values are not: a build arg is recorded in the image's history
        name: value if isinstance(value, str) else (value.value or "")
        for name, value in spec.environment.items()
        if isinstance(value, str) or not value.secret
    }
    job = ImageBuildJob(
        build_id=build.id,
        tag=build.image,
        context=source,
        containerfile=found,
        network=spec.network,
        limits=Limits.of(settings, Step(name=IMAGE_PHASE, script=f"{settings.container_runtime} build")),
        build_args=build_args,
        labels={"ade.build": build.id, "ade.workspace": build.workspace_id},
    )
    budget = budget_of(rec.writer, settings.max_console_bytes_per_run)
    tail = _ErrorTail(LimitWatch(StepSink(rec.writer, IMAGE_PHASE, "build", budget), job.limits))
    outcome = await run_step(
        partial(spawn_image_build, job, settings=settings),
        timeout_s=max(deadline - time.monotonic(), 0.0),
        grace_s=settings.kill_grace_s,
        max_line_bytes=settings.console_line_max_bytes,
        on_lines=tail,
        cancel=cancel,
        on_cancel=partial(_announce_cancel, deps, rec, build),
        on_spawn=process_recorder(deps, build.id),
    )
    if outcome.cancelled:
        raise BuildStopped(None)
    if outcome.timed_out:
        raise _image_failure("timeout", f"{IMAGE_PHASE!r} exceeded the build's time")
    if outcome.exit_code != 0:
        runtime, error = settings.container_runtime, tail.error
        if UNAVAILABLE.search(error) and "building at STEP" not in error:
            raise _image_failure(
                "image_unavailable", f"{runtime} build: a FROM image is not available: {error}"
            )
        limit = tail.inner.failure(IMAGE_PHASE, "build", oom_killed=False)
        message = f"{runtime} build exited with code {outcome.exit_code}: {error}"
        raise BuildStopped(limit) if limit else _image_failure("exit_nonzero", message)
