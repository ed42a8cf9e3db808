"""The `ade` command: `dev` (everything on one machine), `serve`, `worker`; the client commands
(`workspaces`, `keys`, `configs`, `runs`) live in `ade.cli_client`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from ade.cli.commands import COMMANDS
from ade.core.settings import Settings, get_settings


def _configure_logging() -> None:
    from ade.core import logs

    logs.configure()


@click.group()
def main() -> None:
    """ADE: an event-driven run/build orchestrator."""


@main.command()
@click.option("--host", default=None, help="Bind address (default ADE_HOST or 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default ADE_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API."""
    import uvicorn

    from ade.api.app import create_app

    _configure_logging()
    settings = get_settings()
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
        log_level=os.environ.get("ADE_LOG_LEVEL", "info").lower(),
        timeout_graceful_shutdown=5,
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
            f"{counts.audit_entries} audit entries, {counts.artifacts} artifacts"
        )
        for path in counts.unreadable:
            click.echo(f"skipped unreadable {path}", err=True)

    asyncio.run(go())


@main.command()
@click.option("--host", default=None, help="Bind address for the API.")
@click.option("--port", default=None, type=int, help="Port for the API.")
def dev(host: str | None, port: int | None) -> None:
    """Run everything on this machine: Redis (embedded unless ADE_REDIS_URL is set), the API and a worker.

    Ctrl-C stops all of it.
    """
    from ade.cli.redis_server import RedisServer

    settings = Settings.from_env()
    env = dict(os.environ, ADE_DATA_DIR=str(settings.data_dir))
    if not settings.bootstrap_token:
        env["ADE_BOOTSTRAP_TOKEN"] = _dev_bootstrap_token(settings.data_dir)
        click.echo(
            f"ade dev: bootstrap token {env['ADE_BOOTSTRAP_TOKEN']} (kept in $ADE_DATA_DIR/bootstrap-token)"
        )
    redis_server = None
    if not os.environ.get("ADE_REDIS_URL"):
        redis_server = RedisServer(settings.data_dir / "redis").start()
        env["ADE_REDIS_URL"] = redis_server.url
        click.echo(f"ade dev: embedded Redis at {redis_server.url} (data in {redis_server.directory})")
    serve_args = [sys.executable, "-m", "ade.cli", "serve"]
    if host:
        serve_args += ["--host", host]
    if port:
        serve_args += ["--port", str(port)]
    children = [
        subprocess.Popen(serve_args, env=env),
        subprocess.Popen([sys.executable, "-m", "ade.cli", "worker"], env=env),
    ]
    click.echo(
        f"ade dev: API on http://{host or settings.host}:{port or settings.port}, data in {settings.data_dir}"
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if redis_server is not None:
            redis_server.stop()
        click.echo("ade dev: stopped")


def _dev_bootstrap_token(data_dir: Path) -> str:
    """A bootstrap token for `ade dev` when ADE_BOOTSTRAP_TOKEN is unset: made once, kept in the data dir."""
    path = data_dir / "bootstrap-token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


# Client commands (workspaces, keys, configs, runs): ade/cli_client.py, on ade.client.AdeClient.

for _group in COMMANDS:
    main.add_command(_group)


if __name__ == "__main__":
    main()
