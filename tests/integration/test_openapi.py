"""The OpenAPI document tells the whole truth (DESIGN §5), its docs page works without internet, and a
client generated from it works against the real system."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.serialization import encode_json

from ade.api.app import create_app
from ade.core.settings import Settings
from ade.events.payloads import CATALOG
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

METHODS = ("get", "put", "post", "delete", "patch")
REF = "#/components/schemas/"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        encode_json(create_app(Settings.from_env()).openapi_schema.to_schema())
    )
    return found


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def media(document: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    content: dict[str, Any] = document["paths"][path][method]["responses"][str(status)].get("content", {})
    return {name: value["schema"] for name, value in content.items()}


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for child in node.values():
            yield from refs(child)
    elif isinstance(node, list):
        for child in node:
            yield from refs(child)


def test_every_answer_has_a_real_schema_and_every_reference_resolves(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert any(status.startswith("2") for status in responses), (method, path)
        bodies = [*responses.values(), operation.get("requestBody", {})]
        for body in bodies:
            for media_type, value in body.get("content", {}).items():
                assert value.get("schema"), f"{method} {path} {media_type}: no schema"
        for status in responses:
            if int(status) >= 400 and path != "/readyz":  # its 503 is the Readiness (checked below)
                assert media(document, path, method, int(status)) == {
                    "application/json": {"$ref": REF + "ErrorBody"}
                }, (method, path, status)
    for ref in refs(document):
        assert ref.removeprefix(REF) in components, ref
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))


def test_the_events_endpoints_document_sse_json_and_ndjson(document: dict[str, Any]) -> None:
    for path in ("/api/v1/runs/{run_id}/events", "/api/v1/builds/{build_id}/events"):
        answers = media(document, path, "get", 200)
        assert answers["application/json"] == {"$ref": REF + "EventsPage"}
        assert answers["application/x-ndjson"] == {"$ref": REF + "Event"}
        frames = answers["text/event-stream"]["description"]
        for part in ("retry:", "id: <sequence>", "event: ade.event", "data:", "keepalive", "event: end"):
            assert part in frames
        assert "429" in document["paths"][path]["get"]["responses"]
    assert "410" in document["paths"]["/api/v1/builds/{build_id}/events"]["get"]["responses"]
    create = "/api/v1/configurations/{configuration_id}/runs"
    assert media(document, create, "post", 201) == {"application/json": {"$ref": REF + "RunResource"}}
    assert set(media(document, create, "post", 200)) == {"text/event-stream"}
    assert set(media(document, "/api/v1/runs/{run_id}/logs", "get", 200)) == {
        "application/json",
        "text/plain",
    }
    assert set(media(document, "/api/v1/builds/{build_id}/logs", "get", 200)) == {"text/plain"}
    assert media(document, "/api/v1/builds/{build_id}/logs", "get", 204) == {}
    assert set(media(document, "/api/runner/{stepId}", "get", 200)) == {"text/plain"}
    assert set(media(document, "/api/v1/runs/{run_id}/outputs.zip", "get", 200)) == {"application/zip"}
    assert set(media(document, "/api/v1/runs/{run_id}/outputs.tar.gz", "get", 200)) == {"application/gzip"}
    assert media(document, "/readyz", "get", 503) == {"application/json": {"$ref": REF + "Readiness"}}
    chunk = document["paths"]["/api/v1/runner/runs/{run_id}/chunks"]["post"]["requestBody"]
    assert chunk["content"]["application/json"]["schema"] == {"$ref": REF + "Chunk"}


def test_the_event_is_one_typed_variant_per_catalog_entry(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    variants = [ref.removeprefix(REF) for ref in refs(components["Event"]["oneOf"])]
    assert components["Event"]["discriminator"]["propertyName"] == "type"
    by_type = {}
    for name in variants:
        variant = components[name]
        if name == "EngineEvent":
            assert variant["properties"]["type"]["pattern"] == r"^engine\."
            continue
        (event_type,) = variant["properties"]["type"]["enum"]
        by_type[event_type] = variant["properties"]["payload"]["$ref"].removeprefix(REF)
    assert set(by_type) == set(CATALOG)
    for event_type, payload in by_type.items():
        assert components[payload]["properties"], event_type
        assert CATALOG[event_type].__name__ in payload


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def test_the_docs_page_and_its_assets_come_from_the_server_itself(system: AdeSystem) -> None:
    with httpx.Client(base_url=system.base_url, timeout=30) as http:
        page = http.get("/schema")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert not re.search(r"https?://", page.text), "the page names another host"
        parser = _Assets()
        parser.feed(page.text)
        assert len(parser.urls) >= 3  # the favicon, the stylesheet, the script
        for url in parser.urls:
            assert url.startswith("/"), url
            asset = http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0
        document_url = re.search(r'url: "([^"]+)"', page.text)
        assert document_url is not None
        assert http.get(document_url[1]).json()["openapi"].startswith("3.1")
        assert http.get("/schema/static/swagger-editor-bundle.js").status_code == 404  # only what it uses


CLIENT_CONFIG = """\
package_name_override: ade_generated_client
post_hooks: []
content_type_overrides:
  application/x-ndjson: application/octet-stream
  application/x-tar: application/octet-stream
  application/gzip: application/octet-stream
  application/zip: application/octet-stream
  "*/*": application/octet-stream
"""


@pytest.fixture
def generated_client(system: AdeSystem, tmp_path: Path) -> Iterator[Any]:
    """A Python client generated (offline) from the document the live server serves, imported."""
    document = httpx.get(f"{system.base_url}/schema/openapi.json", timeout=30)
    assert document.status_code == 200
    (tmp_path / "openapi.json").write_bytes(document.content)
    (tmp_path / "config.yaml").write_text(CLIENT_CONFIG)
    generator = Path(sys.executable).parent / "openapi-python-client"
    made = subprocess.run(
        [
            *(str(generator), "generate", "--path", "openapi.json", "--meta", "none"),
            *("--config", "config.yaml", "--output-path", "ade_generated_client", "--fail-on-warning"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("ade_generated_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == "ade_generated_client"]:
            del sys.modules[name]


def test_a_generated_client_creates_a_run_and_reads_its_events(
    generated_client: Any, system: AdeSystem
) -> None:
    def api(name: str) -> Any:
        return importlib.import_module(f"ade_generated_client.api.{name}")

    models = importlib.import_module("ade_generated_client.models")
    client = generated_client.AuthenticatedClient(base_url=system.base_url, token=BOOTSTRAP_TOKEN, timeout=30)
    with client:
        workspace = api("workspaces.workspace_create").sync(
            client=client, body=models.WorkspaceCreate(name="generated client")
        )
        assert isinstance(workspace, models.Workspace), workspace
        configuration = api("configurations.configuration_create").sync(
            workspace.id,
            client=client,
            body=models.ConfigurationCreate(
                name="hello", steps=[models.Step(name="hello", script="echo hello from a generated client")]
            ),
        )
        assert isinstance(configuration, models.Configuration), configuration
        created = api("runs.run_create").sync_detailed(
            configuration.id, client=client, body=models.RunCreate()
        )
        assert created.status_code == 201, created.content
        run = created.parsed
        assert isinstance(run, models.RunResource)
        assert run.status == "queued"

        events: list[Any] = []
        deadline = time.monotonic() + 60
        while not any(isinstance(event, models.RunCompletedEvent) for event in events):
            assert time.monotonic() < deadline, [event.type_ for event in events]
            page = api("runs.run_view_events").sync(run.id, client=client, after_sequence=len(events))
            assert isinstance(page, models.EventsPage), page
            events += page.items
            if not page.items:
                time.sleep(0.2)

    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert isinstance(events[0], models.RunQueuedEvent)
    assert events[-1].payload.status == "succeeded"
    lines = [event.payload.message for event in events if isinstance(event, models.ConsoleLineEvent)]
    assert lines == ["hello from a generated client"]
