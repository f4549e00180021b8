"""`/docs` (Swagger UI) and `/redoc` from files the service serves itself: they work offline.

The assets come from the fastapi-offline package. ReDoc's bundle links one image on its CDN
(the "API docs by Redocly" logo); it is pointed at the service's own icon when served, so the
page asks nothing of any other host. Both pages are our own short HTML rather than FastAPI's:
its Swagger page starts the bundle from an inline script, which `script-src 'self'` blocks;
ours starts it from static/swagger-init.js.
"""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from app.api.headers import CONTENT_SECURITY_POLICY

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/static-docs"
SWAGGER_INIT = Path(__file__).parent / "static" / "swagger-init.js"
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
FAVICON_URL = "/favicon.ico"
# Swagger UI runs under the pages' policy (the middleware sets it). ReDoc needs two more
# things, and only ReDoc gets them: styled-components writes <style> elements at run time
# (inline styles, never inline scripts), and its search index runs in a Worker made from a
# blob: URL (only this page's own scripts can mint one; without it search finds nothing).
REDOC_CONTENT_SECURITY_POLICY = (
    CONTENT_SECURITY_POLICY.replace("style-src 'self';", "style-src 'self' 'unsafe-inline';")
    + "; worker-src 'self' blob:"
)

SWAGGER_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="icon" href="{favicon}">
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <script src="{assets}/swagger-ui-bundle.js" defer></script>
  <script src="{assets}/swagger-init.js" defer></script>
</head>
<body>
  <div id="swagger-ui" data-openapi-url="{openapi}"></div>
</body>
</html>
"""
REDOC_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="icon" href="{favicon}">
  <style>body {{ margin: 0; padding: 0; }}</style>
  <script src="{assets}/redoc.standalone.js" defer></script>
</head>
<body>
  <noscript>ReDoc needs JavaScript; /openapi.json has the same description.</noscript>
  <redoc spec-url="{openapi}"></redoc>
</body>
</html>
"""


@cache
def redoc_bundle() -> bytes:
    """ReDoc's bundle with its one CDN link pointed home (read once)."""
    return (
        (ASSETS / "redoc.standalone.js")
        .read_bytes()
        .replace(REDOC_CDN_LOGO.encode(), FAVICON_URL.encode())
    )


def docs_page(template: str, title: str, openapi_url: str) -> str:
    return template.format(
        title=escape(title), favicon=FAVICON_URL, assets=ASSETS_URL, openapi=escape(openapi_url)
    )


def install_docs(app: FastAPI) -> None:
    """Call with FastAPI(docs_url=None, redoc_url=None)."""
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(docs_page(SWAGGER_HTML, f"{app.title} - Swagger UI", openapi_url))

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return HTMLResponse(
            docs_page(REDOC_HTML, f"{app.title} - ReDoc", openapi_url),
            headers={"Content-Security-Policy": REDOC_CONTENT_SECURITY_POLICY},
        )

    # Two files of our own under the assets' prefix, routed before the mount that serves the rest.
    @app.get(f"{ASSETS_URL}/swagger-init.js", include_in_schema=False)
    async def swagger_init() -> FileResponse:
        return FileResponse(SWAGGER_INIT, media_type="text/javascript")

    @app.get(f"{ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript")

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
