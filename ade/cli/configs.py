"""`ade configs …`: apply a YAML or TOML file, list, show, delete.

A configuration is named by its name, its id or a unique prefix of its id (`ade.cli.common.
resolve_configuration`); `show` prints it in the shape `apply` takes back.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from ade.cli.common import (
    configuration_argument,
    connected,
    local_time,
    print_json,
    print_listing,
    resolve_configuration,
    resolve_workspace,
    workspace_option,
)
from ade.client import AdeClient
from ade.core.models import Configuration, ConfigurationCreate

_APPLIED_FIELDS = [field.name for field in msgspec.structs.fields(ConfigurationCreate)]


@click.group()
def configs() -> None:
    """Configurations: apply a file, list, show, delete."""


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
    ade: AdeClient, name: str, configuration_id: object, workspace_id: str | None, in_file: str | None
) -> tuple[str | None, str]:
    """The configuration `configs apply` replaces (the file's `id`, else the workspace's one of that name;
    None to create one) and its workspace."""
    if configuration_id is not None:
        current = ade.get_configuration(str(configuration_id))
        named = workspace_id or in_file
        if named and current.workspace_id != named:
            raise click.ClickException(f"{current.id} belongs to {current.workspace_id}, not {named}")
        return current.id, current.workspace_id
    workspace = resolve_workspace(ade, workspace_id, fallback=in_file)
    same_name = [cfg.id for cfg in ade.list_configurations(workspace) if cfg.name == name]
    if len(same_name) > 1:
        raise click.ClickException(
            f"several configurations are named {name!r} ({', '.join(same_name)}): set `id`"
        )
    return (same_name[0] if same_name else None), workspace


@configs.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@workspace_option("Workspace id (overrides the file's `workspace`)")
@connected
def configs_apply(ade: AdeClient, file: Path, workspace_id: str | None) -> None:
    """Create or replace the configuration in FILE (YAML or TOML); print its id.

    FILE holds `name`, `steps`, and optionally `environment`, `timeout_s`, `workspace` (the workspace id)
    and `id`. With `id` that configuration is replaced; else the workspace's configuration of that name
    is replaced if there is one, or a new one is created. The workspace: --workspace, else the file's,
    else ADE_WORKSPACE, else the key's own.
    """
    document = load_document(file)
    configuration_id = document.pop("id", None)
    in_file = document.pop("workspace", None)
    try:
        body = msgspec.convert(document, ConfigurationCreate)
    except msgspec.ValidationError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    file_workspace = str(in_file) if in_file is not None else None
    target, workspace = _apply_target(ade, body.name, configuration_id, workspace_id, file_workspace)
    if target is None:
        cfg = ade.create_configuration(workspace, body)
        click.echo(f"created configuration {cfg.name!r}", err=True)
    else:
        cfg = ade.replace_configuration(target, body)
        click.echo(f"replaced configuration {cfg.name!r}", err=True)
    click.echo(cfg.id)


@configs.command("list")
@workspace_option()
@click.option("--json", "as_json", is_flag=True, help="Print the configurations as a JSON array.")
@connected
def configs_list(ade: AdeClient, workspace_id: str | None, as_json: bool) -> None:
    """List a workspace's configurations, by name. Times are local."""
    found = sorted(ade.list_configurations(resolve_workspace(ade, workspace_id)), key=lambda c: c.name)
    print_listing(
        found,
        as_json,
        ("CONFIGURATION", "NAME", "STEPS", "BUILD", "UPDATED"),
        lambda cfg: [
            cfg.id,
            cfg.name,
            str(len(cfg.steps)),
            cfg.build.constructor if cfg.build else "",
            local_time(cfg.updated_at),
        ],
    )


def as_document(cfg: Configuration) -> dict[str, Any]:
    """A configuration as `configs apply` takes it: `id`, `workspace`, then what a client sets, defaults
    left out (secrets as `{secret: true}`, which a replace keeps)."""
    fields = msgspec.to_builtins(cfg)
    applied = msgspec.convert({name: fields[name] for name in _APPLIED_FIELDS}, ConfigurationCreate)
    set_fields = _without_defaults(applied)
    assert isinstance(set_fields, dict)
    return {"id": cfg.id, "workspace": cfg.workspace_id, **set_fields}


def _without_defaults(value: object) -> object:
    """A struct as builtins without the fields that hold their default (recursively)."""
    if isinstance(value, msgspec.Struct):
        kept = {}
        for field in msgspec.structs.fields(value):
            current = getattr(value, field.name)
            if field.default is not msgspec.NODEFAULT and current == field.default:
                continue
            if field.default_factory is not msgspec.NODEFAULT and current == field.default_factory():
                continue
            kept[field.encode_name] = _without_defaults(current)
        return kept
    if isinstance(value, list):
        return [_without_defaults(item) for item in value]
    if isinstance(value, dict):
        return {key: _without_defaults(item) for key, item in value.items()}
    return msgspec.to_builtins(value)


@configs.command("show")
@configuration_argument
@workspace_option("Where to look CFG up by name or id prefix")
@click.option("--json", "as_json", is_flag=True, help="Print the API's resource as JSON instead.")
@connected
def configs_show(ade: AdeClient, configuration_ref: str, workspace_id: str | None, as_json: bool) -> None:
    """Print configuration CFG (name, id or id prefix) as YAML that `configs apply` takes back."""
    cfg = resolve_configuration(ade, configuration_ref, workspace_id)
    if as_json:
        print_json(cfg)
        return
    click.echo(f"# created {local_time(cfg.created_at)}, updated {local_time(cfg.updated_at)}")
    click.echo(yaml.safe_dump(as_document(cfg), sort_keys=False, allow_unicode=True), nl=False)


@configs.command("delete")
@configuration_argument
@workspace_option("Where to look CFG up by name or id prefix")
@connected
def configs_delete(ade: AdeClient, configuration_ref: str, workspace_id: str | None) -> None:
    """Delete configuration CFG (name, id or id prefix); its runs stay."""
    cfg = resolve_configuration(ade, configuration_ref, workspace_id)
    ade.delete_configuration(cfg.id)
    click.echo(f"{cfg.id} deleted ({cfg.name})")
