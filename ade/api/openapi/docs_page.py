"""The docs page at `/schema`, working offline: Swagger UI's files come from the `swagger-ui-py` package
(Apache 2.0; installed with ADE) and are served here, at `/schema/static/…`; the page loads nothing from
anywhere else (no CDN, no font service, no online validator)."""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from typing import Any

from litestar import Request, Router, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.response import File

# The files the page uses, and their media types; nothing else of the package is served.
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
ASSETS_PATH = "/static"


def swagger_ui_dir() -> Path:
    """Where the installed `swagger-ui-py` keeps Swagger UI's dist files (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing: reinstall ADE (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


class OfflineSwaggerUI(OpenAPIRenderPlugin):
    """Swagger UI at the schema root (and `/swagger`), its assets served by the API itself."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/swagger"], favicon="", style="")
        self.base = "/schema"

    def receive_router(self, router: Router) -> None:
        self.base = router.path.rstrip("/")
        directory = swagger_ui_dir()

        @get(f"{ASSETS_PATH}/{{name:str}}", include_in_schema=False, sync_to_thread=False)
        def asset(name: str) -> File:
            if name not in ASSETS:
                raise NotFoundException(f"no asset {name!r}")
            return File(
                directory / name,
                media_type=ASSETS[name],
                content_disposition_type="inline",
                headers={"Cache-Control": "public, max-age=86400"},
            )

        router.register(asset)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        assets = f"{self.base}{ASSETS_PATH}"
        title = html.escape(str(openapi_schema.get("info", {}).get("title", "API")))
        document_url = self.get_openapi_json_route(request)
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API</title>
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <style>body {{ margin: 0 }}</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{document_url}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    }});
  </script>
</body>
</html>
""".encode()
