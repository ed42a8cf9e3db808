"""The web console: a static page (plain HTML, ES modules, CSS; no build step) served at `/`.

The page and its files are public (`PUBLIC_PATHS` in `ade.api.auth`); everything it shows comes from the
authenticated API, with the key the user typed into it.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
STATIC_PATH = "/static"

# Only this origin's own files and API: no inline script, no CDN, nothing framing the page.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Revalidate every time: a new ADE version's files are picked up at once (Last-Modified answers 304).
NO_CACHE = CacheControlHeader(no_cache=True)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    NO_CACHE.HEADER_NAME: NO_CACHE.to_header(),
}


@get("/", include_in_schema=False, media_type=MediaType.HTML, sync_to_thread=False)
def console_index() -> Response[bytes]:
    """The console's single page (its routes are `#/…` fragments)."""
    return Response((WEB_DIR / "index.html").read_bytes(), media_type=MediaType.HTML, headers=PAGE_HEADERS)


static_files = create_static_files_router(
    path=STATIC_PATH,
    directories=[STATIC_DIR],
    name="console-static",
    cache_control=NO_CACHE,
    include_in_schema=False,
)

route_handlers: list[ControllerRouterHandler] = [console_index, static_files]
