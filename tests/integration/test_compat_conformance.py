"""Schemathesis against the build server's OWN OpenAPI document (a vendored copy of
`shared/reference/003_…`, in tests/reference/), aimed at our server: what we serve at its paths never
errs, and answers in the content types and shapes that document promises.

The document has no security scheme; requests carry the bootstrap token. Its path `id`s are random
strings (404s), so half the cases are pointed at a real project and workflow to reach the 2xx answers.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from tests.system import BOOTSTRAP_TOKEN, AdeSystem

REFERENCE = Path(__file__).parents[1] / "reference" / "build_server_openapi.txt"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def build_server_document(text: str) -> dict[str, Any]:
    """The OpenAPI document of the reference: the JSON from the first line that is exactly `{` after the
    line "OpenAPI Specification"."""
    lines = text.splitlines()
    start = lines.index("OpenAPI Specification")
    first = next(i for i in range(start + 1, len(lines)) if lines[i] == "{")
    document: dict[str, Any] = json.loads("\n".join(lines[first:]))
    return document


_document = build_server_document(REFERENCE.read_text())
schema = schemathesis.openapi.from_dict(_document)
HEADERS = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}", "Accept": "application/json"}


@pytest.fixture(scope="module")
def known(system: AdeSystem) -> Iterator[dict[str, str]]:
    """A project with a workflow (its step runs `true`) and a build offered to runners, for cases pointed at
    things that exist."""
    with httpx.Client(base_url=system.base_url, headers=HEADERS, timeout=30) as http:
        project = http.post("/api/projects", json={"accountId": "conformance", "name": "conformance"})
        assert project.status_code == 201, project.text
        project_id = project.json()["id"]
        step = {"name": "ok", "dependsOn": [], "runScript": "true", "cacheDirs": [], "outputPaths": []}
        flow = http.post(
            f"/api/projects/{project_id}/workflows", json={"name": "conformance", "steps": [step]}
        )
        assert flow.status_code == 201, flow.text
        body = {"name": "step-mode", "steps": [step], "runsOn": ["conformance"]}
        offered = http.post(f"/api/projects/{project_id}/workflows", json=body)
        assert offered.status_code == 201, offered.text
        build = http.post(f"/api/projects/{project_id}/builds", json={"workflowId": offered.json()["id"]})
        assert build.status_code == 201, build.text
        yield {"project": project_id, "workflow": flow.json()["id"], "step": build.json()["steps"][0]["id"]}


def test_the_vendored_document_is_the_shared_reference() -> None:
    shared = Path(__file__).parents[3] / "shared" / "reference" / "003_9f0f53cdd5b9abd0.txt"
    if not shared.is_file():
        pytest.skip("the shared reference is not beside this checkout (CI clones only the repository)")
    assert REFERENCE.read_text() == shared.read_text()


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_served_build_server_api_conforms_to_its_document(
    case: Any, system: AdeSystem, known: dict[str, str]
) -> None:
    aimed = (
        zlib.crc32(json.dumps([case.path_parameters, case.query, case.body], default=str).encode()) % 2 == 0
    )
    if aimed and case.path_parameters and "stepId" in case.path_parameters:
        case.path_parameters["stepId"] = known["step"]  # a step of a run offered to runners (step mode)
    if aimed and case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = known["project"]
    if aimed and isinstance(case.body, dict) and "workflowId" in case.body:
        case.body["workflowId"] = known["workflow"]
    if aimed and isinstance(case.query, dict) and "projectId" in case.query:
        case.query["projectId"] = known["project"]
    case.call_and_validate(base_url=system.base_url, checks=CHECKS, headers=HEADERS, timeout=10)
