"""The `ade` command: `dev` (everything on one machine), `serve`, `worker`, `runner`; the client commands
(`whoami`, `workspaces`, `keys`, `configs`, `runs`, `builds`, `images`, `runners`) live in
`ade.cli.commands` and the modules it names."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import cast

import click

from ade.cli.commands import COMMANDS, whoami
from ade.cli.runners import runners
from ade.core.settings import Settings, get_settings


def _configure_logging() -> None:
    from ade.core import logs

    logs.configure()


@click.group()
@click.version_option(package_name="ade", prog_name="ade", message="%(prog)s %(version)s")
def main() -> None:
    """ADE: an event-driven run/build orchestrator."""


@main.command()
@click.option("--host", default=None, help="Bind address (default ADE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default ADE_PORT or 8000).")
@click.option(
    "--workers",
    default=1,
    type=click.IntRange(1, 64),
    help="API processes sharing the port (one per core; each has its own hub). Default 1.",
)
@click.option("--fd", default=None, type=int, hidden=True)  # a listening socket inherited from `--workers`
def serve(host: str | None, port: int | None, workers: int, fd: int | None) -> None:
    """Run the HTTP API."""
    import uvicorn

    from ade.api.app import create_app

    _configure_logging()
    settings = get_settings()
    if workers > 1:
        from ade.cli.processes import serve_processes

        sys.exit(serve_processes(host or settings.host, port or settings.port, workers))
    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, end every SSE stream at once (clients resume with Last-Event-ID elsewhere)
        instead of holding them until the graceful-shutdown timeout cuts them mid-frame."""

        def handle_exit(self, sig: int, frame: object) -> None:
            services = getattr(app.state, "services", None)
            if services is not None:
                with contextlib.suppress(RuntimeError):  # no loop yet: nothing to drain
                    asyncio.get_running_loop().call_soon_threadsafe(services.hub.drain)
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        fd=fd,
        log_config=None,  # uvicorn's loggers go through ade.core.logs too: one format
        log_level=os.environ.get("ADE_LOG_LEVEL", "info").lower(),
        timeout_graceful_shutdown=5,
        loop="uvloop",
        http="httptools",
    )
    DrainingServer(config).run()


@main.command()
@click.option("--concurrency", default=None, type=int, help="Runs executed at once (default 4).")
def worker(concurrency: int | None) -> None:
    """Run an arq worker that executes runs."""
    from workers.main import build_worker

    _configure_logging()
    build_worker(get_settings(), concurrency=concurrency).run()


@main.command()
@click.option("--url", required=True, envvar="ADE_RUNNER_URL", help="The API's base URL (http://host:8000).")
@click.option("--token", required=True, envvar="ADE_RUNNER_TOKEN", help="The runner's token (rnr.…).")
@click.option(
    "--labels", default="", help="Comma-separated labels to take runs for (default: all registered)."
)
@click.option(
    "--concurrency", default=1, type=click.IntRange(1, 64), help="Runs executed at once (default 1)."
)
@click.option(
    "--dir",
    "data_dir",
    default=None,
    type=click.Path(path_type=Path, file_okay=False),
    help="Its private directory for runs in flight (default ADE_DATA_DIR or ./.ade-runner).",
)
def runner(url: str, token: str, labels: str, concurrency: int, data_dir: Path | None) -> None:
    """Execute runs offered to runners, talking to the API over HTTP only (no Redis, no shared data)."""
    from workers.runner import run_runner

    _configure_logging()
    wanted = [label.strip() for label in labels.split(",") if label.strip()]
    run_runner(url, token, wanted, concurrency, data_dir)


@main.command()
def reindex() -> None:
    """Rebuild all Redis metadata from the data directory (after a FLUSHALL or a lost Redis)."""
    from redis.asyncio import Redis

    from ade.records.reindex import reindex as rebuild

    _configure_logging()
    settings = get_settings()

    async def go() -> None:
        redis = Redis.from_url(settings.redis_url)
        try:
            counts = await rebuild(redis, settings.data_dir)
        finally:
            await redis.aclose()
        click.echo(
            f"reindexed {counts.workspaces} workspaces, {counts.configurations} configurations, "
            f"{counts.api_keys} API keys, {counts.runs} runs, {counts.builds} builds, "
            f"{counts.audit_entries} audit entries, {counts.artifacts} artifacts, "
            f"{counts.runners} runners"
        )
        for path in counts.unreadable:
            click.echo(f"skipped unreadable {path}", err=True)

    asyncio.run(go())


@main.command()
@click.option("--host", default=None, help="Bind address for the API.")
@click.option("--port", default=None, type=int, help="Port for the API.")
def dev(host: str | None, port: int | None) -> None:
    """Run everything on this machine: Redis (embedded, with a password, unless ADE_REDIS_URL is set),
    the API and a worker, their output prefixed `redis  |`, `api    |`, `worker |`.

    Ctrl-C stops all of it: the API and the worker first (a run in flight ends failed / worker_lost),
    Redis last.
    """
    from ade.cli.dev import run_dev

    sys.exit(run_dev(host, port))


@main.command()
@click.argument("component", type=click.Choice(["api", "worker", "runner"]))
def healthcheck(component: str) -> None:
    """Exit 0 if this host's API is ready (GET /readyz on ADE_HOST:ADE_PORT answers 200), if a worker
    on this host heartbeats (a fresh `ade:worker:<hostname>:*` key in Redis), or if the runner whose
    directory is ADE_DATA_DIR was answered by the API lately; else print why and exit 1. For container
    health checks."""
    settings = get_settings()
    checks = {"api": _api_problem, "worker": _worker_problem, "runner": _runner_problem}
    problem = checks[component](settings)
    if problem:
        click.echo(f"{component} unhealthy: {problem}", err=True)
        sys.exit(1)
    click.echo(f"{component} healthy")


def _api_problem(settings: Settings) -> str | None:
    import httpx

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/readyz"
    try:
        response = httpx.get(url, timeout=3.0)
    except httpx.HTTPError as exc:
        return f"{url}: {exc!r}"
    return None if response.status_code == 200 else f"{url} answered {response.status_code}: {response.text}"


def _runner_problem(settings: Settings) -> str | None:
    import time

    from workers.runner import ANSWERED_MARK, STALE_AFTER_S

    try:
        age_s = time.time() - (settings.data_dir / ANSWERED_MARK).stat().st_mtime
    except FileNotFoundError:
        return f"the API never answered this runner ({settings.data_dir / ANSWERED_MARK} is missing)"
    return None if age_s < STALE_AFTER_S else f"the API last answered this runner {age_s:.0f} s ago"


def _worker_problem(settings: Settings) -> str | None:
    import socket

    import redis

    from ade.core import keys
    from workers.main import HEARTBEAT_EVERY_S

    fresh_ms = (keys.WORKER_TTL_S - 2 * HEARTBEAT_EVERY_S) * 1000  # refreshed within two heartbeats
    pattern = keys.worker(f"{socket.gethostname()}:*")
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3.0, socket_timeout=3.0)
    try:
        ages = [cast(int, client.pttl(key)) for key in client.scan_iter(match=pattern, count=1000)]
    except (redis.RedisError, OSError) as exc:
        return f"Redis: {exc}"
    finally:
        client.close()
    if not ages:
        return f"no worker heartbeat on this host ({pattern})"
    if max(ages) < fresh_ms:
        return f"the newest heartbeat on this host ({pattern}) is stale"
    return None


# Client commands (ade.cli.commands and the modules it names), on ade.client.AdeClient.

for _group in [*COMMANDS, whoami, runners]:
    main.add_command(_group)


if __name__ == "__main__":
    main()
