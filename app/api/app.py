"""The HTTP service: `create_app` puts the routes, the guards, the pages and the error handlers
together and starts the worker in its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.guards import AccessGuard, BodyLimit, host_name, is_loopback
from app.api.headers import install_headers
from app.api.playground import install_playground
from app.api.routes import api_routes
from app.config import Settings, get_settings
from app.runtime.worker import Worker

log = logging.getLogger("app")

# The whole body may carry one maximal image plus multipart boundaries and small text fields.
FORM_OVERHEAD_BYTES = 64 * 1024


def _version() -> str:
    try:
        return version("paligemma-segment")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "0.0.0+local"


def create_app(settings: Settings | None = None, worker: Worker | None = None) -> FastAPI:
    """The service. Tests pass their own settings and worker; `python -m app` uses the defaults."""
    settings = settings or get_settings()
    if worker is None:
        from app.runtime.pool import create_worker  # imports MLX: only when serving for real

        worker = create_worker(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not is_loopback(host_name(settings.host)) and settings.api_token is None:
            log.warning(
                "listening on %s without SEGMENT_API_TOKEN: anyone who can reach this address "
                "can use the service",
                settings.host,
            )
        worker.start()  # load in the background: /health answers 503 "loading" meanwhile
        yield
        await worker.close()

    app = FastAPI(
        title="PaliGemma segmentation",
        version=_version(),
        summary="Text-prompted segmentation with PaliGemma 2 mix on MLX, served locally.",
        lifespan=lifespan,
        docs_url=None,  # app.api.docs serves both from local files
        redoc_url=None,
    )
    install_error_handlers(app)
    install_docs(app)
    install_playground(app, seed_welcome=settings.compat == "seed")
    # Added last = runs first: every answer gets its id and headers, CORS answers preflights,
    # the guard refuses strangers, then the body limit counts bytes as they stream in (before
    # the multipart parser spools them).
    app.add_middleware(
        BodyLimit,
        # A JSON body carries the image in base64: 4/3 of its bytes.
        max_body_bytes=settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(AccessGuard, settings=settings)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    install_headers(app)  # last added = outermost: the guards' refusals get the headers too
    app.include_router(api_routes(settings, worker, app.version))
    return app
