"""Component schemas from msgspec itself (`msgspec.json.schema_components`), so the document states exactly
what the server validates and answers: unknown fields refused, key patterns, exclusive bounds, value
lengths. (Litestar's own generator drops some of these.)"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from litestar.openapi.spec import Discriminator, OpenAPI, OpenAPIFormat, OpenAPIType, Reference, Schema

from ade.core.models import Struct as RequestStruct

COMPONENTS = "#/components/schemas/"

_FIELD_BY_ALIAS = {f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema)}
_NESTED_ONE = {"items", "additionalProperties", "propertyNames", "not"}
_NESTED_LIST = {"anyOf", "oneOf", "allOf", "prefixItems"}
_FORMATS = {f.value for f in OpenAPIFormat}


def to_spec(node: dict[str, Any]) -> Schema | Reference:
    """A JSON Schema dict (as msgspec writes it) as Litestar's OpenAPI objects."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            value = {name: to_spec(child) for name, child in value.items()}
        elif key in _NESTED_ONE and isinstance(value, dict):
            value = to_spec(value)
        elif key in _NESTED_LIST:
            value = [to_spec(child) for child in value]
        elif key == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        elif key == "format" and value in _FORMATS:
            value = OpenAPIFormat(value)
        elif key == "discriminator":
            value = Discriminator(property_name=value["propertyName"], mapping=value.get("mapping"))
        fields[_FIELD_BY_ALIAS[key]] = value
    return Schema(**fields)


def our_structs() -> dict[str, list[type[msgspec.Struct]]]:
    """Our msgspec structs by class name (two modules may use the same name)."""
    found: dict[str, list[type[msgspec.Struct]]] = {}
    pending: list[type[msgspec.Struct]] = [msgspec.Struct]
    while pending:
        for cls in pending.pop().__subclasses__():
            pending.append(cls)
            if cls.__module__.startswith("ade."):
                found.setdefault(cls.__name__, []).append(cls)
    return found


def _structs_named(name: str, ours: dict[str, list[type[msgspec.Struct]]]) -> list[type[msgspec.Struct]]:
    """The structs a component name of Litestar's stands for: `Name`, or `module_Name` when two modules
    have a `Name`."""
    if name in ours:
        return ours[name]
    module, _, base = name.rpartition("_")
    return [cls for cls in ours.get(base, ()) if cls.__module__.rsplit(".", 1)[-1] == module]


def _short_name(name: str) -> str:
    """msgspec names a struct whose name two modules use by its full path; Litestar (and so this
    document) by its module's last part: `views_InputFile`."""
    if "." not in name:
        return name
    *modules, base = name.split(".")
    return f"{modules[-1]}_{base}"


def _rename_refs(node: Any, renamed: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENTS):
            node["$ref"] = COMPONENTS + renamed.get(
                ref.removeprefix(COMPONENTS), ref.removeprefix(COMPONENTS)
            )
        for child in node.values():
            _rename_refs(child, renamed)
    elif isinstance(node, list | tuple):
        for child in node:
            _rename_refs(child, renamed)


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


Definitions = dict[str, dict[str, Any]]
Refs = dict[Any, dict[str, Any]]  # a type's own schema (a `$ref` for a struct)


def install_components(
    document: OpenAPI, types: Iterable[Any], adjust: Callable[[Definitions, Refs], None] = lambda *_: None
) -> Refs:
    """Replace the component schemas of our structs with msgspec's, and add those of `types` (and of what
    they refer to). `adjust` may change the definitions first. Answers each type's own schema."""
    if document.components is None or document.components.schemas is None:
        raise RuntimeError("the document has no component schemas")
    components = document.components.schemas
    ours = our_structs()
    existing = [cls for name in components for cls in _structs_named(name, ours)]
    wanted = list(dict.fromkeys([*existing, *types]))
    schemas, raw = msgspec.json.schema_components(wanted, ref_template=COMPONENTS + "{name}")
    renamed = {name: _short_name(name) for name in raw}
    definitions = {renamed[name]: definition for name, definition in raw.items()}
    for name, definition in definitions.items():
        definition["title"] = name  # the same name twice would make clients' classes collide
    _rename_refs([definitions, schemas], renamed)
    refs = dict(zip(wanted, schemas, strict=True))
    adjust(definitions, refs)
    for name, definition in definitions.items():
        if any(issubclass(cls, RequestStruct) for cls in _structs_named(name, ours)):
            _pattern_date_times(definition)
        spec = to_spec(definition)
        assert isinstance(spec, Schema)
        components[name] = spec
    return refs


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENTS):
            found.add(ref.removeprefix(COMPONENTS))
        for child in node.values():
            _refs(child, found)
    elif isinstance(node, list):
        for child in node:
            _refs(child, found)


def drop_unused_components(document: OpenAPI) -> None:
    """Components nothing refers to (Litestar's own versions of structs msgspec named otherwise)."""
    components = document.components.schemas if document.components else None
    if not components:
        return
    as_dict = document.to_schema()
    used: set[str] = set()
    _refs(as_dict.get("paths", {}), used)
    pending = list(used)
    while pending:
        found: set[str] = set()
        _refs(as_dict["components"]["schemas"].get(pending.pop(), {}), found)
        pending.extend(found - used)
        used |= found
    for name in list(components):
        if name not in used:
            del components[name]


def _not_null(schema: Any) -> Any:
    if isinstance(schema, Schema) and schema.one_of:
        rest = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
        if len(rest) == 1 and len(rest) < len(schema.one_of):
            return rest[0]
    return schema


def plain_optional_parameters(document: OpenAPI) -> None:
    """An optional query or header parameter is absent, never `null`: document it as its plain type."""
    for path_item in (document.paths or {}).values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(path_item, method, None)
            for parameter in (operation.parameters or []) if operation else []:
                if not isinstance(parameter, Reference) and parameter.param_in in ("query", "header"):
                    parameter.schema = _not_null(parameter.schema)
