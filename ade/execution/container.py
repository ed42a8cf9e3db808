"""The `container` executor: a step in its image under podman (or docker), with the same binds as the
sandbox, a non-root user, no network by default, a memory and a pids limit, `--rm`, and a name per step
so that a timeout or a cancel can stop and remove it whatever happened to the client process.

A step names an image by its slug; the engine resolves it to its reference through the image registry
(`ade.records.images`) before the step starts. Images are not pulled by default (`ADE_CONTAINER_PULL`
is `never`): the reference must be one the worker's runtime already has.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shlex
import signal
import tempfile

from ade.core.settings import Settings
from ade.execution.sandbox import Spawned, StepJob, kill_group

EVENTS_FD_INSIDE = 3  # podman/docker --preserve-fds 1 hands over fd 3
RUNTIME_CALL_TIMEOUT_S = 30.0
OOM_EXIT = 128 + signal.SIGKILL


class ImageUnavailable(Exception):
    pass


@functools.cache
def runtime_cwd() -> str:
    """A private working directory for the runtime: podman's conmon drops an `oom` file in its own."""
    return tempfile.mkdtemp(prefix="ade-container-runtime-")


async def _runtime(settings: Settings, *args: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            settings.container_runtime,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            cwd=runtime_cwd(),
        )
    except OSError as exc:
        return 127, f"{settings.container_runtime}: {exc.strerror or exc}"
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), RUNTIME_CALL_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"{settings.container_runtime} {args[0]} timed out"
    return proc.returncode or 0, stderr.decode(errors="replace").strip()


class ContainerStep(Spawned):
    def __init__(self, proc: asyncio.subprocess.Process, settings: Settings, name: str, memory: bool) -> None:
        super().__init__(proc)
        self._settings, self._name, self._memory = settings, name, memory

    @property
    def oom_killed(self) -> bool:
        # The cgroup's OOM killer SIGKILLs the container: exit 137 that the engine did not cause.
        return self._memory and not self.stopped_by_engine and self.proc.returncode == OOM_EXIT

    async def terminate(self) -> None:
        self.stopped_by_engine = True
        await _runtime(self._settings, "kill", "--signal", "TERM", self._name)

    async def kill(self) -> None:
        if self.stopped_by_engine or self.proc.returncode is None:
            self.stopped_by_engine = True
            await _runtime(self._settings, "rm", "--force", "--time", "0", "--ignore", self._name)
        kill_group(self.pgid, signal.SIGKILL)


def _split(listed: str) -> list[str]:
    return [item.strip() for item in listed.split(",") if item.strip()]


def container_argv(settings: Settings, job: StepJob, image: str) -> list[str]:
    uid = settings.sandbox_uid
    argv = [settings.container_runtime, "run", *shlex.split(settings.container_runtime_flags)]
    argv += ["--rm", "--name", job.name, "--pull", settings.container_pull, "--user", f"{uid}:{uid}"]
    argv += ["--network", "host" if job.network else "none", "--hostname", "ade", "--init=false"]
    argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--log-driver", "none"]
    argv += [arg for limit in _split(settings.container_ulimits) for arg in ("--ulimit", limit)]
    argv += ["--workdir", job.cwd, "--tmpfs", "/tmp"]
    if job.limits.processes:
        argv += ["--pids-limit", str(job.limits.processes)]
    if job.limits.memory_mb:
        argv += ["--memory", f"{job.limits.memory_mb}m", "--memory-swap", f"{job.limits.memory_mb}m"]
    for bind in job.binds:
        spec = f"type=bind,source={bind.source},destination={bind.target}"
        argv += ["--mount", spec if bind.writable else spec + ",readonly=true"]
    # Values stay off the command line (any host user can read it): `--env NAME` takes them from ours.
    argv += ["--env", f"ADE_EVENTS_FD={EVENTS_FD_INSIDE}", "--env", "HOME=/tmp"]
    argv += ["--env", f"PATH={job.env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"]
    argv += [arg for name in job.env if name not in ("HOME", "PATH") for arg in ("--env", name)]
    argv += ["--preserve-fds", "1", image, "/bin/sh", "-c", job.script]
    return argv


async def spawn_container(job: StepJob, events_fd: int, settings: Settings) -> Spawned:
    assert job.image is not None
    image = job.image
    code, message = await _runtime(settings, "image", "inspect", "--format", "{{.Id}}", image)
    if code != 0:
        raise ImageUnavailable(message or f"{settings.container_runtime} cannot find image {image!r}")

    def events_on_fd_3() -> None:  # runs in the child between fork and exec
        os.dup2(events_fd, EVENTS_FD_INSIDE, inheritable=True)

    runtime_env = {
        name: os.environ[name]
        for name in ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINER_HOST")
        if name in os.environ
    }
    proc = await asyncio.create_subprocess_exec(
        *container_argv(settings, job, image),
        env={**job.env, **runtime_env},
        cwd=runtime_cwd(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=(events_fd, EVENTS_FD_INSIDE),  # fd 3 is the pipe by then: kept open
        preexec_fn=events_on_fd_3,
        start_new_session=True,
    )
    return ContainerStep(proc, settings, job.name, bool(job.limits.memory_mb))
