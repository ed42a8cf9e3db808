"""The OpenAPI document, made to tell the whole truth (DESIGN §5), and the docs page that shows it offline.

- `schemas`: component schemas from msgspec, exactly what the server validates and answers.
- `events`: the event envelope as one variant per catalog entry; the SSE frames that carry events.
- `responses`: every status and media type each operation answers, declared beside its handler
  (`opt=documented(...)`), and the errors each kind of operation can answer, in the one error shape.
- `docs_page`: Swagger UI at `/schema`, its files served by the API (no CDN).

Optional query and header parameters are documented as their plain type (they are absent, not null).
Litestar builds a path's automatic OPTIONS handler from the first handler registered for that path, so its
`Allow` header misses methods added later; each one is pointed at its final route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from ade.api.openapi.docs_page import OfflineSwaggerUI
from ade.api.openapi.events import EVENT_TYPES, NDJSON_DESCRIPTION, SSE_SCHEMA, event_variants
from ade.api.openapi.responses import (
    BINARY,
    JSON,
    NDJSON,
    SSE,
    TEXT,
    Answer,
    ErrorBody,
    apply_documentation,
    document_errors,
    documented,
    schema_types,
)
from ade.api.openapi.schemas import (
    drop_unused_components,
    install_components,
    plain_optional_parameters,
)

__all__ = [
    "BINARY",
    "JSON",
    "NDJSON",
    "NDJSON_DESCRIPTION",
    "SSE",
    "SSE_SCHEMA",
    "TEXT",
    "Answer",
    "ErrorBody",
    "OfflineSwaggerUI",
    "documented",
    "make_exact",
    "operation_id",
]


def operation_id(handler: HTTPRouteHandler, _method: str, _components: list[Any]) -> str:
    """`<resource>_<handler>` (`run_create`, `run_view_events`): unique, and short names for the functions
    of a generated client."""
    owner, _, name = handler.fn.__qualname__.rpartition(".")
    resource = re.sub(r"(?<!^)(?=[A-Z])", "_", owner.removesuffix("Controller")).lower()
    return f"{resource}_{name}" if resource else name


def fix_options_allow(app: Litestar) -> None:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.handler_name == "options_handler":
                for cell in handler.fn.__closure__ or ():
                    if isinstance(cell.cell_contents, HTTPRoute):
                        cell.cell_contents = route


def make_exact(app: Litestar, public_paths: Iterable[str]) -> None:
    """Post-process the app's document (before it is first served)."""
    fix_options_allow(app)
    document = app.openapi_schema
    schema_of = install_components(document, [*EVENT_TYPES, *schema_types(app)], event_variants)
    apply_documentation(app, document, schema_of)
    document_errors(app, document, public_paths)
    plain_optional_parameters(document)
    drop_unused_components(document)
