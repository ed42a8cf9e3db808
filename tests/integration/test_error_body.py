"""Every error body is the API's JSON error shape followed by a newline (so `curl` output ends its line)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.system import BOOTSTRAP_TOKEN, AdeSystem


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code"),
    [
        ("GET", "/api/v1/runs/run_01J0000000000000000000000", True, None, 404, "run_not_found"),
        ("GET", "/api/v1/whoami", False, None, 401, "missing_token"),
        ("POST", "/api/v1/workspaces", True, b"{not json", 400, "invalid_request"),
        ("GET", "/api/v1/workspaces/ws_x/runs?limit=0", True, None, 400, "invalid_request"),
        ("DELETE", "/api/v1/whoami", True, None, 405, "method_not_allowed"),
    ],
)
def test_error_bodies_end_with_a_newline(
    system: AdeSystem, method: str, path: str, headers: bool, body: bytes | None, status: int, code: str
) -> None:
    auth = {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"} if headers else {}
    if body is not None:
        auth["Content-Type"] = "application/json"
    response = httpx.request(method, f"{system.base_url}{path}", headers=auth, content=body, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.text.endswith("}\n") and response.text.count("\n") == 1
    parsed = json.loads(response.text)
    assert parsed["code"] == code and isinstance(parsed["error"], str) and isinstance(parsed["details"], list)
