"""The client's exceptions: `AdeApiError` (a subclass per status) for a non-2xx answer, built from the API's
error shape, and `AdeStreamError` for an event stream that cannot be continued."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

__all__ = [
    "AdeApiError",
    "AdeStreamError",
    "ConflictError",
    "ForbiddenError",
    "GoneError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "TooManyRequestsError",
    "UnauthorizedError",
    "api_error",
]


class AdeApiError(Exception):
    """A non-2xx answer, built from the API's error shape `{"error", "code", "details"}`.

    Match on `code` (`run_not_found`, `invalid_request`, `too_many_streams`, …) or on the subclass for the
    status (`NotFoundError`, …).
    """

    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.details: list[Any] = details or []


class InvalidRequestError(AdeApiError):
    """400: the request (body, parameter, header) is invalid; `details` names the fields."""


class UnauthorizedError(AdeApiError):
    """401: no, bad, revoked or expired credentials."""


class ForbiddenError(AdeApiError):
    """403: the key's role is too weak for this."""


class NotFoundError(AdeApiError):
    """404: unknown id (or another workspace's, which looks the same)."""


class ConflictError(AdeApiError):
    """409: the resource is not in a state that allows this."""


class GoneError(AdeApiError):
    """410: the resource is gone for good, e.g. `build_expired` (retention removed its logs)."""


class PayloadTooLargeError(AdeApiError):
    """413: a request body or an upload exceeds a server limit."""


class TooManyRequestsError(AdeApiError):
    """429: e.g. `too_many_streams` (ADE_MAX_STREAMS_PER_KEY)."""


class ServerError(AdeApiError):
    """5xx: the server failed (`internal_error`) or a dependency is down (`redis_unavailable`)."""


_ERRORS_BY_STATUS: dict[int, type[AdeApiError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: PayloadTooLargeError,
    429: TooManyRequestsError,
}


class AdeStreamError(Exception):
    """An event stream could not be continued: the server stayed unreachable for `reconnect_timeout_s`,
    kept skipping a sequence, or answered with something that is not an event stream."""


class _ErrorBody(msgspec.Struct):
    error: str
    code: str
    details: list[Any] = []


def api_error(response: httpx.Response) -> AdeApiError:
    """The exception for a non-2xx response (its body must have been read)."""
    status = response.status_code
    cls = _ERRORS_BY_STATUS.get(status, ServerError if status >= 500 else AdeApiError)
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
    except msgspec.MsgspecError:  # not the API's shape: a proxy's page, a crash
        text = response.content[:500].decode(errors="replace").strip()
        return cls(status, "http_error", text or response.reason_phrase or f"HTTP {status}")
    return cls(status, body.code, body.error, body.details)
