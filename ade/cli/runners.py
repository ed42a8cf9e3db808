"""`ade runners …`: register, list and revoke runners (what a runner runs is `ade runner`)."""

from __future__ import annotations

import click
from rich.text import Text

from ade.cli.common import (
    connected,
    local_time,
    optional_workspace,
    print_json,
    print_listing,
    resolve_workspace,
    workspace_option,
)
from ade.client import AdeClient

_STATUS_STYLES = {"idle": "green", "busy": "cyan", "offline": "dim"}


def _labels(_: click.Context, __: click.Parameter, value: str) -> list[str]:
    labels = [label.strip() for label in value.split(",") if label.strip()]
    if not labels:
        raise click.BadParameter("name at least one label, e.g. --labels linux,x64")
    return labels


@click.group()
def runners() -> None:
    """Runners: machines that pull runs over HTTP with a token of their own (`ade runner`)."""


@runners.command("add")
@click.argument("name")
@click.option("--labels", required=True, callback=_labels, help="Comma-separated, e.g. linux,x64,gpu.")
@click.option(
    "--global",
    "serves_all",
    is_flag=True,
    help="Serve every workspace (the bootstrap token only); else the workspace's own runner.",
)
@workspace_option()
@connected
def runners_add(
    ade: AdeClient, name: str, labels: list[str], serves_all: bool, workspace_id: str | None
) -> None:
    """Register runner NAME; print it as JSON with its token (shown this once: keep it)."""
    if serves_all and workspace_id:
        raise click.UsageError("--global and --workspace exclude each other")
    target = None if serves_all else resolve_workspace(ade, workspace_id)
    created = ade.register_runner(target, name, labels)
    print_json(created)
    click.echo(f"start it with: ade runner --url URL --token {created.token}", err=True)


@runners.command("list")
@workspace_option()
@click.option("--json", "as_json", is_flag=True, help="Print the runners as a JSON array.")
@connected
def runners_list(ade: AdeClient, workspace_id: str | None, as_json: bool) -> None:
    """List the runners of a workspace (its own and the global ones); with the bootstrap token and no
    --workspace, every runner."""
    found = ade.list_runners(optional_workspace(ade, workspace_id))  # None: bootstrap, every runner
    print_listing(
        found,
        as_json,
        ("RUNNER", "NAME", "WORKSPACE", "LABELS", "STATUS", "LAST HEARTBEAT", "RUNS"),
        lambda runner: [
            runner.id,
            runner.name,
            runner.workspace_id or "(global)",
            ",".join(runner.labels),
            Text(runner.status, style=_STATUS_STYLES.get(runner.status, "")),
            local_time(runner.last_heartbeat_at) if runner.last_heartbeat_at else "never",
            ",".join(runner.current_runs),
        ],
    )


@runners.command("delete")
@click.argument("runner_id", metavar="ID")
@connected
def runners_delete(ade: AdeClient, runner_id: str) -> None:
    """Revoke runner ID: its token stops working at once (a global one takes the bootstrap token)."""
    ade.delete_runner(runner_id)
    click.echo(f"{runner_id} revoked")
