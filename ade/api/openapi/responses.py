"""What each operation can answer, stated beside its handler and applied to the generated document.

A handler declares, in its decorator, `opt=documented(Answer(...), …, errors=(…), request={…})`: its
answers (every status, every media type: JSON, SSE, NDJSON, text, archives), error statuses beyond the
ones every operation of its kind can answer, and a request body it reads itself. The errors every
operation can answer follow from what it takes (`error_statuses`), all in the one error shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.routes import HTTPRoute

from ade.api.openapi.schemas import COMPONENTS, to_spec

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
TEXT = "text/plain"
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
OPT_KEY = "openapi"


Detail = Annotated[Any, msgspec.Meta(description="one problem, usually `{key, source, message}`")]


class ErrorBody(msgspec.Struct):
    """Every error response: a human message, a machine code, and details (e.g. one per invalid field)."""

    error: str
    code: str
    details: list[Detail]


ERROR_RESPONSES = {
    400: "invalid request: a body, parameter or header is malformed or breaks a rule",
    401: "missing, invalid or expired credentials",
    403: "the key's role is too weak for this, or the credential is of the wrong kind (a runner token "
    "outside the runner protocol, a key inside it)",
    404: "no such thing, or it belongs to another workspace",
    409: "the request conflicts with the current state",
    410: "it expired: retention removed it",
    413: "the request body is too large",
    416: "the Range selects no byte",
    429: "too many concurrent event streams for this key (ADE_MAX_STREAMS_PER_KEY)",
    503: "Redis is unavailable",
}


@dataclass(frozen=True)
class Answer:
    """One status an operation answers: its media types, each with its schema — a type msgspec describes,
    a JSON Schema dict, or None for bytes — and the headers worth knowing."""

    status: int
    description: str
    content: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Documented:
    answers: tuple[Answer, ...]
    errors: frozenset[int]
    request: Mapping[str, Any] | None


def documented(
    *answers: Answer, errors: Iterable[int] = (), request: Mapping[str, Any] | None = None, **opt: Any
) -> dict[str, Any]:
    """A handler's `opt` carrying its documentation (merged with any other `opt` given)."""
    unknown = set(errors) - set(ERROR_RESPONSES)
    if unknown:
        raise ValueError(f"no description for error statuses {sorted(unknown)}")
    return {**opt, OPT_KEY: Documented(tuple(answers), frozenset(errors), request)}


def documented_operations(app: Litestar, document: OpenAPI) -> Iterator[tuple[str, str, Operation, Any]]:
    """Each operation of the document with its path, method and the handler's documentation (or None)."""
    paths = document.paths or {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_format not in paths:
            continue
        path_item = paths[route.path_format]
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(path_item, method.lower(), None)
                if isinstance(operation, Operation):
                    yield route.path_format, method.lower(), operation, handler.opt.get(OPT_KEY)


def schema_types(app: Litestar) -> list[Any]:
    """The types the handlers' documentation names (their component schemas must be made)."""
    found: list[Any] = [ErrorBody]
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            doc = handler.opt.get(OPT_KEY)
            if isinstance(doc, Documented):
                contents = [answer.content for answer in doc.answers] + [doc.request or {}]
                found += [
                    v for c in contents for v in c.values() if v is not None and not isinstance(v, dict)
                ]
    return found


def _schema(value: Any, schema_of: Mapping[Any, dict[str, Any]]) -> Schema | Reference:
    if value is None:
        return to_spec(BINARY)
    return to_spec(value if isinstance(value, dict) else schema_of[value])


def _content(content: Mapping[str, Any], schema_of: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    return {media: OpenAPIMediaType(schema=_schema(value, schema_of)) for media, value in content.items()}


def apply_documentation(app: Litestar, document: OpenAPI, schema_of: Mapping[Any, dict[str, Any]]) -> None:
    """Each handler's declared answers and request body, replacing what Litestar inferred."""
    for _, _, operation, doc in documented_operations(app, document):
        if not isinstance(doc, Documented):
            continue
        responses = operation.responses if operation.responses is not None else {}
        for answer in doc.answers:
            headers: dict[str, OpenAPIHeader | Reference] = {
                name: OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description=text)
                for name, text in answer.headers.items()
            }
            responses[str(answer.status)] = OpenAPIResponse(
                description=answer.description,
                content=_content(answer.content, schema_of) or None,
                headers=headers or None,
            )
        operation.responses = dict(sorted(responses.items()))
        if doc.request is not None:
            operation.request_body = RequestBody(content=_content(doc.request, schema_of), required=True)


# A run's or a build's id in a path may be a unique prefix: an ambiguous one is `409 ambiguous_id`.
PREFIX_IDS = {"run_id", "build_id"}


def error_statuses(public: bool, method: str, operation: Operation) -> set[int]:
    """The errors an operation of this kind can answer: authentication (401), roles and credential kinds
    (403) and Redis (503) wherever a credential is needed; 400 where it takes parameters or a body, 404
    where its path names something, 409 where it changes something (or names a run or build by an id
    prefix), 413 where it reads a body."""
    if public:
        return set()
    statuses = {401, 403, 503}
    parameters = [p for p in operation.parameters or () if not isinstance(p, Reference)]
    if parameters or operation.request_body is not None:
        statuses.add(400)
    if any(parameter.param_in == "path" for parameter in parameters):
        statuses.add(404)
    if method != "get" or any(p.param_in == "path" and p.name in PREFIX_IDS for p in parameters):
        statuses.add(409)
    if operation.request_body is not None:
        statuses.add(413)
    return statuses


def document_errors(app: Litestar, document: OpenAPI, public_paths: Iterable[str]) -> None:
    public = [re.compile(pattern) for pattern in public_paths]
    error = OpenAPIMediaType(schema=Reference(ref=COMPONENTS + "ErrorBody"))
    for path, method, operation, doc in documented_operations(app, document):
        responses = operation.responses if operation.responses is not None else {}
        declared = {str(a.status) for a in doc.answers} if isinstance(doc, Documented) else set()
        for guessed in [s for s in responses if s >= "400" and s not in declared]:  # Litestar's guesses
            del responses[guessed]
        statuses = error_statuses(any(p.match(path) for p in public), method, operation)
        if isinstance(doc, Documented):
            statuses |= doc.errors
            statuses -= {answer.status for answer in doc.answers}
        for status in statuses:
            responses[str(status)] = OpenAPIResponse(
                description=ERROR_RESPONSES[status], content={JSON: error}
            )
        operation.responses = dict(sorted(responses.items()))
