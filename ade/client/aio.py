"""`AsyncAdeClient`: the asynchronous twin of `AdeClient`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TypeVar

import anyio
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
from ade.client.streams import RECONNECT, Lines, Resume, Retry, aconsole_lines, aconsole_records, sse_error
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


class AsyncAdeClient:
    """The asynchronous twin of `AdeClient`: the same methods, awaitable; iterators are async iterators.

    Close an async iterator you leave early (`contextlib.aclosing`) to release its connection promptly.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        stream_read_timeout_s: float = 60.0,
        reconnect_timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers, timeout, self._stream_timeout = calls.settings(
            base_url, token, timeout_s, stream_read_timeout_s
        )
        self.base_url = url
        self.reconnect_timeout_s = reconnect_timeout_s
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T], content: AsyncIterator[bytes] | bytes | None = None) -> T:
        response = await self._http.request(
            call.method,
            call.path,
            params=call.params,
            content=call.body if content is None else content,
            headers=call.headers,
        )
        if not response.is_success:
            raise api_error(response)
        return call.decode(response)

    async def _paged(self, pages: Pager[P, T]) -> AsyncIterator[T]:
        while (call := pages.next_call()) is not None:
            for item in pages.take(await self._send(call)):
                yield item

    # Workspaces and API keys

    async def create_workspace(self, name: str) -> Workspace:
        return await self._send(calls.create_workspace(name))

    async def get_workspace(self, workspace_id: str) -> Workspace:
        return await self._send(calls.get_workspace(workspace_id))

    async def whoami(self) -> WhoAmI:
        return await self._send(calls.whoami())

    async def create_api_key(
        self, workspace_id: str, name: str, role: Role, *, expires_at: datetime | None = None
    ) -> ApiKeyCreated:
        return await self._send(calls.create_api_key(workspace_id, name, role, expires_at))

    async def list_api_keys(self, workspace_id: str) -> list[ApiKeyResource]:
        return await self._send(calls.list_api_keys(workspace_id))

    async def revoke_api_key(self, key_id: str) -> None:
        await self._send(calls.revoke_api_key(key_id))

    # Configurations

    async def create_configuration(
        self, workspace_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        return await self._send(calls.create_configuration(workspace_id, config))

    async def list_configurations(self, workspace_id: str) -> list[Configuration]:
        return await self._send(calls.list_configurations(workspace_id))

    async def get_configuration(self, configuration_id: str) -> Configuration:
        return await self._send(calls.get_configuration(configuration_id))

    async def replace_configuration(
        self, configuration_id: str, config: ConfigurationCreate | Mapping[str, Any]
    ) -> Configuration:
        return await self._send(calls.replace_configuration(configuration_id, config))

    async def delete_configuration(self, configuration_id: str) -> None:
        await self._send(calls.delete_configuration(configuration_id))

    # Docker images

    async def create_docker_image(
        self, workspace_id: str, slug: str, image_url: str, *, public: bool = False
    ) -> DockerImage:
        return await self._send(calls.create_docker_image(workspace_id, slug, image_url, public))

    async def list_docker_images(self, workspace_id: str, *, public: bool | None = None) -> list[DockerImage]:
        return await self._send(calls.list_docker_images(workspace_id, public))

    async def get_docker_image(self, image_id: str) -> DockerImage:
        return await self._send(calls.get_docker_image(image_id))

    async def delete_docker_image(self, image_id: str) -> None:
        await self._send(calls.delete_docker_image(image_id))

    # Runners

    async def register_runner(
        self, workspace_id: str | None, name: str, labels: Sequence[str]
    ) -> RunnerCreated:
        """Register a runner for a workspace, or a global one (`workspace_id=None`: the bootstrap token);
        its `token` is in this answer only."""
        return await self._send(calls.register_runner(workspace_id, name, labels))

    async def list_runners(self, workspace_id: str | None = None) -> list[RunnerView]:
        """A workspace's runners and the global ones; without a workspace, every runner (bootstrap)."""
        return await self._send(calls.list_runners(workspace_id))

    async def get_runner(self, runner_id: str) -> RunnerView:
        return await self._send(calls.get_runner(runner_id))

    async def delete_runner(self, runner_id: str) -> None:
        """Revoke a runner: its token stops working at once (a global one takes the bootstrap token)."""
        await self._send(calls.delete_runner(runner_id))

    # Artifacts

    async def upload_artifact(
        self,
        workspace_id: str,
        source: FileSource,
        *,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> Artifact:
        if isinstance(source, bytes):
            return await self._send(calls.upload_artifact(workspace_id, filename, content_type), source)
        path = Path(source)
        size = (await anyio.Path(path).stat()).st_size
        call = calls.upload_file(workspace_id, path, filename, content_type, size)
        return await self._send(call, _aiter_file(path))

    async def download_artifact(self, key: str, *, workspace_id: str | None = None) -> bytes:
        return await self._send(calls.download_artifact(key, workspace_id))

    # Runs

    async def create_run(
        self,
        configuration_id: str,
        *,
        options: RunOptions | None = None,
        input_artifacts: Sequence[InputArtifact] | None = None,
        commit: Commit | None = None,
    ) -> RunResource:
        return await self._send(calls.create_run(configuration_id, options, input_artifacts, commit))

    async def get_run(self, run_id: str) -> RunResource:
        return await self._send(calls.get_run(run_id))

    async def cancel_run(self, run_id: str) -> RunResource:
        return await self._send(calls.cancel_run(run_id))

    async def rerun(self, run_id: str, *, failed_only: bool = False) -> RunResource:
        return await self._send(calls.rerun(run_id, failed_only))

    def list_runs(
        self,
        *,
        workspace_id: str | None = None,
        configuration_id: str | None = None,
        status: RunStatus | Sequence[RunStatus] | None = None,
        branch: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[RunResource]:
        return self._paged(list_runs_pages(workspace_id, configuration_id, status, branch, limit, page_size))

    async def wait_for_run(self, run_id: str) -> RunResource:
        run = await self.get_run(run_id)
        if run.status in TERMINAL_RUN_STATUSES:
            return run
        after = (await self.get_run_diagnostics(run.id)).last_sequence
        async for _ in self.events(run.id, after_sequence=after):
            pass
        return await self.get_run(run.id)

    async def get_run_summary(self, run_id: str) -> RunSummary:
        return await self._send(calls.get_run_summary(run_id))

    async def get_run_plan(self, run_id: str) -> Plan:
        return await self._send(calls.get_run_plan(run_id))

    async def list_run_inputs(self, run_id: str) -> list[InputFile]:
        return await self._send(calls.list_run_inputs(run_id))

    async def list_run_outputs(self, run_id: str, *, step: str | None = None) -> list[OutputFile]:
        return await self._send(calls.list_run_outputs(run_id, step))

    async def download_run_outputs(
        self,
        run_id: str,
        destination: str | os.PathLike[str] | BinaryIO,
        *,
        format: ArchiveFormat = "tar.gz",
        step: str | None = None,
    ) -> int:
        """Like `AdeClient.download_run_outputs`: the archive streamed to a path or a binary file."""
        path, params = calls.outputs_archive_request(run_id, format, step)
        async with self._http.stream("GET", path, params=params, timeout=self._stream_timeout) as response:
            if not response.is_success:
                await response.aread()
                raise api_error(response)
            written = 0
            if not isinstance(destination, str | os.PathLike):
                async for chunk in response.aiter_bytes():
                    destination.write(chunk)
                    written += len(chunk)
                return written
            target = anyio.Path(destination)
            try:
                async with await anyio.open_file(target, "wb") as handle:
                    async for chunk in response.aiter_bytes():
                        await handle.write(chunk)
                        written += len(chunk)
            except BaseException:
                await target.unlink(missing_ok=True)
                raise
            return written

    async def download_run_output(self, run_id: str, path: str) -> bytes:
        return await self._send(calls.download_run_output(run_id, path))

    async def get_run_diagnostics(self, run_id: str) -> RunDiagnostics:
        return await self._send(calls.get_run_diagnostics(run_id))

    # Events and logs

    async def events_page(self, run_id: str, *, after_sequence: int = 0, limit: int = 1000) -> EventsPage:
        return await self._send(calls.events_page(run_id, after_sequence, limit))

    def events(self, run_id: str, *, after_sequence: int = 0) -> AsyncIterator[Event]:
        """See `AdeClient.events`."""
        return self._follow(calls.run_events_path(run_id), after_sequence)

    async def logs(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> AsyncIterator[str]:
        """See `AdeClient.logs`."""
        async for line in self.console(run_id, follow=follow, stream=stream):
            yield line.message

    async def console(
        self, run_id: str, *, follow: bool = False, stream: ConsoleStream | None = None
    ) -> AsyncIterator[ConsoleLine]:
        """See `AdeClient.console`."""
        if follow:
            async for line in aconsole_records(self.events(run_id), stream):
                yield line
            return
        async for line in self._paged(ConsolePages(run_id, stream)):
            yield line

    async def _follow(self, path: str, after_sequence: int) -> AsyncIterator[Event]:
        resume = Resume(after_sequence, self.reconnect_timeout_s)
        while True:
            params, headers = resume.request()
            try:
                async with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=self._stream_timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                    resume.connected(response)
                    async for sse in EventSource(response).aiter_sse():
                        if (event := resume.accept(sse)) is not None:
                            yield event
                        elif resume.ended:
                            return
                raise Retry("the stream closed before its end")
            except SSEError as exc:
                raise sse_error(exc) from exc
            except RECONNECT as exc:
                delay = resume.failed(exc)
            await anyio.sleep(delay)

    # Builds (see AdeClient)

    async def create_build(
        self, workspace_id: str, configuration_id: str, *, force: bool = False, wait: bool = False
    ) -> BuildResource:
        build = await self._send(calls.create_build(workspace_id, configuration_id, force))
        return await self.wait_for_build(build.id) if wait else build

    def list_builds(
        self, configuration_id: str, *, limit: int | None = None, page_size: int = 100
    ) -> AsyncIterator[BuildResource]:
        return self._paged(list_builds_pages(configuration_id, limit, page_size))

    async def get_build(self, build_id: str) -> BuildResource:
        return await self._send(calls.get_build(build_id))

    async def inspect_build(self, build_id: str) -> BuildInspection:
        return await self._send(calls.inspect_build(build_id))

    async def cancel_build(self, build_id: str) -> BuildResource:
        return await self._send(calls.cancel_build(build_id))

    async def wait_for_build(self, build_id: str) -> BuildResource:
        build = await self.get_build(build_id)
        if build.status not in TERMINAL_BUILD_STATUSES:
            async for _ in self.build_events(build.id):
                pass
            build = await self.get_build(build.id)
        return build

    def build_events(self, build_id: str, *, after_sequence: int = 0) -> AsyncIterator[Event]:
        return self._follow(calls.build_path(build_id, "/events"), after_sequence)

    async def build_logs(self, build_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        if follow:
            with contextlib.suppress(GoneError):
                async for line in aconsole_lines(self.build_events(build_id)):
                    yield line
            return
        path, headers = calls.build_logs_request(build_id)
        async with self._http.stream("GET", path, headers=headers) as response:
            if not response.is_success:
                await response.aread()
                raise api_error(response)
            lines = Lines()
            async for text in response.aiter_text():
                for line in lines.feed(text):
                    yield line
            for line in lines.end():
                yield line


async def _aiter_file(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as handle:
        while chunk := await handle.read(CHUNK_BYTES):
            yield chunk
