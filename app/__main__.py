"""`python -m app`: read SEGMENT_* settings and serve (used by `make serve` and launchd)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from app.blas import MARKER, find_openblas, preload_environment
from app.config import get_settings

if TYPE_CHECKING:  # the real import waits for the BLAS decision in main()
    from app.engine import Engine

GRACEFUL_SHUTDOWN_S = 10  # in-flight requests may finish this long after SIGTERM
UVICORN_MARGIN_S = 5  # then uvicorn waits this much more for their 503s to go out


class _Server(uvicorn.Server):
    """SIGTERM (how launchd stops an agent) is a clean stop: exit 0 once drained.

    In-flight requests get GRACEFUL_SHUTDOWN_S to finish; then the engine abandons what is
    left, so those requests still get a JSON 503 before uvicorn's own deadline (a few seconds
    later) would cut them off with a bare 500.
    """

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        deadline = asyncio.get_running_loop().call_later(
            GRACEFUL_SHUTDOWN_S, self.engine.abandon_all
        )
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn re-raises a captured signal after shutting down, so the process would die
        # "by SIGTERM", which launchd's KeepAlive counts as a crash and restarts.
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def main() -> None:
    environment = preload_environment(os.environ, sys.platform, find_openblas())
    if environment is not None:  # Linux: restart once with OpenBLAS ahead of MLX's own BLAS
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.environ.get(MARKER):
        logging.getLogger("app").info("CPU BLAS: OpenBLAS preloaded from %s", os.environ[MARKER])
    from app.engine import Engine  # imports MLX: only after the BLAS decision
    from app.main import create_app

    engine = Engine(settings)
    config = uvicorn.Config(
        create_app(settings, engine),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S + UVICORN_MARGIN_S,
    )
    _Server(config, engine).run()


if __name__ == "__main__":
    main()
