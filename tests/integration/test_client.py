"""`ade.client`: the sync and async clients against a real system; exact event streams across reconnects."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from ade import client as client_module
from ade.client import (
    AdeApiError,
    AdeClient,
    AdeStreamError,
    AsyncAdeClient,
    ConflictError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
)
from ade.core.models import (
    BuildResource,
    Commit,
    Configuration,
    ConfigurationCreate,
    InputArtifact,
    RunResource,
    SecretValue,
    Step,
)
from ade.core.views import BuildInspection
from ade.events.envelope import Event
from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.fixture
def ade(system: AdeSystem) -> Iterator[AdeClient]:
    with AdeClient(system.base_url, BOOTSTRAP_TOKEN) as client:
        yield client


@pytest.fixture
async def aade(system: AdeSystem) -> AsyncIterator[AsyncAdeClient]:
    async with AsyncAdeClient(system.base_url, BOOTSTRAP_TOKEN) as client:
        yield client


def config(script: str, name: str = "cfg", **extra: Any) -> dict[str, Any]:
    return {"name": name, "steps": [{"name": "main", "script": script}], **extra}


def assert_exact(events: list[Event], first: int = 1) -> None:
    """Sequences first..n, each once, in order; the stream ended at the run's completion."""
    assert [event.sequence for event in events] == list(range(first, first + len(events)))
    assert events[-1].type == "run.completed"


# The sync client, end to end ----------------------------------------------------------------------


def test_sync_client_covers_workspaces_configurations_artifacts_and_runs(
    ade: AdeClient, tmp_path: Path
) -> None:
    ws = ade.create_workspace("client-sync")
    assert ade.get_workspace(ws.id) == ws

    script = 'cat "$ADE_INPUT_DIR/in.txt"; echo out > "$ADE_OUTPUT_DIR/result.txt"; echo "err $TOKEN" >&2'
    created = ade.create_configuration(
        ws.id, config(script, environment={"TOKEN": {"value": "s3cret", "secret": True}})
    )
    assert isinstance(created, Configuration)
    assert created.environment == {"TOKEN": SecretValue(secret=True)}  # never returned
    assert [cfg.id for cfg in ade.list_configurations(ws.id)] == [created.id]
    replaced = ade.replace_configuration(
        created.id,
        ConfigurationCreate(
            name="renamed",
            steps=[Step(name="main", script=script)],
            environment={"TOKEN": SecretValue(secret=True)},  # as shown: keeps the stored value
        ),
    )
    assert replaced.id == created.id and replaced.name == "renamed"
    assert ade.get_configuration(created.id) == replaced

    source = tmp_path / "in.txt"
    source.write_bytes(b"hello input\n")
    from_path = ade.upload_artifact(ws.id, source)
    assert from_path.key == "sha256:" + hashlib.sha256(b"hello input\n").hexdigest()
    assert (from_path.filename, from_path.size, from_path.content_type) == ("in.txt", 12, "text/plain")
    from_bytes = ade.upload_artifact(ws.id, b"hello input\n", filename="again.txt")
    assert from_bytes.key == from_path.key  # content-addressed
    assert ade.download_artifact(from_path.key, workspace_id=ws.id) == b"hello input\n"

    run = ade.create_run(
        created.id,
        input_artifacts=[InputArtifact(key=from_path.key, name="in.txt")],
        commit=Commit(branch="main", hash="abc123"),
    )
    assert isinstance(run, RunResource) and run.status == "queued"
    assert run.commit == Commit(branch="main", hash="abc123")
    assert ade.get_run(run.id[:-6].lower()).id == run.id  # a unique prefix
    ended = ade.wait_for_run(run.id)
    assert ended.status == "succeeded" and ended.exit_code == 0

    events = list(ade.events(run.id))
    assert_exact(events)
    assert events[0].type == "run.queued" and events[0].run_id == run.id
    assert_exact(list(ade.events(run.id, after_sequence=3)), first=4)
    page = ade.events_page(run.id, after_sequence=1, limit=2)
    assert [e.sequence for e in page.items] == [2, 3] and page.next_after_sequence == 3

    assert list(ade.logs(run.id, stream="stdout")) == ["hello input"]
    assert list(ade.logs(run.id, stream="stderr")) == ["err ***"]  # the secret is masked
    assert sorted(ade.logs(run.id)) == ["err ***", "hello input"]

    summary = ade.get_run_summary(run.id)
    assert summary.status == "succeeded" and [s.status for s in summary.steps] == ["succeeded"]
    assert summary.events.total == len(events) and summary.outputs_count == 1
    plan = ade.get_run_plan(run.id)
    assert plan.name == "renamed" and plan.environment == {"TOKEN": SecretValue(secret=True)}
    inputs = ade.list_run_inputs(run.id)
    assert [(i.name, i.key, i.size) for i in inputs] == [("in.txt", from_path.key, 12)]
    outputs = ade.list_run_outputs(run.id)
    assert [(o.path, o.size) for o in outputs] == [("result.txt", 4)]
    assert ade.download_run_output(run.id, "result.txt") == b"out\n"
    diagnostics = ade.get_run_diagnostics(run.id)
    assert diagnostics.last_sequence == len(events) and diagnostics.attempt == 1
    assert diagnostics.environment == {"TOKEN": {"secret": True}}

    ade.delete_configuration(created.id)
    with pytest.raises(NotFoundError) as missing:
        ade.get_configuration(created.id)
    assert missing.value.code == "configuration_not_found"


def test_list_runs_follows_cursors_and_filters(ade: AdeClient) -> None:
    ws = ade.create_workspace("client-pages")
    ok = ade.create_configuration(ws.id, config("true", name="ok")).id
    bad = ade.create_configuration(ws.id, config("exit 4", name="bad")).id
    created = [ade.create_run(ok, commit=Commit(branch="main" if i % 2 else "dev")) for i in range(7)]
    created.append(ade.create_run(bad))
    for run in created:
        ade.wait_for_run(run.id)
    newest_first = [run.id for run in reversed(created)]

    assert [run.id for run in ade.list_runs(workspace_id=ws.id, page_size=3)] == newest_first  # 3 pages
    assert [run.id for run in ade.list_runs(workspace_id=ws.id, page_size=2, limit=5)] == newest_first[:5]
    assert [run.id for run in ade.list_runs(configuration_id=ok, page_size=2)] == newest_first[1:]
    assert [run.id for run in ade.list_runs(workspace_id=ws.id, status="failed")] == newest_first[:1]
    succeeded = list(ade.list_runs(workspace_id=ws.id, status=["succeeded"], page_size=4))
    assert len(succeeded) == 7 and {run.status for run in succeeded} == {"succeeded"}
    main = [run.id for run in ade.list_runs(workspace_id=ws.id, branch="main", page_size=1)]
    assert main == [run.id for run in reversed(created) if run.commit and run.commit.branch == "main"]
    assert len(main) == 3
    with pytest.raises(ValueError):
        next(ade.list_runs())


def test_errors_carry_the_api_status_and_code(ade: AdeClient, system: AdeSystem) -> None:
    with pytest.raises(NotFoundError) as missing:
        ade.get_run("run_01J0000000000000000000000")
    error = missing.value
    assert isinstance(error, AdeApiError)
    assert (error.status, error.code) == (404, "run_not_found") and "does not exist" in error.message

    with pytest.raises(NotFoundError) as no_stream:
        next(ade.events("run_01J0000000000000000000000"))
    assert no_stream.value.code == "run_not_found"

    ws = ade.create_workspace("client-errors")
    duplicate = [Step(name="same", script="true"), Step(name="same", script="true")]
    with pytest.raises(InvalidRequestError) as invalid:
        ade.create_configuration(ws.id, ConfigurationCreate(name="dup", steps=duplicate))
    assert invalid.value.status == 400 and invalid.value.code == "invalid_request"
    assert invalid.value.details and invalid.value.details[0]["key"] == "steps"
    with pytest.raises(msgspec.ValidationError):  # a mapping is validated before it is sent
        ade.create_configuration(ws.id, {"name": "no steps", "steps": []})

    with AdeClient(system.base_url, "not-a-key") as stranger, pytest.raises(UnauthorizedError) as denied:
        stranger.get_workspace(ws.id)
    assert denied.value.status == 401 and denied.value.code == "invalid_token"


# The async client ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_runs_cancels_reruns_and_pages(aade: AsyncAdeClient, tmp_path: Path) -> None:
    ws = await aade.create_workspace("client-async")
    assert (await aade.get_workspace(ws.id)).name == "client-async"
    cfg = await aade.create_configuration(ws.id, config('echo "got $(cat "$ADE_INPUT_DIR/x")"; sleep 30'))
    assert [c.id for c in await aade.list_configurations(ws.id)] == [cfg.id]
    (tmp_path / "x.bin").write_bytes(b"payload")
    artifact = await aade.upload_artifact(ws.id, tmp_path / "x.bin")
    assert await aade.download_artifact(artifact.key, workspace_id=ws.id) == b"payload"

    run = await aade.create_run(cfg.id, input_artifacts=[InputArtifact(key=artifact.key, name="x")])
    events: list[Event] = []
    async for event in aade.events(run.id):
        events.append(event)
        if event.type == "console.line":  # running, inside its step: cancel it
            assert event.payload["message"] == "got payload"
            cancelling = await aade.cancel_run(run.id)
            assert cancelling.id == run.id
    assert_exact(events)
    assert events[-1].payload["status"] == "cancelled"
    assert "run.cancel_requested" in [event.type for event in events]
    assert [line async for line in aade.logs(run.id)] == ["got payload"]

    again = await aade.rerun(run.id)
    assert (again.rerun_of, again.attempt) == (run.id, 2)
    await aade.cancel_run(again.id)
    assert (await aade.wait_for_run(again.id)).status == "cancelled"
    assert [i.name for i in await aade.list_run_inputs(again.id)] == ["x"]
    assert (await aade.get_run_summary(run.id)).status == "cancelled"
    assert (await aade.get_run_plan(run.id)).configuration_id == cfg.id
    assert (await aade.get_run_diagnostics(again.id)).rerun_of == run.id
    assert await aade.list_run_outputs(run.id) == []

    listed = [r.id async for r in aade.list_runs(workspace_id=ws.id, page_size=1)]
    assert listed == [again.id, run.id]
    assert [r.id async for r in aade.list_runs(configuration_id=cfg.id, status="cancelled", limit=1)] == [
        again.id
    ]

    with pytest.raises(NotFoundError) as missing:
        await aade.get_run("run_01J0000000000000000000000")
    assert missing.value.code == "run_not_found"
    await aade.delete_configuration(cfg.id)
    with pytest.raises(NotFoundError):
        await aade.get_configuration(cfg.id)


@pytest.mark.anyio
async def test_async_logs_follow_a_live_run(aade: AsyncAdeClient, system: AdeSystem) -> None:
    ws = await aade.create_workspace("client-follow")
    script = "echo first; echo warn >&2; while [ ! -e go ]; do sleep 0.02; done; echo second"
    cfg = await aade.create_configuration(ws.id, config(script))
    run = await aade.create_run(cfg.id)
    lines = []
    async for line in aade.logs(run.id, follow=True, stream="stdout"):
        lines.append(line)
        if line == "first":  # the step now waits for us: the run cannot have ended
            assert (await aade.get_run(run.id)).status == "running"
            (system.data_dir / "runs" / run.id / "work" / "go").touch()
    assert lines == ["first", "second"]
    assert [line async for line in aade.logs(run.id, stream="stderr")] == ["warn"]


def test_sync_logs_follow_a_live_run(ade: AdeClient, system: AdeSystem) -> None:
    ws = ade.create_workspace("client-follow-sync")
    script = "echo one; while [ ! -e go ]; do sleep 0.02; done; echo two >&2; echo three"
    run = ade.create_run(ade.create_configuration(ws.id, config(script)).id)
    lines = []
    for line in ade.logs(run.id, follow=True):
        lines.append(line)
        if line == "one":
            assert ade.get_run(run.id).status == "running"
            (system.data_dir / "runs" / run.id / "work" / "go").touch()
    assert sorted(lines[1:]) == ["three", "two"] and lines[0] == "one"


# Exact streams across reconnects: a server restart --------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """Records the `Last-Event-ID` of every event-stream request."""

    def __init__(self) -> None:
        super().__init__()
        self.resumed_from: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events") and request.url.params.get("stream") == "true":
            self.resumed_from.append(request.headers.get("last-event-id", ""))
        return super().handle_request(request)


def test_events_survive_an_api_restart(tmp_path: Path) -> None:
    """The API process dies mid-stream and a new one starts while the run goes on: the iterator resumes
    with Last-Event-ID and yields 1..n exactly, the events from before, during and after the restart.

    SIGKILL, not SIGTERM: on SIGTERM uvicorn drains an open SSE response for its graceful timeout (5 s)
    and then cuts it mid-body; the client sees the same incomplete read as after a kill, 5 s later."""
    own = AdeSystem(tmp_path).start()
    transport = CountingTransport()
    try:
        with AdeClient(own.base_url, BOOTSTRAP_TOKEN, transport=transport, reconnect_timeout_s=30) as ade:
            ws = ade.create_workspace("restart")
            script = (
                'for i in $(seq 1 150); do echo "line $i"; done; '
                "while [ ! -e go ]; do sleep 0.02; done; "
                'for i in $(seq 151 300); do echo "line $i"; sleep 0.002; done'
            )
            run = ade.create_run(ade.create_configuration(ws.id, config(script)).id)
            events: list[Event] = []
            for event in ade.events(run.id):
                events.append(event)
                if event.payload.get("message") == "line 150":  # the step now waits for `go`
                    assert own.api is not None
                    own.api.kill()
                    own.api.wait()
                    own.start_api()
                    own.wait_ready()
                    (own.data_dir / "runs" / run.id / "work" / "go").touch()
            assert_exact(events)
            lines = [e.payload["message"] for e in events if e.type == "console.line"]
            assert lines == [f"line {i}" for i in range(1, 301)]
            assert events[-1].payload["status"] == "succeeded"
            assert len(transport.resumed_from) >= 2 and transport.resumed_from[0] == "0"
            assert all(int(seen) >= 150 for seen in transport.resumed_from[1:])  # resumed, not restarted
            assert ade.get_run_diagnostics(run.id).last_sequence == len(events)
    finally:
        own.stop()


# Exact streams against a scripted server: gaps, duplicates, 5xx, cut connections ---------------------


def frame(sequence: int, kind: str = "console.line") -> bytes:
    event = Event(
        type=kind,
        sequence=sequence,
        event_id=f"evt_{sequence}",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        source="worker",
        workspace_id="ws_x",
        run_id="run_x",
        payload={"n": sequence},
    )
    return b"id: %d\nevent: ade.event\ndata: %s\n\n" % (sequence, msgspec.json.encode(event))


END = b"event: end\ndata: {}\n\n"
SSE = {"content-type": "text/event-stream"}


def scripted() -> list[Any]:
    """What the fake server answers, connection by connection."""

    def cut(*chunks: bytes) -> Iterator[bytes]:
        yield from chunks
        raise httpx.ReadError("connection reset")

    return [
        httpx.Response(200, headers=SSE, content=b"retry: 10\n\n" + frame(1) + frame(2) + frame(4)),  # a gap
        httpx.Response(503, json={"error": "restarting", "code": "unavailable", "details": []}),
        httpx.Response(200, headers=SSE, content=frame(2) + frame(3) + frame(4) + frame(5)),  # no end
        httpx.ConnectError("refused"),
        httpx.Response(200, headers=SSE, content=cut(frame(5), frame(6), b"id: 7\nevent: ade.e")),
        httpx.Response(200, headers=SSE, content=frame(7) + frame(8, "run.completed") + END),
    ]


def test_the_sync_stream_resumes_exactly_after_gaps_errors_and_cuts() -> None:
    answers, resumed_from = scripted(), []

    def handler(request: httpx.Request) -> httpx.Response:
        resumed_from.append(request.headers["last-event-id"])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    with AdeClient("http://ade.test", "t", transport=httpx.MockTransport(handler)) as ade:
        events = list(ade.events("run_x"))
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert resumed_from == ["0", "2", "2", "5", "5", "6"]
    assert answers == []


@pytest.mark.anyio
async def test_the_async_stream_resumes_exactly_after_gaps_errors_and_cuts() -> None:
    answers, resumed_from = scripted(), []

    async def handler(request: httpx.Request) -> httpx.Response:
        resumed_from.append(request.headers["last-event-id"])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        if not isinstance(answer.stream, httpx.ByteStream):  # re-wrap a sync cut stream as async

            async def chunks(source: Any = answer.stream) -> AsyncIterator[bytes]:
                for chunk in source:
                    yield chunk

            return httpx.Response(200, headers=SSE, content=chunks())
        return answer

    async with AsyncAdeClient("http://ade.test", "t", transport=httpx.MockTransport(handler)) as ade:
        events = [event async for event in ade.events("run_x")]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert resumed_from == ["0", "2", "2", "5", "5", "6"]


def test_a_stream_gives_up_when_the_server_stays_away_or_keeps_skipping() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with (
        AdeClient(
            "http://ade.test", "t", transport=httpx.MockTransport(refused), reconnect_timeout_s=0.3
        ) as ade,
        pytest.raises(AdeStreamError, match="could not be resumed"),
    ):
        list(ade.events("run_x"))

    def skipping(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=frame(1) + frame(3))

    with AdeClient("http://ade.test", "t", transport=httpx.MockTransport(skipping)) as ade:
        seen = []
        with pytest.raises(AdeStreamError, match="skipping"):
            for event in ade.events("run_x"):
                seen.append(event.sequence)
    assert seen == [1]

    def not_sse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": []})

    with (
        AdeClient("http://ade.test", "t", transport=httpx.MockTransport(not_sse)) as ade,
        pytest.raises(AdeStreamError, match="not an event stream"),
    ):
        list(ade.events("run_x"))


def test_mirrored_response_shapes_match_the_server() -> None:
    """The client mirrors a few server structs (to stay light to import); they must not drift."""
    from ade.api import run_views, streams
    from ade.records.artifacts import Artifact

    pairs = [
        (client_module.Artifact, Artifact),
        (client_module.EventsPage, streams.EventsPage),
        (client_module.InputFile, run_views.InputFile),
        (client_module.OutputListing, run_views.OutputListing),
        (client_module.Timings, run_views.Timings),
        (client_module.RunDiagnostics, run_views.RunDiagnostics),
    ]
    for mirror, original in pairs:
        assert mirror.__struct_fields__ == original.__struct_fields__, original.__name__
        assert (
            msgspec.json.schema(mirror)["$defs"][mirror.__name__]["properties"]
            == (msgspec.json.schema(original)["$defs"][original.__name__]["properties"])
        ), original.__name__


# Builds ---------------------------------------------------------------------------------------------


def shell_build(*steps: tuple[str, str]) -> dict[str, Any]:
    return {"constructor": "shell", "steps": [{"name": name, "script": script} for name, script in steps]}


def test_sync_client_builds_reuses_lists_inspects_and_streams(ade: AdeClient) -> None:
    ws = ade.create_workspace("client-builds")
    spec = shell_build(("compile", "echo compiled; printf 'half\\rdone\\n'; echo careful >&2"))
    cfg = ade.create_configuration(ws.id, config("true", build=spec))

    first = ade.create_build(ws.id, cfg.id, wait=True)
    assert isinstance(first, BuildResource)
    assert (first.status, first.reused_from, first.configuration_id) == ("ready", None, cfg.id)
    assert first.completed_at is not None
    reused = ade.create_build(ws.id, cfg.id)  # a ready build of that fingerprint: reused at once
    assert (reused.status, reused.reused_from, reused.fingerprint) == ("ready", first.id, first.fingerprint)
    forced = ade.create_build(ws.id, cfg.id, force=True, wait=True)
    assert forced.status == "ready" and forced.reused_from is None and forced.id != first.id

    newest_first = [forced.id, reused.id, first.id]
    assert [b.id for b in ade.list_builds(cfg.id)] == newest_first
    assert [b.id for b in ade.list_builds(cfg.id, page_size=1)] == newest_first  # `before` pages
    assert [b.id for b in ade.list_builds(cfg.id, page_size=2, limit=2)] == newest_first[:2]
    assert ade.get_build(first.id[:-6].lower()).id == first.id  # a unique prefix

    inspection = ade.inspect_build(forced.id)
    assert isinstance(inspection, BuildInspection)
    assert (inspection.constructor, inspection.owner, inspection.fingerprint) == (
        "shell",
        "bootstrap",
        first.fingerprint,
    )
    assert inspection.flags == {"force": True, "reused": False}
    assert ade.inspect_build(reused.id).reused_from == first.id

    events = list(ade.build_events(first.id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "build.queued" and events[-1].type == "build.completed"
    assert events[-1].payload["status"] == "ready"
    phases = [(e.type, e.payload["phase"]) for e in events if e.type.startswith("build.phase.")]
    assert phases == [("build.phase.started", "step:compile"), ("build.phase.completed", "step:compile")]
    resumed = list(ade.build_events(first.id, after_sequence=2))
    assert [e.sequence for e in resumed] == [e.sequence for e in events[2:]]
    assert [e.type for e in ade.build_events(reused.id)] == ["build.queued", "build.completed"]

    expected = ["compiled", "half\rdone", "careful"]  # split at "\n" only
    assert sorted(ade.build_logs(first.id)) == sorted(expected)
    assert sorted(ade.build_logs(first.id, follow=True)) == sorted(expected)
    assert list(ade.build_logs(reused.id)) == []

    with pytest.raises(NotFoundError) as missing:
        ade.get_build("build_01J0000000000000000000000")
    assert missing.value.code == "build_not_found"


def test_sync_client_cancels_a_build(ade: AdeClient) -> None:
    ws = ade.create_workspace("client-build-cancel")
    cfg = ade.create_configuration(ws.id, config("true", build=shell_build(("slow", "echo busy; sleep 30"))))
    build = ade.create_build(ws.id, cfg.id)
    seen = []
    for event in ade.build_events(build.id):
        seen.append(event.type)
        if event.type == "console.line":  # building, inside its step
            assert ade.cancel_build(build.id).id == build.id
    assert "build.cancel_requested" in seen and seen[-1] == "build.completed"
    ended = ade.wait_for_build(build.id)
    assert ended.status == "cancelled"
    with pytest.raises(ConflictError) as finished:
        ade.cancel_build(build.id)
    assert finished.value.code == "build_finished"


@pytest.mark.anyio
async def test_async_client_builds_and_follows_build_logs(aade: AsyncAdeClient, system: AdeSystem) -> None:
    ws = await aade.create_workspace("client-builds-async")
    script = "echo first; while [ ! -e go ]; do sleep 0.02; done; echo second >&2"
    cfg = await aade.create_configuration(ws.id, config("true", build=shell_build(("gate", script))))
    build = await aade.create_build(ws.id, cfg.id)
    assert build.status in ("queued", "building")
    lines = []
    async for line in aade.build_logs(build.id, follow=True):
        lines.append(line)
        if line == "first":  # the step now waits for us: the build cannot have ended
            assert (await aade.get_build(build.id)).status == "building"
            (system.data_dir / "builds" / build.id / "source" / "go").touch()
    assert lines == ["first", "second"]
    assert [line async for line in aade.build_logs(build.id)] == ["first", "second"]
    assert (await aade.wait_for_build(build.id)).status == "ready"

    again = await aade.create_build(ws.id, cfg.id, wait=True)
    assert again.reused_from == build.id
    assert [b.id async for b in aade.list_builds(cfg.id, page_size=1)] == [again.id, build.id]
    assert [b.id async for b in aade.list_builds(cfg.id, limit=1)] == [again.id]
    assert (await aade.inspect_build(build.id[:-6])).flags == {"force": False, "reused": False}
    events = [e async for e in aade.build_events(build.id, after_sequence=1)]
    assert events[0].sequence == 2 and events[-1].payload["status"] == "ready"
    stopped = await aade.create_build(ws.id, cfg.id, force=True)
    await aade.cancel_build(stopped.id)
    assert (await aade.wait_for_build(stopped.id)).status == "cancelled"


def test_build_listing_logs_and_expiry_against_a_scripted_server() -> None:
    """`before` paging over the plain-list endpoint, text logs cut mid-line, 204 and 410 once expired."""
    seen: list[str] = []

    def build(n: int) -> dict[str, Any]:
        return {
            "id": f"build_{n}", "workspace_id": "ws_x", "configuration_id": "cfg_x", "status": "ready",
            "fingerprint": "f" * 64, "reused_from": None, "created_at": "2026-01-01T00:00:00Z",
            "started_at": None, "completed_at": None, "failure": None,
            "links": dict.fromkeys(["self", "inspect", "events", "events_stream", "logs", "cancel"], "/x"),
        }  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.path.removeprefix('/api/v1')}?{request.url.query.decode()}")
        path = request.url.path
        if path.endswith("/configurations/cfg_x/builds"):
            older = [n for n in (5, 4, 3, 2, 1) if f"build_{n}" < request.url.params.get("before", "~")]
            return httpx.Response(200, json=[build(n) for n in older[: int(request.url.params["limit"])]])
        if path.endswith("/build_live/logs"):
            chunks = [b"one\ntw", b"o\r\nthr", b"ee"]
            return httpx.Response(200, headers={"content-type": "text/plain"}, content=iter(chunks))
        if path.endswith("/logs"):
            return httpx.Response(204, headers={"content-type": "text/plain"})
        return httpx.Response(410, json={"error": "expired", "code": "build_expired", "details": []})

    with AdeClient("http://ade.test", "t", transport=httpx.MockTransport(handler)) as ade:
        assert [b.id for b in ade.list_builds("cfg_x", page_size=2)] == [
            f"build_{n}" for n in (5, 4, 3, 2, 1)
        ]
        assert seen == [
            "/configurations/cfg_x/builds?limit=2",
            "/configurations/cfg_x/builds?limit=2&before=build_4",
            "/configurations/cfg_x/builds?limit=2&before=build_2",  # a short page is the last
        ]
        assert [b.id for b in ade.list_builds("cfg_x", limit=3, page_size=2)] == [
            "build_5",
            "build_4",
            "build_3",
        ]
        assert list(ade.build_logs("build_live")) == ["one", "two\r", "three"]
        assert list(ade.build_logs("build_old")) == []  # 204: expired
        assert list(ade.build_logs("build_old", follow=True)) == []
        with pytest.raises(GoneError) as gone:
            next(ade.build_events("build_old"))
        assert (gone.value.status, gone.value.code) == (410, "build_expired")
