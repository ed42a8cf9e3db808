"""What the engine asks of an executor: which one runs a step, what it sees (its binds), what its
environment says about where things are, and the `spawn` that `process.run_step` calls."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from ade.core import paths
from ade.core.errors import NotFound
from ade.core.models import BUILD_IMAGE, Build, Failure, Step
from ade.core.settings import Settings
from ade.execution.container import name_prefix, spawn_container
from ade.execution.deps import WorkerDeps
from ade.execution.limits import Limits
from ade.execution.process import Spawn
from ade.execution.sandbox import (
    INPUT_DIR,
    OUTPUT_DIR,
    WORK_DIR,
    Bind,
    ExecutorName,
    StepJob,
    choose_executor,
    spawn_host,
    spawn_sandbox,
)
from ade.records.images import resolve_image

SYSTEM_PREFIXES = ("/usr/", "/bin/", "/lib/", "/lib64/", "/sbin/")


async def executor_for(
    settings: Settings, image: str | None, *, needs_host_python: bool = False
) -> ExecutorName:
    """A step with an image runs in a container; others in the chosen executor. The build's own python
    commands (venv, pip) use the worker's interpreter, so they run in the sandbox when containers are
    the default."""
    default = await choose_executor(settings)
    if image is not None:
        return "container"
    if default == "container" and needs_host_python:
        return "sandbox"
    return default


def spawner(settings: Settings, job: StepJob, executor: ExecutorName) -> Spawn:
    if executor == "container":
        if job.image is None:
            job.image = settings.container_image
        return partial(spawn_container, job, settings=settings)
    if executor == "sandbox":
        return partial(spawn_sandbox, job, settings=settings)
    return partial(spawn_host, job)


def python_binds(*interpreters: str | Path) -> list[Bind]:
    """Read-only binds that make these interpreters (and the installations they come from) work inside:
    each one's prefix, and the base installation a virtualenv points at, unless it is a system path."""
    prefixes: list[Path] = []
    for interpreter in interpreters:
        executable = Path(interpreter)
        for candidate in (executable, Path(os.path.realpath(executable))):
            prefix = candidate.parent.parent
            prefixes.append(prefix)
            config = prefix / "pyvenv.cfg"
            if config.is_file():
                for line in config.read_text().splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "home":
                        home = Path(value.strip())
                        prefixes += [home.parent, Path(os.path.realpath(home)).parent]
    return _dedupe(Bind(Path(os.path.realpath(p)), str(p)) for p in prefixes if p.is_dir())


def worker_python_binds(settings: Settings, *, with_wheels: bool = False) -> list[Bind]:
    """The worker's own interpreter (its pip fills build environments) and the build interpreter; with
    `with_wheels`, the operator's wheel directory (ADE_PIP_FIND_LINKS) too."""
    binds = python_binds(sys.executable, settings.build_python or sys.executable)
    links = settings.pip_find_links
    if with_wheels and links and os.path.isdir(links):
        binds.append(Bind(Path(os.path.realpath(links)), os.path.abspath(links)))
    return binds


def _dedupe(binds: Iterable[Bind]) -> list[Bind]:
    seen: set[str] = set()
    kept = []
    for bind in binds:
        target = bind.target.rstrip("/") + "/"
        if target in seen or target.startswith(SYSTEM_PREFIXES) or target == "/":
            continue
        seen.add(target)
        kept.append(bind)
    return kept


def run_binds(run_dir: paths.RunDir) -> list[Bind]:
    return [
        Bind(run_dir.work, WORK_DIR, writable=True),
        Bind(run_dir.inputs, INPUT_DIR),
        Bind(run_dir.outputs, OUTPUT_DIR, writable=True),
    ]


def build_binds(build_dir: paths.BuildDir, *, writable: bool, python: bool) -> list[Bind]:
    """A build's source (and virtualenv) at their own paths: a virtualenv's scripts hold absolute paths."""
    binds = [Bind(build_dir.source, str(build_dir.source), writable=writable)]
    if python:
        binds.append(Bind(build_dir.env, str(build_dir.env), writable=writable))
    return binds


def run_locations(run_dir: paths.RunDir, executor: ExecutorName) -> dict[str, str]:
    """Where a run step finds its directories: fixed paths inside, the real ones on the host."""
    if executor == "host":
        return {"ADE_INPUT_DIR": os.fspath(run_dir.inputs), "ADE_OUTPUT_DIR": os.fspath(run_dir.outputs)}
    return {"ADE_INPUT_DIR": INPUT_DIR, "ADE_OUTPUT_DIR": OUTPUT_DIR}


def inside_environment(env: dict[str, str], executor: ExecutorName) -> dict[str, str]:
    """The worker's HOME, TMPDIR and USER mean nothing inside: the private /tmp stands in."""
    if executor == "host":
        return env
    return {**env, "HOME": "/tmp", "TMPDIR": "/tmp", "USER": "nobody"}


def step_job(
    settings: Settings,
    *,
    name: str,
    script: str,
    env: dict[str, str],
    executor: ExecutorName,
    host_cwd: Path,
    cwd: str,
    binds: list[Bind],
    network: bool,
    limits: Limits,
    image: str | None,
) -> StepJob:
    return StepJob(
        script=script,
        env=inside_environment(env, executor),
        cwd=cwd,
        host_cwd=host_cwd,
        binds=binds,
        network=network,
        limits=limits,
        name=name,
        image=image,
    )


def container_name(stream_id: str, index: int | str) -> str:
    """A name per step (podman/docker: [a-zA-Z0-9][a-zA-Z0-9_.-]*), unique per attempt; every container of
    a stream starts with `container.name_prefix(stream_id)` (`ade-<stream id>-`, lower case), which is how
    the reaper finds a lost worker's containers."""
    return f"{name_prefix(stream_id)}{index}-{os.urandom(3).hex()}".lower()


async def image_of(
    deps: WorkerDeps, workspace_id: str, step: Step, stage: str, build: Build | None = None
) -> tuple[str | None, Failure | None]:
    """The container image reference a step's `image` names (None: no image): a slug, resolved in its
    workspace, or `build`, the image of `build` (the run's ready build, a `docker` one). Else the
    `image_unavailable` failure: the slug names nothing (any more), or there is no build image."""
    if step.image is None:
        return None, None
    if step.image == BUILD_IMAGE:
        if build is not None and build.image is not None:
            return build.image, None
        constructor = f"a {build.spec.constructor!r} build" if build is not None else "no build"
        message = (
            f"step {step.name!r}: `image: build` names the image of a docker build, and it has {constructor}"
        )
        return None, Failure(stage=stage, code="image_unavailable", message=message, step=step.name)
    try:
        return await resolve_image(deps.store, workspace_id, step.image), None
    except NotFound as exc:
        message = f"step {step.name!r}: image {step.image!r}: {exc.message}"
        return None, Failure(stage=stage, code="image_unavailable", message=message, step=step.name)
