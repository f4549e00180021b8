"""`python -m app`: read SEGMENT_* settings and serve (used by `make serve` and launchd)."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from app.config import get_settings
from app.main import create_app

GRACEFUL_SHUTDOWN_S = 10


class _Server(uvicorn.Server):
    """SIGTERM (how launchd stops an agent) is a clean stop: exit 0 once drained.

    uvicorn re-raises a captured signal after shutting down, so the process would die "by
    SIGTERM", which launchd's KeepAlive counts as a crash and restarts.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
