"""The OpenAPI document, made exact.

- Every API route documents every error it can answer, in the one error shape.
- Component schemas of our msgspec structs come from msgspec itself (`msgspec.json.schema_components`),
  so the document states exactly what the server validates: unknown fields refused, key patterns,
  exclusive bounds, value lengths. (Litestar's own generator drops some of these.)
- Optional query and header parameters are documented as their plain type (they are absent, not null).
- Litestar builds a path's automatic OPTIONS handler from the first handler registered for that path, so
  its `Allow` header misses methods added later; each one is pointed at its final route.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIType, Reference, Schema
from litestar.routes import HTTPRoute

from ade.core.models import Struct as RequestStruct

COMPONENTS = "#/components/schemas/"


class ErrorBody(msgspec.Struct):
    """Every error response: a human message, a machine code, and details (e.g. one per invalid field)."""

    error: str
    code: str
    details: list[Any]


ERROR_RESPONSES = {
    400: "invalid request: a body, parameter or header is malformed or breaks a rule",
    401: "missing, invalid or expired credentials",
    403: "the key's role is too weak for this",
    404: "no such thing, or it belongs to another workspace",
    409: "the request conflicts with the current state",
    413: "the request body is too large",
    429: "too many concurrent event streams for this key",
    503: "Redis is unavailable",
}


def document_errors(app: Litestar, prefix: str) -> None:
    for route in app.routes:
        if not route.path.startswith(prefix):
            continue
        for handler in getattr(route, "route_handlers", ()):
            documented = dict(handler.responses or {})
            for status, description in ERROR_RESPONSES.items():
                documented.setdefault(status, ResponseSpec(data_container=ErrorBody, description=description))
            handler.responses = documented


def fix_options_allow(app: Litestar) -> None:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.handler_name == "options_handler":
                for cell in handler.fn.__closure__ or ():
                    if isinstance(cell.cell_contents, HTTPRoute):
                        cell.cell_contents = route


_FIELD_BY_ALIAS = {f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema)}
_NESTED_ONE = {"items", "additionalProperties", "propertyNames", "not"}
_NESTED_LIST = {"anyOf", "oneOf", "allOf", "prefixItems"}


def _to_spec(node: dict[str, Any]) -> Schema | Reference:
    """A JSON Schema dict (as msgspec writes it) as Litestar's OpenAPI objects."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            value = {name: _to_spec(child) for name, child in value.items()}
        elif key in _NESTED_ONE and isinstance(value, dict):
            value = _to_spec(value)
        elif key in _NESTED_LIST:
            value = [_to_spec(child) for child in value]
        elif key == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        fields[_FIELD_BY_ALIAS[key]] = value
    return Schema(**fields)


def _our_structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    pending: list[type[msgspec.Struct]] = [msgspec.Struct]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            if cls.__module__.startswith("ade."):
                found[cls.__name__] = cls
    return found


# Request date-times: RFC 3339 with an offset. The pattern only admits real dates (days 01-28 always exist),
# so the document never calls a value valid that the server refuses.
RFC3339_PATTERN = (
    r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])$"
)


def _pattern_date_times(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("format") == "date-time":
            node["pattern"] = RFC3339_PATTERN
        for child in node.values():
            _pattern_date_times(child)
    elif isinstance(node, list):
        for child in node:
            _pattern_date_times(child)


def exact_component_schemas(app: Litestar) -> None:
    document = app.openapi_schema
    components = document.components.schemas if document.components else None
    if not components:
        return
    ours = _our_structs()
    structs = [ours[name] for name in components if name in ours]
    _, definitions = msgspec.json.schema_components(structs, ref_template=COMPONENTS + "{name}")
    requests = {name for name, cls in ours.items() if issubclass(cls, RequestStruct)}
    for name, definition in definitions.items():
        if name in requests:
            _pattern_date_times(definition)
        if name in components:
            spec = _to_spec(definition)
            assert isinstance(spec, Schema)
            components[name] = spec


def _not_null(schema: Any) -> Any:
    if isinstance(schema, Schema) and schema.one_of:
        rest = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
        if len(rest) == 1 and len(rest) < len(schema.one_of):
            return rest[0]
    return schema


def plain_optional_parameters(app: Litestar) -> None:
    """An optional query or header parameter is absent, never `null`: document it as its plain type."""
    for path_item in (app.openapi_schema.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            for parameter in (operation.parameters or []) if operation else []:
                if not isinstance(parameter, Reference) and parameter.param_in in ("query", "header"):
                    parameter.schema = _not_null(parameter.schema)


def make_exact(app: Litestar, *prefixes: str) -> None:
    for prefix in prefixes:
        document_errors(app, prefix)
    exact_component_schemas(app)
    plain_optional_parameters(app)
    fix_options_allow(app)
