"""The client commands of `ade` (workspaces, keys, whoami, configs, runs, builds, images), built on
`ade.client.AdeClient`; `configs` and `runs` live in `ade.cli.configs` and `ade.cli.runs`, what they share
(the connection, the workspace, configurations by name) in `ade.cli.common`.

Every command takes `--url` (or `ADE_URL`, default http://127.0.0.1:8000) and `--token` (or `ADE_TOKEN`);
one that acts in a workspace takes `--workspace` (else `ADE_WORKSPACE`, else the key's own workspace).

Exit codes: 0 done; 1 a configuration file that does not parse or validate; 2 a usage error (click), an
unknown or ambiguous configuration among them; 3 the API refused the request or could not be reached (the
message goes to stderr). `ade runs watch` and `--follow` report the run's outcome: 0 succeeded, 1 failed,
2 cancelled; `ade builds watch` and `builds create --watch` the build's: 0 ready, 1 failed, 2 cancelled (3
and 130 for an error or Ctrl-C while watching).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import cast

import click

from ade.cli.common import (
    configuration_argument,
    connected,
    local_time,
    print_json,
    print_listing,
    resolve_configuration,
    resolve_workspace,
    status_text,
    watch,
    workspace_option,
)
from ade.cli.configs import configs
from ade.cli.runs import runs
from ade.client import AdeClient
from ade.core.models import Role

# Workspaces and keys --------------------------------------------------------------------------------


@click.group()
def workspaces() -> None:
    """Workspaces (the bootstrap token creates them)."""


@workspaces.command("create")
@click.argument("name")
@connected
def workspaces_create(ade: AdeClient, name: str) -> None:
    """Create a workspace and print it as JSON."""
    print_json(ade.create_workspace(name))


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@workspace_option()
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default="cli", show_default=True)
@click.option("--expires-at", default=None, help="RFC 3339 time after which the key stops working.")
@connected
def keys_create(
    ade: AdeClient, workspace_id: str | None, role: str, name: str, expires_at: str | None
) -> None:
    """Create an API key; its secret is printed once."""
    expires = None
    if expires_at:
        try:
            expires = datetime.fromisoformat(expires_at)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--expires-at") from exc
    workspace = resolve_workspace(ade, workspace_id)
    print_json(ade.create_api_key(workspace, name, cast(Role, role), expires_at=expires))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@connected
def whoami(ade: AdeClient, as_json: bool) -> None:
    """The key in use: its id, role and workspace (the bootstrap token has none: every workspace)."""
    me = ade.whoami()
    if as_json:
        print_json(me)
        return
    click.echo(f"{me.actor} {me.role} {me.workspace_id or '(every workspace)'}")


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
@configuration_argument
@workspace_option("Where to look CFG up by name or id prefix")
@click.option("--force", is_flag=True, help="Rebuild even if a ready build has the same fingerprint.")
@click.option("--watch", "watch_it", is_flag=True, help="Watch the build; exit with its outcome.")
@connected
def builds_create(
    ade: AdeClient, configuration_ref: str, workspace_id: str | None, force: bool, watch_it: bool
) -> None:
    """Build configuration CFG's environment (CFG: name, id or id prefix; or reuse / join the build with
    its fingerprint); print the build's id."""
    cfg = resolve_configuration(ade, configuration_ref, workspace_id)
    build = ade.create_build(cfg.workspace_id, cfg.id, force=force)
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
@configuration_argument
@workspace_option("Where to look CFG up by name or id prefix")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the builds as a JSON array.")
@connected
def builds_list(
    ade: AdeClient, configuration_ref: str, workspace_id: str | None, limit: int, as_json: bool
) -> None:
    """List configuration CFG's builds (name, id or id prefix), newest first. Times are local."""
    cfg = resolve_configuration(ade, configuration_ref, workspace_id)
    found = list(ade.list_builds(cfg.id, limit=limit))
    print_listing(
        found,
        as_json,
        ("BUILD", "STATUS", "FINGERPRINT", "REUSED FROM", "CREATED"),
        lambda build: [
            build.id,
            status_text(build.status),
            build.fingerprint[:12],
            build.reused_from or "",
            local_time(build.created_at),
        ],
    )


# Docker images --------------------------------------------------------------------------------------


@click.group()
def images() -> None:
    """Docker images steps may name by slug (`image:` in a step)."""


@images.command("add")
@click.argument("slug")
@click.argument("image_url")
@click.option("--public", is_flag=True, help="Visible to every workspace (the bootstrap token only).")
@workspace_option()
@connected
def images_add(ade: AdeClient, slug: str, image_url: str, public: bool, workspace_id: str | None) -> None:
    """Register IMAGE_URL (e.g. docker.io/library/alpine:3) as SLUG; print the image's id."""
    image = ade.create_docker_image(resolve_workspace(ade, workspace_id), slug, image_url, public=public)
    click.echo(image.id)


@images.command("list")
@workspace_option()
@click.option("--json", "as_json", is_flag=True, help="Print the images as a JSON array.")
@connected
def images_list(ade: AdeClient, workspace_id: str | None, as_json: bool) -> None:
    """List the images a workspace may name: its own and the public ones."""
    found = ade.list_docker_images(resolve_workspace(ade, workspace_id))
    print_listing(
        found,
        as_json,
        ("IMAGE", "SLUG", "IMAGE URL", "PUBLIC", "CREATED"),
        lambda image: [
            image.id,
            image.slug,
            image.image_url,
            "yes" if image.public else "",
            local_time(image.created_at),
        ],
    )


@images.command("delete")
@click.argument("image_id", metavar="ID")
@connected
def images_delete(ade: AdeClient, image_id: str) -> None:
    """Remove docker image ID (a public one takes the bootstrap token)."""
    ade.delete_docker_image(image_id)
    click.echo(f"{image_id} deleted")


COMMANDS = [workspaces, keys, configs, runs, builds, images]
