"""Settings, read from the environment once (every variable has the ADE_ prefix)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str
    data_dir: Path
    bootstrap_token: str | None
    host: str = "127.0.0.1"
    port: int = 8000
    # Streaming
    sse_keepalive_s: float = 15.0
    sse_retry_ms: int = 2000
    subscriber_queue_events: int = 1024
    replay_page_events: int = 1000
    # Worker
    worker_concurrency: int = 4
    lease_ttl_s: float = 10.0
    poll_delay_s: float = 0.5
    console_line_max_bytes: int = 16384
    kill_grace_s: float = 5.0
    worker_shutdown_grace_s: float = 30.0
    default_run_timeout_s: float = 3600.0
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
    build_log_retention_s: float = 30 * 24 * 3600
    build_env_retention_s: float = 7 * 24 * 3600
    build_sweep_interval_s: float = 600.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            redis_url=os.environ.get("ADE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            data_dir=Path(os.environ.get("ADE_DATA_DIR", "./.ade")).resolve(),
            bootstrap_token=os.environ.get("ADE_BOOTSTRAP_TOKEN") or None,
            host=os.environ.get("ADE_HOST", "127.0.0.1"),
            port=_int("ADE_PORT", 8000),
            sse_keepalive_s=_float("ADE_SSE_KEEPALIVE_S", 15.0),
            sse_retry_ms=_int("ADE_SSE_RETRY_MS", 2000),
            subscriber_queue_events=_int("ADE_SUBSCRIBER_QUEUE_EVENTS", 1024),
            replay_page_events=_int("ADE_REPLAY_PAGE_EVENTS", 1000),
            worker_concurrency=_int("ADE_WORKER_CONCURRENCY", 4),
            lease_ttl_s=_float("ADE_LEASE_TTL_S", 10.0),
            poll_delay_s=_float("ADE_POLL_DELAY_S", 0.5),
            console_line_max_bytes=_int("ADE_CONSOLE_LINE_MAX_BYTES", 16384),
            kill_grace_s=_float("ADE_KILL_GRACE_S", 5.0),
            worker_shutdown_grace_s=_float("ADE_WORKER_SHUTDOWN_GRACE_S", 30.0),
            default_run_timeout_s=_float("ADE_DEFAULT_RUN_TIMEOUT_S", 3600.0),
            log_fsync=os.environ.get("ADE_LOG_FSYNC", "") in ("1", "true", "yes"),
            stream_token_ttl_s=_float("ADE_STREAM_TOKEN_TTL_S", 300.0),
            max_request_bytes=_int("ADE_MAX_REQUEST_BYTES", 1024 * 1024),
            max_json_depth=_int("ADE_MAX_JSON_DEPTH", 64),
            max_steps=_int("ADE_MAX_STEPS", 100),
            max_script_bytes=_int("ADE_MAX_SCRIPT_BYTES", 65536),
            max_streams_per_key=_int("ADE_MAX_STREAMS_PER_KEY", 32),
            max_artifact_bytes=_int("ADE_MAX_ARTIFACT_BYTES", 100 * 1024 * 1024),
            build_python=os.environ.get("ADE_BUILD_PYTHON", ""),
            pip_find_links=os.environ.get("ADE_PIP_FIND_LINKS", ""),
            build_log_retention_s=_float("ADE_BUILD_LOG_RETENTION_S", 30 * 24 * 3600),
            build_env_retention_s=_float("ADE_BUILD_ENV_RETENTION_S", 7 * 24 * 3600),
            build_sweep_interval_s=_float("ADE_BUILD_SWEEP_INTERVAL_S", 600.0),
        )


@cache
def get_settings() -> Settings:
    return Settings.from_env()
