"""What the client commands of `ade` share: the connection (`--url`, `--token`), the workspace
(`--workspace`, `ADE_WORKSPACE`, else the key's own), configurations by name or id prefix, output helpers.

Exit codes: 0 done; 1 a configuration file that does not parse or validate; 2 a usage error (click), an
unknown or ambiguous configuration among them; 3 the API refused the request or could not be reached (the
message goes to stderr).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import click
import httpx
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ade.cli.watch import EXIT_ERROR, Kind, StreamView
from ade.client import API_PREFIX, DEFAULT_URL, AdeApiError, AdeClient, AdeStreamError, NotFoundError
from ade.core.models import Configuration
from ade.events.envelope import Event

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

WORKSPACE_ENV = "ADE_WORKSPACE"
CONFIGURATION_ID_HEAD = "cfg_"
CONFIGURATION_ID_LENGTH = len(CONFIGURATION_ID_HEAD) + 26  # `cfg_` and a ULID

STATUS_STYLES = {
    "succeeded": "green",
    "ready": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "building": "cyan",
    "expired": "dim",
}


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


# The workspace ---------------------------------------------------------------------------------------


def workspace_option(help_text: str = "Workspace id") -> Callable[[F], F]:
    """`--workspace WS`; without it, `resolve_workspace` falls back to ADE_WORKSPACE, then the key's own."""
    return click.option(
        "--workspace",
        "workspace_id",
        default=None,
        metavar="WS",
        help=f"{help_text} (default: ADE_WORKSPACE, else the key's own workspace).",
    )


def workspace_from_environment() -> str | None:
    return os.environ.get(WORKSPACE_ENV) or None


def resolve_workspace(ade: AdeClient, given: str | None, *, fallback: str | None = None) -> str:
    """The workspace a command acts in: `--workspace`, else `fallback` (e.g. a file's `workspace`), else
    ADE_WORKSPACE, else the key's own (`whoami`); the bootstrap token belongs to none, so then it is a
    usage error."""
    chosen = given or fallback or workspace_from_environment()
    if chosen:
        return chosen
    own = ade.whoami().workspace_id
    if own is None:
        raise click.UsageError(
            "the bootstrap token belongs to no workspace: pass --workspace or set ADE_WORKSPACE"
        )
    return own


def optional_workspace(ade: AdeClient, given: str | None) -> str | None:
    """Like `resolve_workspace`, but None (every workspace) for the bootstrap token with none named."""
    return given or workspace_from_environment() or ade.whoami().workspace_id


# Configurations by name or id prefix ----------------------------------------------------------------


def configuration_argument(command: F) -> F:
    """`CFG`: a configuration's name, its id, or a unique prefix of its id (`cfg_01J…`)."""
    return click.argument("configuration_ref", metavar="CFG")(command)


def resolve_configuration(ade: AdeClient, ref: str, workspace_id: str | None) -> Configuration:
    """The configuration `ref` names: an exact id (in any workspace the key sees), else, in the workspace
    (`resolve_workspace`), the one of that name, else the one whose id starts with `ref`. Unknown or
    ambiguous: a usage error (exit 2) that says which."""
    looks_like_id = ref.lower().startswith(CONFIGURATION_ID_HEAD)
    if looks_like_id and len(ref) == CONFIGURATION_ID_LENGTH:
        try:
            return ade.get_configuration(ref)
        except NotFoundError:
            pass  # perhaps a name that looks like an id: look among the workspace's
    try:
        workspace = resolve_workspace(ade, workspace_id)
    except click.UsageError:
        raise click.UsageError(
            f"cannot look up configuration {ref!r} by name or id prefix without a workspace: "
            "pass --workspace or set ADE_WORKSPACE (or give its full id)"
        ) from None
    candidates = ade.list_configurations(workspace)
    named = [cfg for cfg in candidates if cfg.name == ref]
    if not named and looks_like_id:
        wanted = CONFIGURATION_ID_HEAD + ref[len(CONFIGURATION_ID_HEAD) :].upper()
        named = [cfg for cfg in candidates if cfg.id.startswith(wanted)]
    if len(named) == 1:
        return named[0]
    if not named:
        raise click.BadParameter(
            f"no configuration named {ref!r} or whose id starts with it in workspace {workspace}",
            param_hint="CFG",
        )
    listed = ", ".join(f"{cfg.id} ({cfg.name})" for cfg in named)
    raise click.BadParameter(f"{ref!r} is ambiguous in workspace {workspace}: {listed}", param_hint="CFG")


# Output ---------------------------------------------------------------------------------------------


def print_json(value: object) -> None:
    click.echo(json.dumps(msgspec.to_builtins(value), indent=2))


def print_listing(
    found: Sequence[T], as_json: bool, headers: Sequence[str], cells: Callable[[T], Sequence[str | Text]]
) -> None:
    """A list command's answer: the items as a JSON array, or a table of `cells` of each (text as is)."""
    if as_json:
        print_json(found)
        return
    table = Table(*headers, box=None)
    for item in found:
        table.add_row(*row(*cells(item)))
    console().print(table)


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def row(*cells: str | Text) -> list[Text]:
    """A table row whose text is shown as is (a name holding `[bold]` is not rich markup)."""
    return [cell if isinstance(cell, Text) else Text(cell) for cell in cells]


def local_time(moment: datetime) -> str:
    """`2026-03-01 14:05:09 CET`: the local time with its zone."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def web_url(ade: AdeClient, run_id: str) -> str:
    """The run's page in the web console (served at the API's root)."""
    return f"{ade.base_url.removesuffix(API_PREFIX)}/#/runs/{run_id}"


def watch(
    kind: Kind,
    events: Iterator[Event],
    steps: Sequence[str] = (),
    *,
    timestamps: bool = False,
) -> int:
    """Render a run's or a build's events from the start until it ends; the exit code for its outcome."""
    with StreamView(console(), kind, steps, timestamps=timestamps) as view:
        try:
            for event in events:
                view.handle(event)
        except KeyboardInterrupt:
            return 130
    return view.exit_code
