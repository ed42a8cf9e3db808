"""`AdeClient`: the synchronous client."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import httpx
from httpx_sse import EventSource, SSEError

from ade.client import calls
from ade.client.calls import (
    CHUNK_BYTES,
    ArchiveFormat,
    Artifact,
    Call,
    ConsoleStream,
    EventsPage,
    FileSource,
    WhoAmI,
)
from ade.client.errors import GoneError, api_error
from ade.client.paging import ConsolePages, Pager, list_builds_pages, list_runs_pages
from ade.client.streams import RECONNECT, Lines, Resume, Retry, console_lines, console_records, sse_error
from ade.core.models import (
    TERMINAL_BUILD_STATUSES,
    TERMINAL_RUN_STATUSES,
    ApiKeyCreated,
    ApiKeyResource,
    BuildResource,
    Commit,
    Configuration,
    ConfigurationCreate,
    DockerImage,
    InputArtifact,
    Plan,
    Role,
    RunnerCreated,
    RunnerView,
    RunOptions,
    RunResource,
    RunStatus,
    Workspace,
)
from ade.core.views import BuildInspection, InputFile, OutputFile, RunDiagnostics
from ade.events.envelope import Event
from ade.records.summary import ConsoleLine, RunSummary

T = TypeVar("T")
P = TypeVar("P")


class AdeClient:
    """A synchronous client. `base_url` defaults to `ADE_URL` (else http://127.0.0.1:8000), `token` to
    `ADE_TOKEN`. Use it as a context manager, or call `close()`.

    `stream_read_timeout_s` bounds the silence on an event stream (the server sends a keepalive every
    ADE_SSE_KEEPALIVE_S, 15 s by default) before it is treated as lost; `reconnect_timeout_s` is how long
    a lost stream keeps trying to reconnect before `AdeStreamError`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url, headers, timeout, self._stream_timeout = calls.settings(
            base_url, token, timeout_s, stream_read_timeout_s
        )
        self.base_url = url
        self.reconnect_timeout_s = reconnect_timeout_s
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: Call[T], content: Iterable[bytes] | None = None) -> T:
        response = self._http.request(
            call.method,
            call.path,
            params=call.params,
            content=call.body if content is None else content,
            headers=call.headers,
        )
        if not response.is_success:
            raise api_error(response)
        return call.decode(response)

    def _paged(self, pages: Pager[P, T]) -> Iterator[T]:
        while (call := pages.next_call()) is not None:
            yield from pages.take(self._send(call))

    # Workspaces and API keys

    def create_workspace(self, name: str) -> Workspace:
        """Create a workspace (the bootstrap token only)."""
        return self._send(calls.create_workspace(name))

    def get_workspace(self, workspace_id: str) -> Workspace:
        return self._send(calls.get_workspace(workspace_id))

    def whoami(self) -> WhoAmI:
        """The key this client holds: its id, role and workspace (None for the bootstrap token)."""
        return self._send(calls.whoami())

    def create_api_key(
        self, workspace_id: str, name: str, role: Role, *, expires_at: datetime | None = None
    ) -> ApiKeyCreated:
        """Create an API key; its `secret` is in this answer only."""
        return self._send(calls.create_api_key(workspace_id, name, role, expires_at))

    def list_api_keys(self, workspace_id: str) -> list[ApiKeyResource]:
        return self._send(calls.list_api_keys(workspace_id))

    def revoke_api_key(self, key_id: str) -> None:
        self._send(calls.revoke_api_key(key_id))

    # Configurations

    def create_configuration(
        self, workspace_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        """Create a configuration; a mapping is validated locally first (`msgspec.ValidationError`)."""
        return self._send(calls.create_configuration(workspace_id, config))

    def list_configurations(self, workspace_id: str) -> list[Configuration]:
        return self._send(calls.list_configurations(workspace_id))

    def get_configuration(self, configuration_id: str) -> Configuration:
        return self._send(calls.get_configuration(configuration_id))

    def replace_configuration(
        self, configuration_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        """Replace a configuration (`PUT`): a secret sent as `{"secret": true}` keeps its stored value."""
        return self._send(calls.replace_configuration(configuration_id, config))

    def delete_configuration(self, configuration_id: str) -> None:
        self._send(calls.delete_configuration(configuration_id))

    # Docker images

    def create_docker_image(
        self, workspace_id: str, slug: str, image_url: str, *, public: bool = False
    ) -> DockerImage:
        """Register a docker image steps may name by `slug`; `public=True` (every workspace sees it) takes
        the bootstrap token. `ConflictError` (`slug_taken`) if the workspace already sees that slug."""
        return self._send(calls.create_docker_image(workspace_id, slug, image_url, public))

    def list_docker_images(self, workspace_id: str, *, public: bool | None = None) -> list[DockerImage]:
        """The images a workspace may name: its own and the public ones (`public` filters), by slug."""
        return self._send(calls.list_docker_images(workspace_id, public))

    def get_docker_image(self, image_id: str) -> DockerImage:
        return self._send(calls.get_docker_image(image_id))

    def delete_docker_image(self, image_id: str) -> None:
        """Remove a docker image (a public one takes the bootstrap token)."""
        self._send(calls.delete_docker_image(image_id))

    # Runners

    def register_runner(self, workspace_id: str | None, name: str, labels: Sequence[str]) -> RunnerCreated:
        """Register a runner for a workspace, or a global one (`workspace_id=None`: the bootstrap token);
        its `token` is in this answer only."""
        return self._send(calls.register_runner(workspace_id, name, labels))

    def list_runners(self, workspace_id: str | None = None) -> list[RunnerView]:
        """A workspace's runners and the global ones; without a workspace, every runner (bootstrap)."""
        return self._send(calls.list_runners(workspace_id))

    def get_runner(self, runner_id: str) -> RunnerView:
        return self._send(calls.get_runner(runner_id))

    def delete_runner(self, runner_id: str) -> None:
        """Revoke a runner: its token stops working at once (a global one takes the bootstrap token)."""
        self._send(calls.delete_runner(runner_id))

    # Artifacts

    def upload_artifact(
        self,
        workspace_id: str,
        source: FileSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Artifact:
        """Upload `bytes`, or the file at a path (streamed; `filename` defaults to its base name)."""
        if isinstance(source, bytes):
            return self._send(calls.upload_artifact(workspace_id, filename, content_type), [source])
        path = Path(source)
        call = calls.upload_file(workspace_id, path, filename, content_type, path.stat().st_size)
        return self._send(call, _iter_file(path))

    def download_artifact(self, key: str, *, workspace_id: str | None = None) -> bytes:
        """An artifact's bytes (`workspace_id` is needed with the bootstrap token only)."""
        return self._send(calls.download_artifact(key, workspace_id))

    # Runs

    def create_run(
        self,
        configuration_id: str,
        *,
        options: RunOptions | None = None,
        input_artifacts: Sequence[InputArtifact] | None = None,
        commit: Commit | None = None,
    ) -> RunResource:
        """Create (queue) a run. `input_artifacts` are added to `options.input_artifacts`."""
        return self._send(calls.create_run(configuration_id, options, input_artifacts, commit))

    def get_run(self, run_id: str) -> RunResource:
        """A run, by id or by a unique prefix of its id."""
        return self._send(calls.get_run(run_id))

    def cancel_run(self, run_id: str) -> RunResource:
        """Cancel: a queued run ends `cancelled` at once; a running one once its step is stopped."""
        return self._send(calls.cancel_run(run_id))

    def rerun(self, run_id: str, *, failed_only: bool = False) -> RunResource:
        """A new attempt with the same plan and inputs. `failed_only` (a failed run only, else
        `ConflictError` run_not_failed): keep the steps that succeeded and their outputs, run the rest."""
        return self._send(calls.rerun(run_id, failed_only))

    def list_runs(
        self,
        *,
        workspace_id: str | None = None,
        configuration_id: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        branch: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[RunResource]:
        """Runs, newest first, fetched a page at a time (following `next_cursor`), at most `limit`."""
        return self._paged(list_runs_pages(workspace_id, configuration_id, status, branch, limit, page_size))

    def wait_for_run(self, run_id: str) -> RunResource:
        """Wait for a run (id or unique prefix) to end, following its events from where it stands now."""
        run = self.get_run(run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            return run
        after = self.get_run_diagnostics(run.id).last_sequence
        for _ in self.events(run.id, after_sequence=after):
            pass
        return self.get_run(run.id)

    def get_run_summary(self, run_id: str) -> RunSummary:
        return self._send(calls.get_run_summary(run_id))

    def get_run_plan(self, run_id: str) -> Plan:
        return self._send(calls.get_run_plan(run_id))

    def list_run_inputs(self, run_id: str) -> list[InputFile]:
        return self._send(calls.list_run_inputs(run_id))

    def list_run_outputs(self, run_id: str, *, step: str | None = None) -> list[OutputFile]:
        """A run's outputs, each with the step that produced it (`step`: only that step's)."""
        return self._send(calls.list_run_outputs(run_id, step))

    def download_run_outputs(
        self,
        run_id: str,
        destination: str | os.PathLike[str] | BinaryIO,
        *,
        format: ArchiveFormat = "tar.gz",
        step: str | None = None,
    ) -> int:
        """All of a run's outputs (or one step's) as one archive, `tar.gz` or `zip`, streamed to a path (a
        partly written file is removed) or to an open binary file. Returns the bytes written."""
        path, params = calls.outputs_archive_request(run_id, format, step)
        with self._http.stream("GET", path, params=params, timeout=self._stream_timeout) as response:
            if not response.is_success:
                response.read()
                raise api_error(response)
            if not isinstance(destination, str | os.PathLike):
                return _write_all(response.iter_bytes(), destination)
            target = Path(destination)
            try:
                with target.open("wb") as handle:
                    return _write_all(response.iter_bytes(), handle)
            except BaseException:
                target.unlink(missing_ok=True)
                raise

    def download_run_output(self, run_id: str, path: str) -> bytes:
        """An output file's bytes; `path` as listed (relative to the output directory)."""
        return self._send(calls.download_run_output(run_id, path))

    def get_run_diagnostics(self, run_id: str) -> RunDiagnostics:
        return self._send(calls.get_run_diagnostics(run_id))

    # Events and logs

    def events_page(self, run_id: str, *, after_sequence: int = 0, limit: int = 1000) -> EventsPage:
        """One JSON page of a run's events (no waiting for new ones)."""
        return self._send(calls.events_page(run_id, after_sequence, limit))

    def events(self, run_id: str, *, after_sequence: int = 0) -> Iterator[Event]:
        """A run's events after `after_sequence`, live, each exactly once and in order, until it ends.

        Reconnects (with `Last-Event-ID`) on network errors, server restarts and 5xx answers.
        """
        return self._follow(calls.run_events_path(run_id), after_sequence)

    def logs(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> Iterator[str]:
        """A run's console lines (both streams, or `stream` only), without their line ends.

        `follow=False`: the lines logged so far (JSON pages of `GET /runs/{id}/logs`). `follow=True`: all of
        them and then new ones until the run ends, read from `events()` (filtering `console.line`), so a
        follow survives reconnects exactly like `events()` does.
        """
        for line in self.console(run_id, follow=follow, stream=stream):
            yield line.message

    def console(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> Iterator[ConsoleLine]:
        """Like `logs`, each line with its sequence, time (`created_at`), stream and step."""
        if follow:
            yield from console_records(self.events(run_id), stream)
            return
        yield from self._paged(ConsolePages(run_id, stream))

    def _follow(self, path: str, after_sequence: int) -> Iterator[Event]:
        resume = Resume(after_sequence, self.reconnect_timeout_s)
        while True:
            params, headers = resume.request()
            try:
                with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=self._stream_timeout
                ) as response:
                    if not response.is_success:
                        response.read()
                    resume.connected(response)
                    for sse in EventSource(response).iter_sse():
                        if (event := resume.accept(sse)) is not None:
                            yield event
                        elif resume.ended:
                            return
                raise Retry("the stream closed before its end")
            except SSEError as exc:
                raise sse_error(exc) from exc
            except RECONNECT as exc:
                delay = resume.failed(exc)
            time.sleep(delay)

    # Builds

    def create_build(
        self, workspace_id: str, configuration_id: str, *, force: bool = False, wait: bool = False
    ) -> BuildResource:
        """Build a configuration's environment: a ready build with the same fingerprint is reused (a new
        record with `reused_from`), one being prepared is joined, else one starts; `force` rebuilds.

        `wait=True` returns once the build has ended, followed on its event stream (reconnecting like
        `build_events`) rather than by holding the request open.
        """
        build = self._send(calls.create_build(workspace_id, configuration_id, force))
        return self.wait_for_build(build.id) if wait else build

    def list_builds(
        self, configuration_id: str, *, limit: int | None = None, page_size: int = 100
    ) -> Iterator[BuildResource]:
        """A configuration's builds, newest first, a page at a time (`before` = the last one's id), at most
        `limit`."""
        return self._paged(list_builds_pages(configuration_id, limit, page_size))

    def get_build(self, build_id: str) -> BuildResource:
        """A build, by id or by a unique prefix of its id."""
        return self._send(calls.get_build(build_id))

    def inspect_build(self, build_id: str) -> BuildInspection:
        """Constructor, owner, fingerprint, flags, reused from, interpreter, spec (without secrets)."""
        return self._send(calls.inspect_build(build_id))

    def cancel_build(self, build_id: str) -> BuildResource:
        """Cancel a queued (at once) or building build; `ConflictError` (`build_finished`) once it ended."""
        return self._send(calls.cancel_build(build_id))

    def wait_for_build(self, build_id: str) -> BuildResource:
        """Wait for a build (id or unique prefix) to end (`ready`, `failed`, `cancelled`)."""
        build = self.get_build(build_id)
        if build.status not in TERMINAL_BUILD_STATUSES:
            for _ in self.build_events(build.id):
                pass
            build = self.get_build(build.id)
        return build

    def build_events(self, build_id: str, *, after_sequence: int = 0) -> Iterator[Event]:
        """A build's events after `after_sequence`, exactly like `events()` for a run: live, each once and in
        order, resumed with `Last-Event-ID` across reconnects, until `build.completed`. `GoneError`
        (`build_expired`) once retention removed the build's logs."""
        return self._follow(calls.build_path(build_id, "/events"), after_sequence)

    def build_logs(self, build_id: str, *, follow: bool = False) -> Iterator[str]:
        """A build's console lines, without their line ends; nothing once the build expired.

        `follow=False`: the lines logged so far (`GET /builds/{id}/logs`, text). `follow=True`: all of them
        and then new ones until the build ends, read from `build_events()` like `logs(follow=True)` for a
        run: the text stream has no sequence to resume from, and sends nothing while a phase is silent.
        """
        if follow:
            with contextlib.suppress(GoneError):  # expired: no lines, like the text endpoint's 204
                yield from console_lines(self.build_events(build_id))
            return
        path, headers = calls.build_logs_request(build_id)
        with self._http.stream("GET", path, headers=headers) as response:
            if not response.is_success:
                response.read()
                raise api_error(response)
            lines = Lines()
            for text in response.iter_text():
                yield from lines.feed(text)
            yield from lines.end()


def _iter_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


def _write_all(chunks: Iterator[bytes], handle: BinaryIO) -> int:
    written = 0
    for chunk in chunks:
        handle.write(chunk)
        written += len(chunk)
    return written
