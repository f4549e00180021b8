"""`python -m app serve`: uvicorn around the app, with the clean SIGTERM stop launchd expects."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from types import FrameType

import uvicorn

from app.config import Settings
from app.runtime.blas import MARKER
from app.runtime.worker import Worker

GRACEFUL_SHUTDOWN_S = 10  # in-flight requests may finish this long after SIGTERM
UVICORN_MARGIN_S = 5  # then uvicorn waits this much more for their 503s to go out


class _Server(uvicorn.Server):
    """SIGTERM (how launchd stops an agent) is a clean stop: exit 0 once drained.

    In-flight requests get GRACEFUL_SHUTDOWN_S to finish; then the worker abandons what is
    left, so those requests still get a JSON 503 before uvicorn's own deadline (a few seconds
    later) would cut them off with a bare 500.
    """

    def __init__(self, config: uvicorn.Config, worker: Worker) -> None:
        super().__init__(config)
        self.worker = worker

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = asyncio.get_running_loop().call_later(
            GRACEFUL_SHUTDOWN_S, self.worker.abandon_all
        )
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit and sockets:  # uvicorn names no address for given sockets
            host, port = sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            logging.getLogger("app").info(
                "serving on http://%s:%d (Ctrl-C or SIGTERM to stop)", shown, port
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a captured signal after shutting down, so the process would die
        # "by SIGTERM", which launchd's KeepAlive counts as a crash and restarts.
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def serve(settings: Settings, sockets: list[socket.socket]) -> None:
    """Run the service on `sockets` (app.api.listen, bound first) until SIGTERM or Ctrl-C."""
    if os.environ.get(MARKER):
        logging.getLogger("app").info("CPU BLAS: OpenBLAS preloaded from %s", os.environ[MARKER])
    from app.api.app import create_app
    from app.runtime.pool import create_worker  # imports MLX: only after the BLAS decision

    worker = create_worker(settings)
    config = uvicorn.Config(
        create_app(settings, worker),
        host=settings.host,
        port=settings.port,
        log_config=None,  # app.config.logs set up the process's one handler
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S + UVICORN_MARGIN_S,
    )
    _Server(config, worker).run(sockets=sockets)
