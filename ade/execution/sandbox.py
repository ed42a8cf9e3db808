"""Where a step runs: the executors (README "Security model").

- `sandbox` (bubblewrap): read-only system directories, a minimal /etc, a private /tmp, the step's binds
  (its run's work, inputs and outputs at /ade/…, a build's environment at its own path) and nothing else;
  new user, PID, IPC, UTS, cgroup and (unless the configuration says `network: true`) network namespaces;
  an unprivileged uid (`ADE_SANDBOX_UID`, 65534) both inside and on the host; per-step rlimits. When its
  main process ends, the PID namespace ends, and every process the step started dies with it.
- `container` (ade.execution.container): the step's image under podman or docker.
- `host`: `bash -c` in a process group, as the worker's own user. No isolation.

A worker running as root cannot let bubblewrap map the sandbox uid itself (it would map it to root, which
no process limit binds): it makes the user namespace (sandbox uid ↔ the same host uid, root ↔ root for
the set-up), bubblewrap joins it as root to bind the directories, and `setpriv` drops to the sandbox uid,
without capabilities and with no_new_privs, before the step's shell starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ade.core.settings import Settings
from ade.execution.limits import Limits

log = logging.getLogger(__name__)

ExecutorName = Literal["sandbox", "container", "host"]
EXECUTORS: tuple[ExecutorName, ...] = ("sandbox", "container", "host")

WORK_DIR, INPUT_DIR, OUTPUT_DIR = "/ade/work", "/ade/inputs", "/ade/outputs"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # symlinks into /usr, or directories
ETC_ENTRIES = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "hosts",
    "resolv.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "ssl",
    "ca-certificates",
    "os-release",
    "debian_version",
)
HOST_WARNING = (
    "ADE_EXECUTOR=host: steps run as the worker's own user with its file system, processes and network: "
    "tenants are NOT isolated from each other or from this service"
)


class ExecutorUnavailable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Bind:
    source: Path
    target: str
    writable: bool = False


@dataclass(slots=True)
class StepJob:
    """One step as the engine asks for it; the executor decides how it runs."""

    script: str
    env: dict[str, str]
    cwd: str  # inside the sandbox or container (the host executor uses `host_cwd`)
    host_cwd: Path
    binds: list[Bind]
    network: bool
    limits: Limits
    name: str  # unique and safe as a container name
    image: str | None = None


class Spawned:
    """A started step: its process (the one whose exit ends the step) and how to stop everything in it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pgid = proc.pid  # every launcher starts a new session
        self.stopped_by_engine = False

    @property
    def oom_killed(self) -> bool:
        return False

    async def terminate(self) -> None:
        self.stopped_by_engine = True
        kill_group(self.pgid, signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL to whatever is left; called once the step's process has exited or was given up on."""
        kill_group(self.pgid, signal.SIGKILL)


def kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


# Host ---------------------------------------------------------------------------------------------


async def spawn_host(job: StepJob, events_fd: int) -> Spawned:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        job.script,
        cwd=job.host_cwd,
        env={**job.env, "ADE_EVENTS_FD": str(events_fd)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=(events_fd,),
        start_new_session=True,
    )
    return Spawned(proc)


# Sandbox (bubblewrap) -----------------------------------------------------------------------------


class SandboxStep(Spawned):
    """bwrap (the step's process group) → the namespace's init → the step. SIGTERM goes to every process
    of the step (not to the init, whose death would SIGKILL them at once); SIGKILL to the group ends the
    init (--die-with-parent), and with it the whole PID namespace."""

    async def terminate(self) -> None:
        self.stopped_by_engine = True
        inits = descendants(self.pgid)[:1]
        for pid in descendants(inits[0]) if inits else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)

    async def kill(self) -> None:
        kill_group(self.pgid, signal.SIGKILL)
        for pid in descendants(self.pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class Tools:
    bwrap: str
    setpriv: str
    prlimit: str
    unshare: str


def _tools() -> Tools:
    found = {
        name: shutil.which(name, path=SYSTEM_PATH) for name in ("bwrap", "setpriv", "prlimit", "unshare")
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise ExecutorUnavailable(f"not installed: {', '.join(missing)} (scripts/setup installs them)")
    return Tools(**{name: str(path) for name, path in found.items()})


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for tmp in ("/tmp", "/var/tmp", "/run"):
        args += ["--perms", "1777", "--tmpfs", tmp]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_ENTRIES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def _parents(targets: list[str]) -> list[str]:
    """Directories bwrap makes for mount points are private to root: make them 0755 first."""
    args: list[str] = []
    made = {"/", "/tmp", "/var/tmp", "/run"}
    for directory in (p for t in targets for p in reversed(Path(t).parents)):
        if str(directory) not in made:
            made.add(str(directory))
            args += ["--perms", "0755", "--dir", str(directory)]
    return args


@dataclass(slots=True)
class _UserNamespace:
    """A user namespace mapping root and the sandbox uid to themselves, for a worker running as root."""

    fd: int = -1
    extra_fds: list[int] = field(default_factory=list)

    @classmethod
    async def create(cls, tools: Tools, uid: int) -> _UserNamespace:
        holder = await asyncio.create_subprocess_exec(
            tools.unshare,
            "--user",
            "--",
            "/bin/sh",
            "-c",
            "echo; exec sleep 600",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert holder.stdout is not None
            await holder.stdout.readline()  # printed inside: the namespace exists
            mapping = f"0 0 1\n{uid} {uid} 1\n" if uid else "0 0 1\n"
            for name in ("uid_map", "gid_map"):  # /proc files: no disk behind them
                fd = os.open(f"/proc/{holder.pid}/{name}", os.O_WRONLY)
                try:
                    os.write(fd, mapping.encode())
                finally:
                    os.close(fd)
            return cls(fd=os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC))
        finally:  # the open fd keeps the namespace alive
            with contextlib.suppress(ProcessLookupError):
                holder.kill()
            await holder.wait()


async def spawn_sandbox(job: StepJob, events_fd: int, settings: Settings) -> Spawned:
    tools = _tools()
    uid = settings.sandbox_uid
    as_root = os.geteuid() == 0
    args = _system_args() + _parents([bind.target for bind in job.binds])  # after the tmpfs mounts
    users = f"root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:{uid}:{uid}:sandbox:/tmp:/usr/sbin/nologin\n"
    groups = f"root:x:0:\nnogroup:x:{uid}:\n"
    fds = [_memfd("passwd", users.encode()), _memfd("group", groups.encode())]
    for fd, name in zip(fds, ("/etc/passwd", "/etc/group"), strict=True):
        args += ["--perms", "0644", "--ro-bind-data", str(fd), name]
    for bind in job.binds:
        args += ["--bind" if bind.writable else "--ro-bind", str(bind.source), bind.target]
    args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "ade"]
    if not job.network:
        args.append("--unshare-net")
    args += ["--die-with-parent", "--new-session", "--chdir", job.cwd]
    command = []
    userns: _UserNamespace | None = None
    try:
        if as_root:
            userns = await _UserNamespace.create(tools, uid)
            fds.append(userns.fd)
            args += ["--userns", str(userns.fd), "--uid", "0", "--gid", "0"]
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
            command += [
                tools.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
            ]
            command += ["--"]
        else:
            args += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(uid)]
        rlimits = []
        if job.limits.processes:
            rlimits.append(f"--nproc={job.limits.processes}")
        if job.limits.memory_mb:
            rlimits.append(f"--as={job.limits.memory_mb * 1024 * 1024}")
        if rlimits:
            command += [tools.prlimit, *rlimits, "--"]
        command += ["/bin/bash", "-c", job.script]
        # The options (host paths, binds) stay off the command line any user of the host can read.
        fds.append(_memfd("bwrap-args", b"".join(a.encode() + b"\0" for a in args)))
        proc = await asyncio.create_subprocess_exec(
            tools.bwrap,
            "--args",
            str(fds[-1]),
            "--",
            *command,
            env={**job.env, "ADE_EVENTS_FD": str(events_fd)},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(events_fd, *fds),
            start_new_session=True,
        )
    finally:
        for fd in fds:
            os.close(fd)
    return SandboxStep(proc)


def prepare_dirs(settings: Settings, *dirs: Path, recursive: bool = False) -> None:
    """Let the sandbox uid write these directories (only a root worker runs steps as another uid)."""
    if os.geteuid() != 0:
        return
    uid = settings.sandbox_uid
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, uid, uid)
        if recursive:
            for root, subdirs, files in os.walk(directory):
                for name in subdirs + files:
                    os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


# Choosing the executor ------------------------------------------------------------------------------

_chosen: dict[str, ExecutorName] = {}


async def probe_sandbox(settings: Settings) -> str | None:
    """Why the sandbox cannot run a step here, or None when it can (a real trial step)."""
    try:
        with tempfile.TemporaryDirectory(prefix="ade-probe-") as root:
            work = Path(root) / "work"
            prepare_dirs(settings, work)
            job = StepJob(
                script="test -w /ade/work && test ! -e /ade/probe",
                env={"PATH": SYSTEM_PATH},
                cwd=WORK_DIR,
                host_cwd=work,
                binds=[Bind(work, WORK_DIR, writable=True)],
                network=False,
                limits=Limits(memory_mb=0, processes=0),
                name="probe",
            )
            read_fd, write_fd = os.pipe()
            try:
                step = await spawn_sandbox(job, write_fd, settings)
            finally:
                os.close(write_fd)
                os.close(read_fd)
            _, stderr = await asyncio.wait_for(step.proc.communicate(), 30)
            if step.proc.returncode != 0:
                return f"bubblewrap exited {step.proc.returncode}: {stderr.decode(errors='replace').strip()}"
    except (ExecutorUnavailable, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    return None


async def choose_executor(settings: Settings) -> ExecutorName:
    """The executor of steps without an image, decided once per process (at worker start-up).

    Unset: the sandbox when a trial step works, else the host executor with an error in the log. Set to
    `sandbox` when it does not work: ExecutorUnavailable (the worker refuses to start)."""
    if chosen := _chosen.get("default"):
        return chosen
    wanted = settings.executor.strip().lower()
    if wanted not in ("", *EXECUTORS):
        raise ExecutorUnavailable(f"ADE_EXECUTOR={settings.executor!r}: use sandbox, container or host")
    if wanted == "container" and not settings.container_image:
        raise ExecutorUnavailable("ADE_EXECUTOR=container needs ADE_CONTAINER_IMAGE for steps without one")
    chosen = "host" if wanted == "host" else "container" if wanted == "container" else "sandbox"
    if wanted != "host":
        problem = await probe_sandbox(settings)  # build phases run in the sandbox under `container` too
        if problem is not None:
            if wanted:
                raise ExecutorUnavailable(f"ADE_EXECUTOR={wanted}: the sandbox does not work here: {problem}")
            log.error(
                "the bubblewrap sandbox does not work here (%s); falling back to the host executor", problem
            )
            chosen = "host"
    if chosen == "host":
        log.warning("%s", HOST_WARNING)
    else:
        log.info("steps run in the %s executor", chosen)
    _chosen["default"] = chosen
    return chosen
