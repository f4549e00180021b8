"""Where the service's log lines go: stderr, or (SEGMENT_LOG_FILE, as the login agent sets it)
a file that rotates by size, so a service left running for months holds a bounded log."""

from __future__ import annotations

import logging
import os
import stat
import sys
from logging.handlers import RotatingFileHandler
from typing import TextIO

from app.config.settings import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MB = 1024 * 1024


def configure_logging(settings: Settings) -> None:
    """One handler on the root logger for the whole process, uvicorn's loggers included (the
    server is told not to install its own)."""
    handler = _file_handler(settings) if settings.log_file is not None else None
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler or logging.StreamHandler())
    for each in root.handlers:
        each.setFormatter(logging.Formatter(FORMAT))
    root.setLevel(settings.log_level.upper())


def _file_handler(settings: Settings) -> RotatingFileHandler | None:
    assert settings.log_file is not None
    path = settings.log_file.expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return RotatingFileHandler(
            path,
            maxBytes=settings.log_max_mb * MB,
            backupCount=settings.log_backups,
            encoding="utf-8",
        )
    except OSError as exc:  # the service matters more than its log: say so, log to stderr
        print(f"warning: cannot log to {path} ({exc}); logging to stderr", file=sys.stderr)
        return None


def trim_if_file(stream: TextIO, max_bytes: int) -> bool:
    """Empty `stream` when it is a regular file past `max_bytes`; True if it was.

    launchd appends the agent's stderr to a file nothing rotates; what reaches it comes before
    logging starts (a bad setting, a taken port), once per launchd retry, so it is kept small
    at each start instead.
    """
    try:
        fd = stream.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError):  # not a real file (pytest's capture, a closed stream)
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size <= max_bytes:
        return False
    stream.flush()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)  # a stream opened without O_APPEND writes from 0 again
    print(f"(earlier output, {info.st_size / MB:.1f} MB, removed at start-up)", file=stream)
    return True
