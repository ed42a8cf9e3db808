"""Schemathesis against the project's own OpenAPI document: no server errors, every response documented.

The document is the one the app serves at /schema/openapi.json (built here from the same app factory, so
the operations are known at collection time); the requests go to the real system over HTTP. Bounded so it
stays fast: a handful of examples per operation, with the bootstrap token so requests get past
authentication to validation and the handlers. SSE responses are asked for as JSON pages.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from litestar.serialization import encode_json
from schemathesis.checks import negative_data_rejection
from schemathesis.config import SchemathesisConfig

from ade.api.app import create_app
from ade.core.settings import Settings
from tests.system import BOOTSTRAP_TOKEN, AdeSystem

_document = json.loads(encode_json(create_app(Settings.from_env()).openapi_schema.to_schema()))
# A body past ADE_MAX_REQUEST_BYTES is refused with 413 before it is read: that is a rejection too.
_config = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422]}
        }
    }
)
schema = schemathesis.openapi.from_dict(_document, config=_config)
# The runner protocol's cache bodies are tars: bytes, sent as they are (like `application/octet-stream`).
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case: Any, system: AdeSystem) -> None:
    if isinstance(case.query, dict) and case.path.endswith("/events") and "stream" in case.query:
        case.query["stream"] = "false"
    if isinstance(case.query, dict) and "follow" in case.query:
        case.query["follow"] = "false"
    # Unknown query parameters are ignored (as most HTTP APIs do; EventSource cache-busters rely on it), so
    # negative-data rejection is checked for bodies only.
    excluded = [negative_data_rejection] if case.method == "GET" else []
    case.call_and_validate(
        base_url=system.base_url,
        excluded_checks=excluded,
        headers={"Authorization": f"Bearer {BOOTSTRAP_TOKEN}", "Accept": "application/json"},
        timeout=10,
    )
