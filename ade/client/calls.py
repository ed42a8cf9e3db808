"""The requests of the API, shared by both clients: each endpoint as a `Call` (method, path, parameters,
body, headers, and how to decode its 2xx answer), plus the settings and the response shapes that live in
server modules. No I/O here: `AdeClient` and `AsyncAdeClient` only send these."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from ade.core.models import (
    ApiKeyCreated,
    ApiKeyResource,
    BuildCreate,
    BuildOptions,
    BuildResource,
    Commit,
    Configuration,
    ConfigurationCreate,
    DockerImage,
    DockerImageCreate,
    InputArtifact,
    Plan,
    Role,
    RunCreate,
    RunnerCreate,
    RunnerCreated,
    RunnerView,
    RunOptions,
    RunRerun,
    RunResource,
    Workspace,
    WorkspaceCreate,
)
from ade.core.views import BuildInspection, InputFile, OutputFile, OutputListing, RunDiagnostics
from ade.events.envelope import Event
from ade.records.summary import ConsolePage, RunSummary

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
ConsoleStream = Literal["stdout", "stderr"]
ArchiveFormat = Literal["tar.gz", "zip"]  # how `download_run_outputs` packs a run's outputs
FileSource = bytes | str | os.PathLike[str]
CHUNK_BYTES = 64 * 1024  # the pieces a file is uploaded in

T = TypeVar("T")
Params = list[tuple[str, str | int | float | bool | None]]


def settings(
    base_url: str | None, token: str | None, timeout_s: float, stream_read_timeout_s: float
) -> tuple[str, dict[str, str], httpx.Timeout, httpx.Timeout]:
    """A client's base URL, headers, request timeout and event stream timeout."""
    url = (base_url or os.environ.get("ADE_URL") or DEFAULT_URL).rstrip("/")
    if not url.endswith(API_PREFIX):
        url += API_PREFIX
    token = token if token is not None else os.environ.get("ADE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stream_timeout = httpx.Timeout(timeout_s, read=stream_read_timeout_s)
    return url, headers, httpx.Timeout(timeout_s), stream_timeout


# Response shapes defined in server modules (mirrored: importing those would import the server) --------


class Artifact(msgspec.Struct, kw_only=True):
    """An uploaded artifact (`ade.artifacts.Artifact`)."""

    key: str  # "sha256:<hex>"
    workspace_id: str
    size: int
    content_type: str
    filename: str | None
    created_at: datetime


class WhoAmI(msgspec.Struct, kw_only=True):
    """The caller (`ade.api.keys.WhoAmI`)."""

    actor: str  # the API key id, or "bootstrap"
    role: str
    workspace_id: str | None  # None: the bootstrap token (every workspace)


class EventsPage(msgspec.Struct, kw_only=True):
    """A JSON page of events (`ade.api.streams.EventsPage`)."""

    items: list[Event]
    next_after_sequence: int


# Calls ---------------------------------------------------------------------------------------------

_JSON = {"Content-Type": "application/json"}


def decoder(kind: type[T]) -> Callable[[httpx.Response], T]:
    def decode(response: httpx.Response) -> T:
        return msgspec.json.decode(response.content, type=kind)

    return decode


def _no_content(_: httpx.Response) -> None:
    return None


def _content(response: httpx.Response) -> bytes:
    return response.content


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to decode its 2xx answer."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: Params = field(default_factory=list)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def json_call(method: str, path: str, kind: type[T], body: object = None, **params: Any) -> Call[T]:
    """A call with an optional JSON body whose answer is JSON; `None` parameters are left out."""
    return Call(
        method,
        path,
        decoder(kind),
        params=[(k, v) for k, v in params.items() if v is not None],
        body=None if body is None else msgspec.json.encode(body),
        headers=_JSON if body is not None else {},
    )


def seg(value: str) -> str:
    """An id as one path segment (ids never contain `/`; this keeps a stray one from changing the route)."""
    return quote(value, safe="")


# Workspaces and API keys


def create_workspace(name: str) -> Call[Workspace]:
    return json_call("POST", "/workspaces", Workspace, WorkspaceCreate(name=name))


def get_workspace(workspace_id: str) -> Call[Workspace]:
    return json_call("GET", f"/workspaces/{seg(workspace_id)}", Workspace)


def whoami() -> Call[WhoAmI]:
    return json_call("GET", "/whoami", WhoAmI)


def create_api_key(
    workspace_id: str, name: str, role: Role, expires_at: datetime | None
) -> Call[ApiKeyCreated]:
    body = {"name": name, "role": role, **({"expires_at": expires_at} if expires_at else {})}
    return json_call("POST", f"/workspaces/{seg(workspace_id)}/api-keys", ApiKeyCreated, body)


def list_api_keys(workspace_id: str) -> Call[list[ApiKeyResource]]:
    return json_call("GET", f"/workspaces/{seg(workspace_id)}/api-keys", list[ApiKeyResource])


def revoke_api_key(key_id: str) -> Call[None]:
    return Call("DELETE", f"/api-keys/{seg(key_id)}", _no_content)


# Configurations


def _configuration_body(config: ConfigurationCreate | Mapping[str, Any]) -> ConfigurationCreate:
    """A configuration as the API takes it; a mapping is validated here, with the server's own rules."""
    if isinstance(config, ConfigurationCreate):
        return config
    return msgspec.convert(dict(config), ConfigurationCreate)


def create_configuration(
    workspace_id: str, config: ConfigurationCreate | Mapping[str, Any]
) -> Call[Configuration]:
    path = f"/workspaces/{seg(workspace_id)}/configurations"
    return json_call("POST", path, Configuration, _configuration_body(config))


def list_configurations(workspace_id: str) -> Call[list[Configuration]]:
    return json_call("GET", f"/workspaces/{seg(workspace_id)}/configurations", list[Configuration])


def get_configuration(configuration_id: str) -> Call[Configuration]:
    return json_call("GET", f"/configurations/{seg(configuration_id)}", Configuration)


def replace_configuration(
    configuration_id: str, config: ConfigurationCreate | Mapping[str, Any]
) -> Call[Configuration]:
    path = f"/configurations/{seg(configuration_id)}"
    return json_call("PUT", path, Configuration, _configuration_body(config))


def delete_configuration(configuration_id: str) -> Call[None]:
    return Call("DELETE", f"/configurations/{seg(configuration_id)}", _no_content)


# Docker images


def create_docker_image(workspace_id: str, slug: str, image_url: str, public: bool) -> Call[DockerImage]:
    body = DockerImageCreate(slug=slug, image_url=image_url, public=public)
    return json_call("POST", f"/workspaces/{seg(workspace_id)}/docker-images", DockerImage, body)


def list_docker_images(workspace_id: str, public: bool | None) -> Call[list[DockerImage]]:
    path = f"/workspaces/{seg(workspace_id)}/docker-images"
    return json_call("GET", path, list[DockerImage], public=None if public is None else str(public).lower())


def get_docker_image(image_id: str) -> Call[DockerImage]:
    return json_call("GET", f"/docker-images/{seg(image_id)}", DockerImage)


def delete_docker_image(image_id: str) -> Call[None]:
    return Call("DELETE", f"/docker-images/{seg(image_id)}", _no_content)


# Runners


def register_runner(workspace_id: str | None, name: str, labels: Sequence[str]) -> Call[RunnerCreated]:
    """A workspace's runner, or (`workspace_id=None`, the bootstrap token) a global one."""
    path = "/runners" if workspace_id is None else f"/workspaces/{seg(workspace_id)}/runners"
    return json_call("POST", path, RunnerCreated, RunnerCreate(name=name, labels=list(labels)))


def list_runners(workspace_id: str | None) -> Call[list[RunnerView]]:
    """A workspace's runners and the global ones, or (`None`, the bootstrap token) every runner."""
    path = "/runners" if workspace_id is None else f"/workspaces/{seg(workspace_id)}/runners"
    return json_call("GET", path, list[RunnerView])


def get_runner(runner_id: str) -> Call[RunnerView]:
    return json_call("GET", f"/runners/{seg(runner_id)}", RunnerView)


def delete_runner(runner_id: str) -> Call[None]:
    return Call("DELETE", f"/runners/{seg(runner_id)}", _no_content)


# Artifacts


def upload_artifact(
    workspace_id: str, filename: str | None, content_type: str | None, size: int | None = None
) -> Call[Artifact]:
    """An upload; the client sends the bytes as the body."""
    headers = {"Content-Type": content_type or "application/octet-stream"}
    if size is not None:
        headers["Content-Length"] = str(size)
    return Call(
        "POST",
        f"/workspaces/{seg(workspace_id)}/artifacts",
        decoder(Artifact),
        params=[("filename", filename)] if filename else [],
        headers=headers,
    )


def upload_file(
    workspace_id: str, path: Path, filename: str | None, content_type: str | None, size: int
) -> Call[Artifact]:
    """The upload of the file at `path` (`size` bytes): named after it, its type guessed from the name."""
    name = filename or path.name
    return upload_artifact(workspace_id, name, content_type or _guess_type(name), size)


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"


def download_artifact(key: str, workspace_id: str | None) -> Call[bytes]:
    params: Params = [("workspace_id", workspace_id)] if workspace_id else []
    return Call("GET", f"/artifacts/{seg(key)}", _content, params=params)


# Runs


def create_run(
    configuration_id: str,
    options: RunOptions | None,
    input_artifacts: Sequence[InputArtifact] | None,
    commit: Commit | None,
) -> Call[RunResource]:
    options = options or RunOptions()
    if input_artifacts:
        options = RunOptions(input_artifacts=[*options.input_artifacts, *input_artifacts])
    body = RunCreate(options=options, commit=commit)
    return json_call("POST", f"/configurations/{seg(configuration_id)}/runs", RunResource, body)


def _run_path(run_id: str, tail: str = "") -> str:
    return f"/runs/{seg(run_id)}{tail}"


def get_run(run_id: str) -> Call[RunResource]:
    return json_call("GET", _run_path(run_id), RunResource)


def cancel_run(run_id: str) -> Call[RunResource]:
    return json_call("POST", _run_path(run_id, "/cancel"), RunResource)


def rerun(run_id: str, failed_only: bool = False) -> Call[RunResource]:
    body = RunRerun(failed_only=True) if failed_only else None
    return json_call("POST", _run_path(run_id, "/rerun"), RunResource, body)


def get_run_summary(run_id: str) -> Call[RunSummary]:
    return json_call("GET", _run_path(run_id, "/summary"), RunSummary)


def get_run_plan(run_id: str) -> Call[Plan]:
    return json_call("GET", _run_path(run_id, "/plan"), Plan)


def list_run_inputs(run_id: str) -> Call[list[InputFile]]:
    return json_call("GET", _run_path(run_id, "/inputs"), list[InputFile])


def list_run_outputs(run_id: str, step: str | None = None) -> Call[list[OutputFile]]:
    listing = decoder(OutputListing)
    params: Params = [("step", step)] if step is not None else []
    return Call("GET", _run_path(run_id, "/outputs"), lambda response: listing(response).items, params=params)


def outputs_archive_request(run_id: str, kind: ArchiveFormat, step: str | None) -> tuple[str, Params]:
    """The path and parameters of a run's outputs as one archive (read as a stream, not decoded)."""
    if kind not in ("tar.gz", "zip"):
        raise ValueError(f"an archive is 'tar.gz' or 'zip', not {kind!r}")
    return _run_path(run_id, f"/outputs.{kind}"), [("step", step)] if step is not None else []


def download_run_output(run_id: str, path: str) -> Call[bytes]:
    return Call("GET", _run_path(run_id, f"/outputs/{quote(path.lstrip('/'))}"), _content)


def get_run_diagnostics(run_id: str) -> Call[RunDiagnostics]:
    return json_call("GET", _run_path(run_id, "/diagnostics"), RunDiagnostics)


def run_events_path(run_id: str) -> str:
    return _run_path(run_id, "/events")


def events_page(run_id: str, after_sequence: int, limit: int) -> Call[EventsPage]:
    path = run_events_path(run_id)
    return json_call("GET", path, EventsPage, after_sequence=after_sequence, limit=limit)


def console_page(run_id: str, after: int, stream: ConsoleStream | None) -> Call[ConsolePage]:
    path = _run_path(run_id, "/logs")
    return json_call("GET", path, ConsolePage, after_sequence=after, limit=1000, stream=stream)


# Builds


def build_path(build_id: str, tail: str = "") -> str:
    return f"/builds/{seg(build_id)}{tail}"


def create_build(workspace_id: str, configuration_id: str, force: bool) -> Call[BuildResource]:
    path = f"/workspaces/{seg(workspace_id)}/configurations/{seg(configuration_id)}/builds"
    return json_call("POST", path, BuildResource, BuildCreate(options=BuildOptions(force=force)))


def get_build(build_id: str) -> Call[BuildResource]:
    return json_call("GET", build_path(build_id), BuildResource)


def inspect_build(build_id: str) -> Call[BuildInspection]:
    return json_call("GET", build_path(build_id, "/inspect"), BuildInspection)


def cancel_build(build_id: str) -> Call[BuildResource]:
    return json_call("POST", build_path(build_id, "/cancel"), BuildResource)


def build_logs_request(build_id: str) -> tuple[str, dict[str, str]]:
    """The path and headers of a build's text log (read as a stream, not decoded)."""
    return build_path(build_id, "/logs"), {"Accept": "text/plain"}
