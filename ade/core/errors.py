"""One exception tree. `ade.api.app` maps it to HTTP in one place."""

from __future__ import annotations

from typing import Any


class AdeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []
        self.headers: dict[str, str] = {}


class Invalid(AdeError):
    status_code = 400
    code = "invalid_request"


class Unauthorized(AdeError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AdeError):
    status_code = 403
    code = "forbidden"


class NotFound(AdeError):
    status_code = 404
    code = "not_found"


def not_found(what: str, ident: str) -> NotFound:
    """The one message for 'missing' and 'not yours': a key cannot learn what other workspaces hold."""
    return NotFound(f"{what} {ident!r} does not exist", code=f"{what}_not_found")


class Conflict(AdeError):
    status_code = 409
    code = "conflict"


class TooLarge(AdeError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(AdeError):
    status_code = 429
    code = "too_many_requests"


class LeaseLost(AdeError):
    """Another writer holds (or took over) a stream's lease: this writer must stop writing."""

    code = "lease_lost"


class LogWriteFailed(AdeError):
    """Appending to an event log failed (read-only directory, no space)."""

    code = "log_write_failed"
