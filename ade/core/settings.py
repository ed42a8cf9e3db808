"""Settings, read from the environment once. Each is declared once, below: its environment variable is
`ADE_` + its name in capitals (`lease_ttl_s` ← `ADE_LEASE_TTL_S`), its type says how it is read."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": lambda raw: raw.lower() in ("1", "true", "yes"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./.ade")
    bootstrap_token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # Streaming
    sse_keepalive_s: float = 15.0
    sse_retry_ms: int = 2000
    subscriber_queue_events: int = 1024
    replay_page_events: int = 1000
    sse_coalesce_max_ms: int = 500  # longest a live event waits to share a write with the next ones
    # Worker
    worker_concurrency: int = 4
    lease_ttl_s: float = 10.0
    poll_delay_s: float = 1.0  # the fallback: a wake-up message makes an idle worker poll at once
    console_line_max_bytes: int = 16384
    kill_grace_s: float = 5.0
    worker_shutdown_grace_s: float = 30.0
    default_run_timeout_s: float = 3600.0
    queue_timeout_s: float = 24 * 3600.0  # a run queued longer fails `queue_timeout` without starting
    log_fsync: bool = False
    # Security and limits
    stream_token_ttl_s: float = 300.0
    max_request_bytes: int = 1024 * 1024
    max_json_depth: int = 64  # levels of nested arrays/objects in a JSON request body
    max_steps: int = 100
    max_script_bytes: int = 65536
    max_streams_per_key: int = 32
    max_artifact_bytes: int = 100 * 1024 * 1024
    # Builds
    build_python: str = ""  # the interpreter python builds use (default: the worker's own)
    pip_find_links: str = ""  # a wheel directory every python build may install from (offline builds)
    build_log_retention_s: float = 30 * 24 * 3600.0
    build_env_retention_s: float = 7 * 24 * 3600.0
    build_sweep_interval_s: float = 600.0
    # Isolation (README "Security model"): how steps run, and the most any step may use
    executor: str = ""  # sandbox | container | host; empty: sandbox where bubblewrap works, else host
    sandbox_uid: int = 65534  # the unprivileged user (and group) steps run as, inside and on the host
    container_runtime: str = "podman"  # or docker
    container_runtime_flags: str = ""  # extra `run` flags, e.g. "--runtime runc"
    # `--ulimit`s, comma-separated: a runtime without CAP_SYS_RESOURCE cannot raise the defaults it sets
    container_ulimits: str = "nofile=1024:1024,nproc=4096:4096"
    container_image: str = ""  # the image of steps without one when ADE_EXECUTOR=container
    container_pull: str = "never"  # never pull: images come from the worker's own store
    step_max_memory_mb: int = 4096  # per step (sandbox: address space of each process; container: cgroup)
    step_max_processes: int = 512  # per step (sandbox: RLIMIT_NPROC in its user namespace; container: pids)
    # Limits against hostile steps (a breach fails the step or build `resource_limit`, except the console)
    max_output_bytes: int = 1024 * 1024 * 1024  # a run's outputs, measured after each step
    max_console_bytes_per_run: int = 64 * 1024 * 1024  # console lines + step events; past it they are dropped
    max_archive_unpacked_bytes: int = 100 * 1024 * 1024  # a build source archive, summed from its headers
    max_archive_members: int = 50_000  # entries of a build source archive
    # Workflows (README "Workflows")
    max_parallel_steps: int = 4  # steps of one run running at once (below 1: 1)
    cleanup_grace_s: float = 30.0  # after a cancel or the run's timeout, how long `when: always` steps get
    # Fair share
    max_running_per_workspace: int = 4  # runs of one workspace executing at once, all workers; 0: no cap
    # Runners (README "Runners")
    runner_lost_after_s: float = 15.0  # a runner not heard from this long: offline, its runs `runner_lost`
    runner_claim_wait_s: float = 20.0  # the longest a runner's claim (long poll) waits for a run
    # Caches (README "Caches")
    max_cache_bytes: int = 1024 * 1024 * 1024  # a step's cache (all its cache_dirs); larger: not saved
    max_workspace_cache_bytes: int = 10 * 1024 * 1024 * 1024  # a workspace's: past it, LRU caches are evicted

    @classmethod
    def from_env(cls) -> Settings:
        """Every `ADE_*` variable that is set and not empty; a malformed value names its variable."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = f"ADE_{field.name.upper()}"
            raw = os.environ.get(name, "")
            if raw == "":
                continue
            parse = _PARSERS.get(str(field.type), str)
            try:
                values[field.name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a valid {field.type}") from exc
        settings = cls(**values)
        return dataclasses.replace(settings, data_dir=Path(settings.data_dir).resolve())


@cache
def get_settings() -> Settings:
    return Settings.from_env()
