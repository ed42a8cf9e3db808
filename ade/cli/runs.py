"""`ade runs …`: create, get, watch, logs, list, cancel, re-run.

A run is named by its id or a unique prefix of it (at least 8 characters after `run_`); a configuration by
its name, its id or a unique prefix of its id (`ade.cli.common.resolve_configuration`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import click
from rich.table import Table
from rich.text import Text

from ade.cli.common import (
    configuration_argument,
    connected,
    console,
    local_time,
    optional_workspace,
    print_json,
    print_listing,
    resolve_configuration,
    row,
    status_text,
    watch,
    web_url,
    workspace_option,
)
from ade.cli.watch import duration
from ade.client import AdeClient, NotFoundError
from ade.core.models import TERMINAL_RUN_STATUSES, InputArtifact, RunResource, RunStatus, StepState

RUN_STATUSES = ["queued", "waiting_for_build", "running", "succeeded", "failed", "cancelled"]
_STEP_MARKS = {"succeeded": "✓", "failed": "✗", "cancelled": "■", "skipped": "○", "running": "▶"}

_TIMESTAMPS_OPTION = click.option(
    "--timestamps", is_flag=True, help="Start each line with the local time of the event behind it."
)


@click.group()
def runs() -> None:
    """Runs: create, get, watch, logs, list, cancel, re-run.

    \b
    `watch`, and `create`/`rerun` with --follow, exit with the run's outcome:
      0 succeeded, 1 failed, 2 cancelled,
      3 the API refused or could not be reached (any command), 130 interrupted.
    """


def configuration_name(ade: AdeClient, configuration_id: str) -> str:
    """A configuration's name, or its id once it has been deleted."""
    try:
        return ade.get_configuration(configuration_id).name
    except NotFoundError:
        return configuration_id


def _ms_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() * 1000 if start is not None and end is not None else None


def header(ade: AdeClient, run: RunResource) -> str:
    """`run run_… · hello · attempt 1 · http://…/#/runs/run_…`, and how long it has been running when it
    started before we looked."""
    parts = [f"run {run.id}", configuration_name(ade, run.configuration_id), f"attempt {run.attempt}"]
    if run.started_at is not None and run.status not in TERMINAL_RUN_STATUSES:
        ago = _ms_between(run.started_at, datetime.now(UTC))
        parts.append(f"started {local_time(run.started_at)} ({duration(ago)} ago)")
    return " · ".join([*parts, web_url(ade, run.id)])


def watch_run(ade: AdeClient, run: RunResource, *, timestamps: bool = False) -> int:
    """The run's header, then its events (its build's too, while it waits for it) until it ends; its exit
    code."""
    console().print(Text(header(ade, run), style="bold"), soft_wrap=True)
    steps = [step.name for step in run.steps]
    return watch("run", ade.events(run.id), steps, timestamps=timestamps)


@runs.command("create")
@configuration_argument
@workspace_option("Where to look CFG up by name or id prefix")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file to upload and place in the run's inputs/ under its base name (repeatable).",
)
@click.option("--follow", is_flag=True, help="Watch the run; exit with its outcome (like `runs watch`).")
@_TIMESTAMPS_OPTION
@connected
def runs_create(
    ade: AdeClient,
    configuration_ref: str,
    workspace_id: str | None,
    inputs: tuple[Path, ...],
    follow: bool,
    timestamps: bool,
) -> None:
    """Create a run of configuration CFG (name, id or id prefix); print its id, or with --follow watch it
    (its id is in the first line)."""
    names = [path.name for path in inputs]
    if len(set(names)) != len(names):
        raise click.UsageError("two --input files have the same base name")
    cfg = resolve_configuration(ade, configuration_ref, workspace_id)
    artifacts = []
    for path in inputs:
        artifact = ade.upload_artifact(cfg.workspace_id, path)
        artifacts.append(InputArtifact(key=artifact.key, name=path.name))
    run = ade.create_run(cfg.id, input_artifacts=artifacts)
    if follow:
        sys.exit(watch_run(ade, run, timestamps=timestamps))
    click.echo(run.id)


@runs.command("get")
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON (the API's resource).")
@connected
def runs_get(ade: AdeClient, run_id: str, as_json: bool) -> None:
    """Show run RUN (id or unique prefix): status, times, failure, its steps and its web page."""
    run = ade.get_run(run_id)
    if as_json:
        print_json(run)
        return
    rows: list[tuple[str, str | Text]] = [
        ("status", status_text(run.status)),
        ("configuration", f"{configuration_name(ade, run.configuration_id)} ({run.configuration_id})"),
        ("attempt", f"{run.attempt}" + (f" (re-run of {run.rerun_of})" if run.rerun_of else "")),
        ("created", local_time(run.created_at)),
    ]
    if run.started_at:
        rows.append(("started", local_time(run.started_at)))
    if run.completed_at:
        rows.append(("completed", local_time(run.completed_at)))
    took = _ms_between(run.started_at, run.completed_at or datetime.now(UTC))
    if took is not None:
        rows.append(("duration", duration(took) + ("" if run.completed_at else " so far")))
    if run.failure:
        rows.append(("failure", f"{run.failure.message} ({run.failure.code})"))
    if run.cancel_requested_by:
        rows.append(("cancelled by", run.cancel_requested_by))
    if run.commit and run.commit.branch:
        rows.append(("branch", run.commit.branch))
    rows.append(("web", web_url(ade, run.id)))
    out = console()
    out.print(Text(run.id, style="bold"))
    fields = Table.grid(padding=(0, 2))
    for name, value in rows:
        fields.add_row(*row(f"  {name}", value))
    fields.add_row(*row("  steps", ""))
    for step in run.steps:
        fields.add_row(*row(f"    {_STEP_MARKS.get(step.status, '·')} {step.name}", _step_cell(step)))
    out.print(fields)


def _step_cell(step: StepState) -> Text:
    """A step's status (with its exit code, or why it was skipped) and duration."""
    what = status_text(step.status)
    if step.status == "failed" and step.exit_code is not None:
        what.append(f" (exit {step.exit_code})")
    if step.skipped_reason:
        what.append(f": {step.skipped_reason}")
    if step.reused_from:
        what.append(f" (kept from {step.reused_from})")
    took = _ms_between(step.started_at, step.completed_at)
    if took is not None:
        what.append(f" in {duration(took)}")
    return what


@runs.command("watch")
@click.argument("run_id", metavar="RUN")
@_TIMESTAMPS_OPTION
@connected
def runs_watch(ade: AdeClient, run_id: str, timestamps: bool) -> None:
    """Show run RUN (id or unique prefix) live, from its start, until it ends.

    Exit code: 0 succeeded, 1 failed, 2 cancelled (3 API error, 130 interrupted).
    """
    sys.exit(watch_run(ade, ade.get_run(run_id), timestamps=timestamps))


@runs.command("logs")
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines, live, until the run ends.")
@click.option(
    "--timestamps", is_flag=True, help="Start each line with the time it was logged (RFC 3339, UTC)."
)
@click.option(
    "--stream", "console_stream", type=click.Choice(["stdout", "stderr"]), default=None, help="Only this one."
)
@connected
def runs_logs(
    ade: AdeClient, run_id: str, follow: bool, timestamps: bool, console_stream: str | None
) -> None:
    """Print run RUN's console (stdout and stderr, interleaved as logged) as plain text lines.

    With --follow, the lines logged so far and then new ones as they come (over the run's event stream,
    resumed across reconnects) until the run ends.
    """
    run = ade.get_run(run_id)
    lines = ade.console(run.id, follow=follow, stream=cast(Any, console_stream))
    try:
        for line in lines:
            click.echo(f"{line.created_at} {line.message}" if timestamps else line.message)
    except KeyboardInterrupt:
        sys.exit(130)


@runs.command("list")
@workspace_option()
@click.option("--config", "configuration_ref", default=None, metavar="CFG", help="Configuration name or id.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(RUN_STATUSES), help="Repeatable.")
@click.option("--branch", default=None, help="Only runs of this commit branch.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON array.")
@connected
def runs_list(
    ade: AdeClient,
    workspace_id: str | None,
    configuration_ref: str | None,
    statuses: tuple[str, ...],
    branch: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first: a workspace's, or (--config) a configuration's. Times are local."""
    names: dict[str, str] = {}
    configuration_id = None
    if configuration_ref is not None:  # its runs are its workspace's
        cfg = resolve_configuration(ade, configuration_ref, workspace_id)
        configuration_id, names[cfg.id], workspace_id = cfg.id, cfg.name, None
    else:
        workspace_id = optional_workspace(ade, workspace_id)
        if workspace_id is None:
            raise click.UsageError(
                "pass --workspace or --config (or set ADE_WORKSPACE): the bootstrap token has no workspace"
            )
        names = {cfg.id: cfg.name for cfg in ade.list_configurations(workspace_id)}
    found = list(
        ade.list_runs(
            workspace_id=workspace_id,
            configuration_id=configuration_id,
            status=cast(list[RunStatus], list(statuses)),
            branch=branch,
            limit=limit,
        )
    )

    def cells(run: RunResource) -> list[str | Text]:
        took = _ms_between(run.started_at, run.completed_at)
        return [
            run.id,
            status_text(run.status),
            names.get(run.configuration_id, run.configuration_id),
            str(run.attempt),
            (run.commit.branch if run.commit else None) or "",
            local_time(run.created_at),
            duration(took) if took is not None else "",
        ]

    print_listing(
        found, as_json, ("RUN", "STATUS", "CONFIGURATION", "ATTEMPT", "BRANCH", "CREATED", "DURATION"), cells
    )


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
@_TIMESTAMPS_OPTION
@connected
def runs_rerun(ade: AdeClient, run_id: str, follow: bool, failed_only: bool, timestamps: bool) -> None:
    """Re-run RUN (same plan and inputs, next attempt); print the new run's id, or with --follow watch it
    (its id is in the first line)."""
    run = ade.rerun(run_id, failed_only=failed_only)
    if follow:
        sys.exit(watch_run(ade, run, timestamps=timestamps))
    click.echo(run.id)
