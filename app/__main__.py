"""`python -m app [serve | segment ...]`: the service (the default; launchd runs it) or the CLI."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from app.api.listen import CannotListen, PortBusy, listen
from app.cli.command import build_parser
from app.config import SettingsError, get_settings
from app.config.logs import configure_logging, trim_if_file
from app.runtime.blas import restart_with_openblas_if_needed

EXIT_BAD_SETTINGS = 78  # EX_CONFIG (sysexits.h): a SEGMENT_* value is unusable; fix, then restart
EXIT_PORT_BUSY = 75  # EX_TEMPFAIL: the port is taken; launchd tries again after ThrottleInterval


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    trim_mb = getattr(args, "stderr_max_mb", None)  # only `serve` has it
    if trim_mb is not None:
        trim_if_file(sys.stderr, trim_mb * 1024 * 1024)
    try:
        settings = get_settings()
    except SettingsError as exc:  # one plain line per bad value, no traceback
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)
    if args.command == "segment" and args.server:  # a client of a running service: no MLX here
        from app.cli.command import segment_command

        sys.exit(segment_command(args, settings))
    restart_with_openblas_if_needed(settings.blas, settings.device)
    if args.command == "segment":
        from app.cli.command import segment_command

        leave(segment_command(args, settings))
    try:  # before anything is loaded: a taken port costs no read of the weights
        sockets = listen(settings.host, settings.port)
    except PortBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        leave(EXIT_PORT_BUSY)
    except CannotListen as exc:
        print(f"error: {exc}", file=sys.stderr)
        leave(EXIT_BAD_SETTINGS)
    configure_logging(settings)
    from app.api.server import serve

    serve(settings, sockets)
    leave(0)


def leave(status: int) -> NoReturn:
    """Exit with `status` once everything is written, without the interpreter's teardown.

    MLX ran on the worker thread, which has ended by now; MLX's C++ teardown at interpreter
    exit can then abort ("terminate called without an active exception", SIGABRT), turning a
    clean run into exit 134, which launchd would even take for a crash and restart.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
