"""`GET /`: the playground page for browsers, a JSON welcome for every other client.

The page is plain files in app/api/static (HTML, CSS, small JavaScript modules): no build step, no
CDN, so it works with no network at all. app/api/headers.py gives it (and every other page) a
Content-Security-Policy that lets it load and call nothing but this service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# What the service this one replaces answered GET / with, word for word (SEGMENT_COMPAT=seed).
SEED_WELCOME = {"message": "Welcome to the PaliGemma Segmentation API!"}


def wants_html(request: Request) -> bool:
    """Browsers ask for text/html first; curl, scripts and apps send */* or JSON."""
    return "text/html" in request.headers.get("accept", "")


def install_playground(app: FastAPI, *, seed_welcome: bool = False) -> None:
    """The page and its files; `seed_welcome` answers API clients as the old service did."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> Response:
        """The playground in a browser; a short JSON description of the service otherwise."""
        if wants_html(request):
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
        return JSONResponse(SEED_WELCOME if seed_welcome else welcome(app))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.png", media_type="image/png")


def welcome(app: FastAPI) -> dict[str, Any]:
    return {
        "message": f"Welcome to the {app.title} service: POST an image and a prompt to /segment.",
        "version": app.version,
        "segment": "/segment",
        "health": "/health",
        "docs": "/docs",
        "redoc": "/redoc",
        "playground": "/ (open it in a browser)",
    }
