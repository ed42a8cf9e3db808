"""The `container` executor: a step in its image under podman (or docker), with the same binds as the
sandbox, a non-root user, no network by default, a memory and a pids limit, `--rm`, and a name per step
so that a timeout or a cancel can stop and remove it whatever happened to the client process.

A step names an image by its slug (or `build`: its configuration's docker build) and the engine resolves
it to its reference before the step starts. Images are not pulled by default (`ADE_CONTAINER_PULL` is
`never`): the reference must be one the worker's runtime already has; with another policy a missing image
is pulled (at most PULL_TIMEOUT_S) before the step starts, and a failed pull is `image_unavailable`.

Also here: a `docker` build's image (`podman build` in its own private temporary directory, so that what
it leaves behind when it is stopped — the RUN instruction's container, buildah's working container — can
be found and removed), removing a stream's containers (the reaper, after a lost worker) and an image
(retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ade.core.settings import Settings
from ade.execution.limits import Limits
from ade.execution.sandbox import Spawned, StepJob, kill_group

EVENTS_FD_INSIDE = 3  # podman/docker --preserve-fds 1 hands over fd 3
RUNTIME_CALL_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 300.0  # a pull (ADE_CONTAINER_PULL other than never) that takes longer fails the step
OOM_EXIT = 128 + signal.SIGKILL
RUNTIME_ENV = ("PATH", "HOME", "XDG_RUNTIME_DIR", "CONTAINER_HOST")
# What a runtime says when an image it was asked for is not there, or cannot be pulled.
UNAVAILABLE = re.compile(
    r"image not known|no such image|pull access denied|manifest unknown|initializing source|"
    r"pinging container registry|repository does not exist|failed to resolve source metadata",
    re.IGNORECASE,
)


class ImageUnavailable(Exception):
    pass


@functools.cache
def runtime_cwd() -> str:
    """A private working directory for the runtime: podman's conmon drops an `oom` file in its own."""
    return tempfile.mkdtemp(prefix="ade-container-runtime-")


def name_prefix(stream_id: str) -> str:
    """What the name of every container of a stream's steps starts with (`isolation.container_name`)."""
    return f"ade-{stream_id}-".lower()


async def _call(
    settings: Settings, *args: str, timeout_s: float = RUNTIME_CALL_TIMEOUT_S
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one runtime command; 127 when there is no runtime, -1 on a timeout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            settings.container_runtime,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=runtime_cwd(),
        )
    except OSError as exc:
        return 127, "", f"{settings.container_runtime}: {exc.strerror or exc}"
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "", f"{settings.container_runtime} {args[0]} timed out after {timeout_s:g} s"
    return proc.returncode or 0, stdout.decode(errors="replace"), stderr.decode(errors="replace").strip()


async def _runtime(settings: Settings, *args: str) -> tuple[int, str]:
    code, _, message = await _call(settings, *args)
    return code, message


def _error_of(message: str) -> str:
    """The runtime's own error line(s) out of its stderr (`Error: …`), else all of it."""
    errors = [line for line in message.splitlines() if line.lower().startswith("error")]
    return "\n".join(errors) or message


async def ensure_image(settings: Settings, image: str) -> None:
    """The image is in the runtime's store, or is pulled there when ADE_CONTAINER_PULL allows it (never an
    image a docker build made: `localhost/…` names no registry); else `ImageUnavailable` with the
    runtime's message."""
    code, message = await _runtime(settings, "image", "inspect", "--format", "{{.Id}}", image)
    if code == 0:
        return
    if settings.container_pull == "never" or image.startswith("localhost/"):
        raise ImageUnavailable(message or f"{settings.container_runtime} cannot find image {image!r}")
    code, _, message = await _call(settings, "pull", "--quiet", image, timeout_s=PULL_TIMEOUT_S)
    if code != 0:
        raise ImageUnavailable(_error_of(message) or f"{settings.container_runtime} pull {image!r} failed")


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
    await ensure_image(settings, image)

    def events_on_fd_3() -> None:  # runs in the child between fork and exec
        os.dup2(events_fd, EVENTS_FD_INSIDE, inheritable=True)

    runtime_env = {name: os.environ[name] for name in RUNTIME_ENV if name in os.environ}
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


# Cleaning up after a lost worker, and retention ----------------------------------------------------


async def remove_stream_containers(settings: Settings, stream_id: str) -> list[str]:
    """Remove (`rm --force`) every container of a stream's steps that is still there — a lost worker's
    container keeps running under its monitor after the client process was killed. Returns their names."""
    prefix = name_prefix(stream_id)
    code, listed, _ = await _call(
        settings, "ps", "--all", "--filter", f"name={prefix}", "--format", "{{.Names}}"
    )
    names = [name for name in listed.split() if name.startswith(prefix)] if code == 0 else []
    if names:
        await _runtime(settings, "rm", "--force", "--time", "0", "--ignore", *names)
    return names


async def remove_image(settings: Settings, image: str) -> tuple[bool, str]:
    """Remove an image from the runtime's store: (removed or already gone, the runtime's message)."""
    code, message = await _runtime(settings, "image", "rm", image)
    return code == 0 or bool(UNAVAILABLE.search(message)), message


# A docker build's image ------------------------------------------------------------------------------

CONTAINERFILES = ("Containerfile", "Dockerfile")
IGNORE_FILES = (".containerignore", ".dockerignore")


def image_build_dir(build_id: str, *, create: bool = False) -> Path:
    """The private temporary directory (TMPDIR) of a build's `podman build` on this host, named after the
    build so that whoever stops it (the builder, or the reaper after a lost worker) finds what it left:
    buildah puts the bundle of each RUN instruction's container there (`buildah*/pid`, `…/hostname`)."""
    base = Path(tempfile.gettempdir()) / f"ade-image-builds-{os.getuid()}"
    if create:
        base.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(base)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{base} is not a private directory of this user")
        (base / build_id).mkdir(mode=0o700, exist_ok=True)
    return base / build_id


@dataclass(slots=True)
class ImageBuildJob:
    """`podman build` of a docker build: the context (the build's source), its Containerfile, the tag."""

    build_id: str
    tag: str
    context: Path
    containerfile: Path
    network: bool
    limits: Limits
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def image_build_argv(settings: Settings, job: ImageBuildJob) -> list[str]:
    """The runtime's flags (ADE_CONTAINER_RUNTIME_FLAGS: they must suit `build` too) and ulimits, the pull
    policy (`never` by default: a FROM must name an image the runtime has), no network unless the build
    says so, its memory limit, no intermediate images (no layer cache shared between builds)."""
    argv = [settings.container_runtime, "build", *shlex.split(settings.container_runtime_flags)]
    argv += [f"--pull={settings.container_pull}", "--layers=false", "--force-rm"]
    argv += ["--network", "host" if job.network else "none"]
    argv += [arg for limit in _split(settings.container_ulimits) for arg in ("--ulimit", limit)]
    if job.limits.memory_mb:
        argv += ["--memory", f"{job.limits.memory_mb}m", "--memory-swap", f"{job.limits.memory_mb}m"]
    argv += [arg for name, value in job.labels.items() for arg in ("--label", f"{name}={value}")]
    argv += [arg for name, value in job.build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    argv += ["--file", str(job.containerfile), "--tag", job.tag, str(job.context)]
    return argv


class ImageBuild(Spawned):
    """`podman build` (the step's process group, with buildah's OCI runtime wrapper). A RUN instruction's
    container is not in that group: SIGINT makes podman stop it; the kill removes whatever is left."""

    def __init__(self, proc: asyncio.subprocess.Process, settings: Settings, build_id: str) -> None:
        super().__init__(proc)
        self._settings, self._build_id = settings, build_id

    async def terminate(self) -> None:
        self.stopped_by_engine = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)

    async def kill(self) -> None:
        kill_group(self.pgid, signal.SIGKILL)
        await stop_image_build(self._settings, self._build_id)


async def spawn_image_build(job: ImageBuildJob, events_fd: int, settings: Settings) -> Spawned:
    """Start `podman build` with its own TMPDIR. (It writes no step events: `events_fd` stays unused.)"""
    tmpdir = await asyncio.to_thread(functools.partial(image_build_dir, job.build_id, create=True))
    runtime_env = {name: os.environ[name] for name in RUNTIME_ENV if name in os.environ}
    proc = await asyncio.create_subprocess_exec(
        *image_build_argv(settings, job),
        env={**runtime_env, "TMPDIR": str(tmpdir)},
        cwd=runtime_cwd(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    return ImageBuild(proc, settings, job.build_id)


async def stop_image_build(settings: Settings, build_id: str) -> None:
    """After a build's `podman build` was killed (or ended): kill the container of a RUN instruction that
    was running (SIGKILL to its init ends its PID namespace), remove buildah's working container and the
    OCI runtime's state of it, and the private directory. A no-op when nothing is left."""
    root = image_build_dir(build_id)
    if not root.is_dir():
        return
    bundles = await asyncio.to_thread(lambda: sorted(p for p in root.glob("buildah*") if p.is_dir()))
    working: list[str] = []
    for bundle in bundles:
        await asyncio.to_thread(_kill_container_init, bundle / "pid")
        with contextlib.suppress(OSError):
            host = (bundle / "hostname").read_text().strip()
            if re.fullmatch(r"[0-9a-f]{12,64}", host):  # buildah names a RUN's host after its container
                working.append(host)
    if working:
        await _runtime(settings, "rm", "--force", "--time", "0", "--ignore", *working)
    if bundles and (oci := await _oci_runtime(settings)) is not None:
        for bundle in bundles:
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    oci, "delete", "--force", f"buildah-{bundle.name}",
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, cwd=runtime_cwd(),
                )  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), RUNTIME_CALL_TIMEOUT_S)
    await asyncio.to_thread(shutil.rmtree, root, True)


async def _oci_runtime(settings: Settings) -> str | None:
    """The OCI runtime podman's builds use (`--runtime` in ADE_CONTAINER_RUNTIME_FLAGS, else podman's)."""
    if "podman" not in os.path.basename(settings.container_runtime):
        return None
    flags = shlex.split(settings.container_runtime_flags)
    for index, flag in enumerate(flags):
        if flag == "--runtime" and index + 1 < len(flags):
            return flags[index + 1]
        if flag.startswith("--runtime="):
            return flag.partition("=")[2]
    code, path, _ = await _call(settings, "info", "--format", "{{.Host.OCIRuntime.Path}}")
    return (path.strip() or None) if code == 0 else None


def _kill_container_init(pid_file: Path) -> None:
    """SIGKILL the process a bundle's pid file names, unless that pid now belongs to a newer process."""
    try:
        pid = int(pid_file.read_text().strip())
        written_s = pid_file.stat().st_mtime
    except (OSError, ValueError):
        return
    started_s = _start_time_s(pid)
    if pid > 1 and started_s is not None and started_s <= written_s + 1.0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _start_time_s(pid: int) -> float | None:
    """When a process started (seconds since the epoch; to the second: the boot time's precision)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
        with open("/proc/stat", "rb") as handle:
            boot = next(line for line in handle if line.startswith(b"btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(data[data.rindex(b")") + 2 :].split()[19])
    return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
