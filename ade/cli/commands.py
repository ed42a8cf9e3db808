"""The client commands of `ade` (workspaces, keys, configs, runs, builds, images), built on
`ade.client.AdeClient`.

Every command takes `--url` (or `ADE_URL`, default http://127.0.0.1:8000) and `--token` (or `ADE_TOKEN`).

Exit codes: 0 done; 1 a configuration file that does not parse or validate; 2 a usage error (click);
3 the API refused the request or could not be reached (the message goes to stderr). `ade runs watch` and
`--follow` report the run's outcome: 0 succeeded, 1 failed, 2 cancelled; `ade builds watch` and
`builds create --watch` the build's: 0 ready, 1 failed, 2 cancelled (3 and 130 for an error or Ctrl-C
while watching).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import httpx
import msgspec
import yaml
from rich.console import Console
from rich.table import Table

from ade.cli.watch import EXIT_ERROR, Kind, StreamView, duration
from ade.client import DEFAULT_URL, AdeApiError, AdeClient, AdeStreamError
from ade.core.models import ConfigurationCreate, InputArtifact, Role, RunResource, RunStatus
from ade.events.envelope import Event

F = TypeVar("F", bound=Callable[..., Any])

_STATUS_STYLES = {
    "succeeded": "green",
    "ready": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "building": "cyan",
    "expired": "dim",
}
_RUN_STATUSES = ["queued", "waiting_for_build", "running", "succeeded", "failed", "cancelled"]


class ApiFailure(click.ClickException):
    """The API refused or could not be reached: exit code 3."""

    exit_code = EXIT_ERROR


def console() -> Console:
    """Standard output as a rich console; wide when it is not a terminal, so tables do not fold ids."""
    out = Console(highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out = Console(highlight=False, width=200)
    return out


def connected(command: F) -> F:
    """Add `--url`/`--token` to a command and call it with an `AdeClient` first; API errors exit 3."""

    @click.option(
        "--url", envvar="ADE_URL", default=DEFAULT_URL, show_default=True, help="API URL (or ADE_URL)."
    )
    @click.option("--token", envvar="ADE_TOKEN", required=True, help="API key (or ADE_TOKEN).")
    @functools.wraps(command)
    def wrapper(*args: Any, url: str, token: str, **kwargs: Any) -> Any:
        try:
            with AdeClient(url, token) as ade:
                return command(ade, *args, **kwargs)
        except AdeApiError as exc:
            raise ApiFailure(str(exc)) from exc
        except AdeStreamError as exc:
            raise ApiFailure(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise ApiFailure(f"cannot reach the API at {url}: {exc}") from exc

    return cast(F, wrapper)


def _print_json(value: object) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


def _status(status: str) -> str:
    return f"[{_STATUS_STYLES.get(status, '')}]{status}[/]"


def _local_time(moment: datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def watch(kind: Kind, events: Iterator[Event], steps: Sequence[str] = ()) -> int:
    """Render a run's or a build's events from the start until it ends; the exit code for its outcome."""
    with StreamView(console(), kind, steps) as view:
        try:
            for event in events:
                view.handle(event)
        except KeyboardInterrupt:
            return 130
    return view.exit_code


# Workspaces and keys --------------------------------------------------------------------------------


@click.group()
def workspaces() -> None:
    """Workspaces (the bootstrap token creates them)."""


@workspaces.command("create")
@click.argument("name")
@connected
def workspaces_create(ade: AdeClient, name: str) -> None:
    """Create a workspace and print it as JSON."""
    _print_json(ade.create_workspace(name))


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--workspace", "workspace_id", required=True, help="Workspace id (ws_…).")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default="cli", show_default=True)
@click.option("--expires-at", default=None, help="RFC 3339 time after which the key stops working.")
@connected
def keys_create(ade: AdeClient, workspace_id: str, role: str, name: str, expires_at: str | None) -> None:
    """Create an API key; its secret is printed once."""
    expires = None
    if expires_at:
        try:
            expires = datetime.fromisoformat(expires_at)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires-at") from exc
    _print_json(ade.create_api_key(workspace_id, name, cast(Role, role), expires_at=expires))


# Configurations -------------------------------------------------------------------------------------


@click.group()
def configs() -> None:
    """Configurations."""


def load_document(path: Path) -> dict[str, Any]:
    """A YAML (`.yaml`, `.yml`, anything else) or TOML (`.toml`) file holding one mapping."""
    text = path.read_text()
    try:
        document = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise click.ClickException(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if not isinstance(document, dict):
        raise click.ClickException(f"{path}: expected a mapping at the top level")
    return document


def _apply_target(
    ade: AdeClient, name: str, configuration_id: object, workspace_id: str | None
) -> str | None:
    """The configuration `configs apply` replaces: the file's `id`, else the workspace's one of that name;
    None to create one."""
    if configuration_id is not None:
        current = ade.get_configuration(str(configuration_id))
        if workspace_id and current.workspace_id != workspace_id:
            raise click.ClickException(f"{current.id} belongs to {current.workspace_id}, not {workspace_id}")
        return current.id
    if not workspace_id:
        raise click.UsageError("the file names no `workspace` (or `id`); pass --workspace")
    same_name = [cfg.id for cfg in ade.list_configurations(workspace_id) if cfg.name == name]
    if len(same_name) > 1:
        raise click.ClickException(
            f"several configurations are named {name!r} ({', '.join(same_name)}): set `id`"
        )
    return same_name[0] if same_name else None


@configs.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--workspace", "workspace_id", default=None, help="Workspace id (overrides the file's).")
@connected
def configs_apply(ade: AdeClient, file: Path, workspace_id: str | None) -> None:
    """Create or replace the configuration in FILE (YAML or TOML); print its id.

    FILE holds `name`, `steps`, and optionally `environment`, `timeout_s`, `workspace` (the workspace id)
    and `id`. With `id` that configuration is replaced; else the workspace's configuration of that name
    is replaced if there is one, or a new one is created.
    """
    document = load_document(file)
    configuration_id = document.pop("id", None)
    in_file = document.pop("workspace", None)
    workspace_id = workspace_id or (str(in_file) if in_file is not None else None)
    try:
        body = msgspec.convert(document, ConfigurationCreate)
    except msgspec.ValidationError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    target = _apply_target(ade, body.name, configuration_id, workspace_id)
    if target is None:
        assert workspace_id is not None
        cfg = ade.create_configuration(workspace_id, body)
        click.echo(f"created configuration {cfg.name!r}", err=True)
    else:
        cfg = ade.replace_configuration(target, body)
        click.echo(f"replaced configuration {cfg.name!r}", err=True)
    click.echo(cfg.id)


# Runs -----------------------------------------------------------------------------------------------


@click.group()
def runs() -> None:
    """Runs: create, watch, list, cancel, re-run.

    \b
    `watch`, and `create`/`rerun` with --follow, exit with the run's outcome:
      0 succeeded, 1 failed, 2 cancelled,
      3 the API refused or could not be reached (any command), 130 interrupted.
    """


def watch_run(ade: AdeClient, run: RunResource) -> int:
    """Render the run's events (its build's too, while it waits for it) until it ends; its exit code."""
    return watch("run", ade.events(run.id), [step.name for step in run.steps])


@runs.command("create")
@click.argument("configuration_id", metavar="CFG")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file to upload and place in the run's inputs/ under its base name (repeatable).",
)
@click.option("--follow", is_flag=True, help="Watch the run; exit with its outcome (like `runs watch`).")
@connected
def runs_create(ade: AdeClient, configuration_id: str, inputs: tuple[Path, ...], follow: bool) -> None:
    """Create a run of configuration CFG; print its id."""
    names = [path.name for path in inputs]
    if len(set(names)) != len(names):
        raise click.UsageError("two --input files have the same base name")
    artifacts = []
    if inputs:
        workspace_id = ade.get_configuration(configuration_id).workspace_id
        for path in inputs:
            artifact = ade.upload_artifact(workspace_id, path)
            artifacts.append(InputArtifact(key=artifact.key, name=path.name))
    run = ade.create_run(configuration_id, input_artifacts=artifacts)
    click.echo(run.id)
    if follow:
        sys.exit(watch_run(ade, run))


@runs.command("watch")
@click.argument("run_id", metavar="RUN")
@connected
def runs_watch(ade: AdeClient, run_id: str) -> None:
    """Show run RUN (id or unique prefix) live, from its start, until it ends.

    Exit code: 0 succeeded, 1 failed, 2 cancelled (3 API error, 130 interrupted).
    """
    sys.exit(watch_run(ade, ade.get_run(run_id)))


@runs.command("list")
@click.option("--workspace", "workspace_id", envvar="ADE_WORKSPACE", default=None, help="Workspace id.")
@click.option("--config", "configuration_id", default=None, help="Configuration id.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(_RUN_STATUSES), help="Repeatable.")
@click.option("--branch", default=None, help="Only runs of this commit branch.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
@connected
def runs_list(
    ade: AdeClient,
    workspace_id: str | None,
    configuration_id: str | None,
    statuses: tuple[str, ...],
    branch: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first, of a workspace (--workspace or ADE_WORKSPACE) or a configuration."""
    if not workspace_id and not configuration_id:
        raise click.UsageError("pass --workspace or --config")
    found = list(
        ade.list_runs(
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            status=cast(list[RunStatus], list(statuses)),
            branch=branch,
            limit=limit,
        )
    )
    if as_json:
        _print_json(found)
        return
    table = Table("RUN", "STATUS", "CONFIGURATION", "ATTEMPT", "BRANCH", "CREATED", "DURATION", box=None)
    for run in found:
        took = None
        if run.started_at and run.completed_at:
            took = (run.completed_at - run.started_at).total_seconds() * 1000
        table.add_row(
            run.id,
            _status(run.status),
            run.configuration_id,
            str(run.attempt),
            (run.commit.branch if run.commit else None) or "",
            _local_time(run.created_at),
            duration(took) if took is not None else "",
        )
    console().print(table)


@runs.command("cancel")
@click.argument("run_id", metavar="RUN")
@connected
def runs_cancel(ade: AdeClient, run_id: str) -> None:
    """Cancel run RUN: a queued one at once, a running one once its step is stopped."""
    run = ade.cancel_run(run_id)
    click.echo(f"{run.id} {'cancelled' if run.status == 'cancelled' else 'cancel requested'}")


@runs.command("rerun")
@click.argument("run_id", metavar="RUN")
@click.option("--follow", is_flag=True, help="Watch the new run; exit with its outcome.")
@click.option(
    "--failed-only",
    is_flag=True,
    help="Keep the steps that succeeded (and their outputs); run the others and what depends on them. "
    "RUN must have failed.",
)
@connected
def runs_rerun(ade: AdeClient, run_id: str, follow: bool, failed_only: bool) -> None:
    """Re-run RUN (same plan and inputs, next attempt); print the new run's id."""
    run = ade.rerun(run_id, failed_only=failed_only)
    click.echo(run.id)
    if follow:
        sys.exit(watch_run(ade, run))


# Builds ---------------------------------------------------------------------------------------------


@click.group()
def builds() -> None:
    """Builds: a configuration's environment, made once per fingerprint and reused.

    \b
    `watch`, and `create` with --watch, exit with the build's outcome:
      0 ready, 1 failed, 2 cancelled,
      3 the API refused or could not be reached (any command), 130 interrupted.
    """


@builds.command("create")
@click.argument("configuration_id", metavar="CFG")
@click.option(
    "--workspace", "workspace_id", default=None, help="Workspace id (default: the configuration's)."
)
@click.option("--force", is_flag=True, help="Rebuild even if a ready build has the same fingerprint.")
@click.option("--watch", "watch_it", is_flag=True, help="Watch the build; exit with its outcome.")
@connected
def builds_create(
    ade: AdeClient, configuration_id: str, workspace_id: str | None, force: bool, watch_it: bool
) -> None:
    """Build configuration CFG's environment (or reuse / join the build with its fingerprint); print the
    build's id."""
    workspace_id = workspace_id or ade.get_configuration(configuration_id).workspace_id
    build = ade.create_build(workspace_id, configuration_id, force=force)
    click.echo(build.id)
    if build.reused_from:
        click.echo(f"reuses the environment of {build.reused_from}", err=True)
    if watch_it:
        sys.exit(watch("build", ade.build_events(build.id)))


@builds.command("watch")
@click.argument("build_id", metavar="BUILD")
@connected
def builds_watch(ade: AdeClient, build_id: str) -> None:
    """Show build BUILD (id or unique prefix) live, from its start, until it ends.

    Exit code: 0 ready, 1 failed, 2 cancelled (3 API error, 130 interrupted).
    """
    sys.exit(watch("build", ade.build_events(ade.get_build(build_id).id)))


@builds.command("list")
@click.argument("configuration_id", metavar="CFG")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the builds as a JSON array.")
@connected
def builds_list(ade: AdeClient, configuration_id: str, limit: int, as_json: bool) -> None:
    """List configuration CFG's builds, newest first."""
    found = list(ade.list_builds(configuration_id, limit=limit))
    if as_json:
        _print_json(found)
        return
    table = Table("BUILD", "STATUS", "FINGERPRINT", "REUSED FROM", "CREATED", box=None)
    for build in found:
        table.add_row(
            build.id,
            _status(build.status),
            build.fingerprint[:12],
            build.reused_from or "",
            _local_time(build.created_at),
        )
    console().print(table)


# Docker images --------------------------------------------------------------------------------------


@click.group()
def images() -> None:
    """Docker images steps may name by slug (`image:` in a step)."""


_WORKSPACE_OPTION = click.option(
    "--workspace",
    "workspace_id",
    envvar="ADE_WORKSPACE",
    default=None,
    help="Workspace id (or ADE_WORKSPACE; default: the key's own workspace).",
)


def _workspace_of(ade: AdeClient, workspace_id: str | None) -> str:
    """The workspace given, else the one the key belongs to (the bootstrap token has none)."""
    if workspace_id:
        return workspace_id
    own = ade.whoami().workspace_id
    if own is None:
        raise click.UsageError("the bootstrap token belongs to no workspace: pass --workspace")
    return own


@images.command("add")
@click.argument("slug")
@click.argument("image_url")
@click.option("--public", is_flag=True, help="Visible to every workspace (the bootstrap token only).")
@_WORKSPACE_OPTION
@connected
def images_add(ade: AdeClient, slug: str, image_url: str, public: bool, workspace_id: str | None) -> None:
    """Register IMAGE_URL (e.g. docker.io/library/alpine:3) as SLUG; print the image's id."""
    image = ade.create_docker_image(_workspace_of(ade, workspace_id), slug, image_url, public=public)
    click.echo(image.id)


@images.command("list")
@_WORKSPACE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the images as a JSON array.")
@connected
def images_list(ade: AdeClient, workspace_id: str | None, as_json: bool) -> None:
    """List the images a workspace may name: its own and the public ones."""
    found = ade.list_docker_images(_workspace_of(ade, workspace_id))
    if as_json:
        _print_json(found)
        return
    table = Table("IMAGE", "SLUG", "IMAGE URL", "PUBLIC", "CREATED", box=None)
    for image in found:
        table.add_row(
            image.id,
            image.slug,
            image.image_url,
            "yes" if image.public else "",
            _local_time(image.created_at),
        )
    console().print(table)


@images.command("delete")
@click.argument("image_id", metavar="ID")
@connected
def images_delete(ade: AdeClient, image_id: str) -> None:
    """Remove docker image ID (a public one takes the bootstrap token)."""
    ade.delete_docker_image(image_id)
    click.echo(f"{image_id} deleted")


COMMANDS = [workspaces, keys, configs, runs, builds, images]
