"""Run the service at login as a macOS LaunchAgent (`make install-agent` and friends).

    python -m scripts.launchd_agent {install,uninstall,restart,status,logs,print-plist}

The plist is rendered by scripts.agent_plist from this checkout's absolute paths and the SEGMENT_*
settings of the current environment, so `SEGMENT_PORT=8080 make install-agent` serves on 8080.
Only launchctl's modern subcommands are used (bootstrap, bootout, kickstart, print; enable to
undo a `disable`), and each failure is reported with launchctl's own words and what they
usually mean. `print-plist` works on any OS.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.api.listen import get_health, health_url  # standard library only
from scripts.agent_plist import (
    LABEL,
    ROOT,
    TEMPLATE,
    AgentPaths,
    TemplateError,
    agent_paths,
    patch_version_warning,
    saved_settings,
)
from scripts.agent_plist import render_plist as _render_plist

# Standard library only at import: `make uninstall-agent` and `make agent-status` must work
# even without .venv. Only rendering (defaults, validation) imports app.config, lazily.

__all__ = ["LABEL", "ROOT", "TEMPLATE", "AgentError", "render_plist"]

# Folders macOS privacy protection (TCC) may keep a background process out of.
PROTECTED_FOLDERS = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")
UNLOAD_WAIT_S = 35.0  # the plist's ExitTimeOut (30 s) plus a margin
LOADED_WAIT_S = 5.0  # bootstrap returned 0: launchd lists the service within this
NOT_LOADED_EXIT = 113  # what `launchctl print` returns for an unknown service
SERVICE_DISABLED = 119
LOG_TAIL_LINES = 40


class AgentError(Exception):
    """Why the agent cannot be installed or queried; the message says what to do."""


def render_plist(
    checkout: Path, home: Path, env: Mapping[str, str], template: Path = TEMPLATE
) -> bytes:
    """scripts.agent_plist.render_plist, its template problem as an AgentError."""
    try:
        return _render_plist(checkout, home, env, template)
    except TemplateError as exc:
        raise AgentError(str(exc)) from exc


# -- checks ----------------------------------------------------------------------------------
def check_platform(platform: str) -> None:
    """launchd is macOS only; elsewhere say what to use instead."""
    if platform != "darwin":
        raise AgentError(
            f"LaunchAgents are macOS only (this is {platform!r}). Run `make serve` in a "
            "terminal, or a systemd user service with the same `.venv/bin/python -m app`."
        )


def check_user(uid: int) -> None:
    """A per-user agent belongs to the user: under sudo it would land root-owned in their
    LaunchAgents (and in root's launchd domain), where it cannot run."""
    if uid == 0:
        raise AgentError(
            "Run this as yourself, not as root or with sudo: the agent is per-user "
            "(~/Library/LaunchAgents) and needs your login session."
        )


def check_ready(paths: AgentPaths, agent_env: Mapping[str, str]) -> list[str]:
    """Refuse what could only fail at every start (no venv, an invalid setting); return
    warnings for what the service waits for (weights not installed yet)."""
    from pydantic import ValidationError

    from app.config import Settings, settings_problems  # lazy: see the note on imports above

    if not os.access(paths.python, os.X_OK):
        raise AgentError(f"No virtual environment at {paths.python}: run `make install` first.")
    fields: dict[str, Any] = {
        key.removeprefix("SEGMENT_").lower(): value
        for key, value in agent_env.items()
        if key.startswith("SEGMENT_")
    }
    try:
        settings = Settings(**fields)
    except ValidationError as exc:
        raise AgentError("Invalid setting: " + "; ".join(settings_problems(exc))) from exc
    warnings = []
    if not (settings.model_path() / "config.json").is_file():
        warnings.append(
            f"model {settings.model!r} is not in {settings.model_path()} yet: the agent serves "
            "it once `make models` has put it there (until then /health says why)."
        )
    if not settings.vae_path.is_file():
        warnings.append(f"mask decoder {settings.vae_path} is not there yet: `make models`.")
    return warnings


def protected_folder(paths: AgentPaths) -> Path | None:
    """The privacy-protected folder the checkout is in, if any (agents may be denied it)."""
    for name in PROTECTED_FOLDERS:
        folder = paths.home / name
        if paths.checkout.is_relative_to(folder):
            return folder
    return None


def stale_paths(plist: Mapping[str, Any]) -> list[str]:
    """What an installed plist points at that is gone: the interpreter (a moved checkout,
    `make clean`, an upgraded pyenv/uv/Homebrew Python under the venv) or the checkout."""
    problems = []
    arguments = plist.get("ProgramArguments") or [""]
    python = Path(arguments[0])
    if not os.access(python, os.X_OK):
        why = "missing" if not python.exists() and not python.is_symlink() else "not runnable"
        if python.is_symlink() and not python.exists():
            why = f"a link to {os.readlink(python)}, which is gone"
        problems.append(
            f"the interpreter {python} is {why}: run `make install install-agent` in the "
            "checkout (after `make clean` if the Python under the venv was upgraded away)"
        )
    directory = Path(plist.get("WorkingDirectory", ""))
    if not directory.is_dir():
        problems.append(
            f"the checkout {directory} is gone (moved or deleted): run `make install-agent` "
            "from where it is now"
        )
    return problems


# -- launchctl -------------------------------------------------------------------------------
def service_target(uid: int) -> str:
    return f"gui/{uid}/{LABEL}"


def launchctl(*args: str) -> subprocess.CompletedProcess[str]:
    """One launchctl call; its exit status is the caller's to judge."""
    return subprocess.run(["launchctl", *args], capture_output=True, text=True, check=False)


def is_loaded(uid: int) -> bool:
    return launchctl("print", service_target(uid)).returncode == 0


def unload(uid: int, wait_s: float = UNLOAD_WAIT_S) -> None:
    """Boot the agent out if it is loaded; wait until launchd has really let it go."""
    launchctl("bootout", service_target(uid))  # fails (3/113) when not loaded: that is fine
    deadline = time.monotonic() + wait_s
    while is_loaded(uid):  # bootout can return while the process is still draining
        if time.monotonic() > deadline:
            raise AgentError(
                f"{LABEL} is still loaded {wait_s:g} s after bootout; "
                f"see `launchctl print {service_target(uid)}`."
            )
        time.sleep(0.5)


# What a failed `launchctl bootstrap` usually means, by its error number.
BOOTSTRAP_MEANINGS = {
    5: "usually the agent's login item is switched off (System Settings > General > Login "
    "Items > Allow in the Background: switch paligemma-segment's entry on, then install "
    "again), or the plist was refused (`plutil -lint` it)",
    37: "it is loaded already: `make restart-agent` restarts it",
    122: "the plist or a folder above it is owned by another user (written with sudo?): "
    "remove it with sudo and install again as yourself",
    125: "there is no GUI login session for this user (over SSH?): install from Terminal in "
    "your desktop session",
}


def bootstrap_error(result: subprocess.CompletedProcess[str]) -> int:
    """launchctl's error number: from its message ("Bootstrap failed: 5: ..."), else its exit."""
    match = re.search(r"failed: (\d+):", result.stderr)
    return int(match.group(1)) if match else result.returncode


def load(uid: int, plist: Path, wait_s: float = LOADED_WAIT_S) -> list[str]:
    """bootstrap into the GUI session, and check launchd really lists it; notes on the way."""
    notes = []
    boot = launchctl("bootstrap", f"gui/{uid}", str(plist))
    if boot.returncode != 0 and bootstrap_error(boot) == SERVICE_DISABLED:
        launchctl("enable", service_target(uid))  # an earlier `launchctl disable`: undo it
        notes.append("it had been disabled (`launchctl disable`); enabled it again")
        boot = launchctl("bootstrap", f"gui/{uid}", str(plist))
    if boot.returncode != 0:
        said = boot.stderr.strip() or f"exit {boot.returncode}"
        meaning = BOOTSTRAP_MEANINGS.get(bootstrap_error(boot), "see `man launchctl`")
        raise AgentError(f"launchctl bootstrap gui/{uid} {plist} failed: {said!r}; {meaning}.")
    deadline = time.monotonic() + wait_s
    while not is_loaded(uid):
        if time.monotonic() > deadline:
            raise AgentError(
                f"launchctl bootstrap reported success, but launchd does not list "
                f"{service_target(uid)}: {BOOTSTRAP_MEANINGS[5]}."
            )
        time.sleep(0.2)
    return notes


# -- commands --------------------------------------------------------------------------------
def install(checkout: Path, home: Path, env: Mapping[str, str], *, platform: str, uid: int) -> str:
    """Write the plist and (re)load it; an agent already loaded is booted out first."""
    check_platform(platform)
    check_user(uid)
    paths = agent_paths(checkout, home)
    rendered = render_plist(paths.checkout, paths.home, env)
    agent_env = plistlib.loads(rendered)["EnvironmentVariables"]
    warnings = check_ready(paths, agent_env)
    interpreter = patch_version_warning(paths.python)
    unload(uid)
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.plist.parent.mkdir(parents=True, exist_ok=True)
    partial = paths.plist.with_suffix(".plist.partial")
    partial.unlink(missing_ok=True)
    partial.touch(mode=0o600)  # EnvironmentVariables may hold SEGMENT_API_TOKEN
    partial.write_bytes(rendered)
    partial.replace(paths.plist)
    notes = load(uid, paths.plist)
    lines = [
        f"Installed {LABEL}; it starts now and at every login.",
        f"  plist:    {paths.plist}",
        f"  logs:     {paths.service_log} (`make agent-logs`)",
        f"  serves:   http://{agent_env['SEGMENT_HOST']}:{agent_env['SEGMENT_PORT']} "
        "(`make agent-status`); the model loads on the first request"
        if agent_env.get("SEGMENT_PRELOAD", "").lower() in ("false", "0", "no", "off")
        else f"  serves:   http://{agent_env['SEGMENT_HOST']}:{agent_env['SEGMENT_PORT']} "
        "(`make agent-status`)",
        "  settings: (kept in the plist; `make install-agent` again to change them)",
        *(f"    {line}" for line in saved_settings(agent_env)),
    ]
    lines += [f"  note:     {note}" for note in notes]
    lines += [f"  warning:  {warning}" for warning in [*warnings, interpreter] if warning]
    folder = protected_folder(paths)
    if folder:
        lines.append(
            f"  warning:  the checkout is in {folder}, which macOS privacy protection may keep "
            "the agent out of; if the log says 'Operation not permitted', move the checkout."
        )
    return "\n".join(lines)


def uninstall(home: Path, *, platform: str, uid: int) -> str:
    """Boot the agent out and remove its plist; nothing to do is not an error."""
    check_platform(platform)
    check_user(uid)
    plist = agent_paths(ROOT, home).plist
    unload(uid)
    existed = plist.is_file()
    plist.unlink(missing_ok=True)
    return f"Removed {plist}." if existed else f"{LABEL} was not installed; nothing to remove."


def restart(*, platform: str, uid: int) -> str:
    """Stop the running service and start it again (`kickstart -k`): after `make models`, or
    to pick up a new checkout's code."""
    check_platform(platform)
    check_user(uid)
    if not is_loaded(uid):
        raise AgentError(f"{LABEL} is not loaded: `make install-agent` installs and starts it.")
    kick = launchctl("kickstart", "-k", service_target(uid))
    if kick.returncode != 0:
        said = kick.stderr.strip() or f"exit {kick.returncode}"
        raise AgentError(f"launchctl kickstart -k {service_target(uid)} failed: {said!r}.")
    return f"Restarted {LABEL} (`make agent-status` shows when it answers)."


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a file, reading only its end."""
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - lines * 400))
        text = file.read().decode(errors="replace")
    return text.splitlines()[-lines:]


def logs(home: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of both logs: launchd's (before logging starts) and the service's own."""
    paths = agent_paths(ROOT, home)
    out = []
    for path, what in (
        (paths.launchd_log, "launchd's file: start-up errors before logging starts"),
        (paths.service_log, "the service's log, rotated by size"),
    ):
        if not path.is_file():
            out.append(f"== {path} ({what}): none yet")
            continue
        out.append(f"== {path} ({what}):")
        out += tail(path, lines) or ["(empty)"]
    out.append(f"Follow it live: tail -F {paths.service_log}")
    return "\n".join(out)


@dataclass(frozen=True)
class ServiceState:
    """What `launchctl print` says about a loaded service."""

    state: str | None
    pid: int | None
    last_exit: str | None
    last_signal: str | None = None


def parse_print(text: str) -> ServiceState:
    """The first `state`, `pid`, `last exit code` and `last terminating signal` lines of
    `launchctl print` output."""

    def field(name: str) -> str | None:
        match = re.search(rf"^\s*{name} = (.+)$", text, flags=re.M)
        return match.group(1).strip() if match else None

    pid = field("pid")
    return ServiceState(
        state=field("state"),
        pid=int(pid) if pid and pid.isdigit() else None,
        last_exit=field("last exit code"),
        last_signal=field("last terminating signal"),
    )


# What the service's exit statuses mean (app/__main__.py), and launchd's words for none.
EXIT_MEANINGS = {
    "0": "it stopped cleanly (logout, `make uninstall-agent`, SIGTERM)",
    "1": "it failed at start-up: `make agent-logs` shows why",
    "2": "it was started with arguments it does not take: `make install-agent` again",
    "75": "its port was taken by another program; launchd tries again every 30 s "
    "(`make agent-logs` names the program)",
    "78": "a SEGMENT_* setting in the plist is invalid (`make agent-logs` names it): fix it "
    "and `make install-agent` again",
    "(never exited)": "it has been running since it was loaded",
}


def explain_exit(state: ServiceState) -> str:
    """The last exit in words: a signal, or one of the service's own statuses."""
    if state.last_signal:
        return (
            f"killed by {state.last_signal} (a crash, or memory pressure): "
            "`make agent-logs` shows its last lines"
        )
    code = (state.last_exit or "").split(":")[0].strip()
    return EXIT_MEANINGS.get(code, f"exit {state.last_exit}: `make agent-logs` shows why")


def probe_health(host: str, port: str, timeout_s: float = 2.0) -> tuple[int | None, str]:
    """GET /health: (HTTP status or None, a one-line summary)."""
    url = health_url(host, port)
    try:
        code, body = get_health(url, timeout_s)
    except OSError as exc:  # urllib's URLError included
        return None, f"{url}: not answering ({getattr(exc, 'reason', exc)})"
    try:
        health = json.loads(body)
        summary = " ".join(str(health[k]) for k in ("status", "reason") if health.get(k))
        if health.get("status") == "ok" and health.get("loaded") is False:
            summary += " (model not in memory: the next request loads it)"
    except (ValueError, AttributeError):
        summary = body[:200].decode(errors="replace")
    return code, f"{url}: {code} {summary}"


def status(home: Path, *, platform: str, uid: int) -> tuple[int, str]:
    """Loaded? PID, the last exit explained, stale paths, logs, /health. 0 only when healthy."""
    check_platform(platform)
    paths = agent_paths(ROOT, home)
    lines = [f"agent:   {service_target(uid)}"]
    printed = launchctl("print", service_target(uid))
    loaded = printed.returncode == 0
    if loaded:
        s = parse_print(printed.stdout)
        lines.append(f"loaded:  yes; state {s.state}, pid {s.pid}, last exit code {s.last_exit}")
        lines.append(f"last:    {explain_exit(s)}")
    else:
        lines.append("loaded:  no (`make install-agent` to install and start it)")
    installed = paths.plist.is_file()
    lines.append(f"plist:   {paths.plist}{'' if installed else ' (not installed)'}")
    lines.append(f"logs:    {paths.service_log} (`make agent-logs`)")
    code: int | None = None
    problems: list[str] = []
    if installed:
        plist = plistlib.loads(paths.plist.read_bytes())
        problems = stale_paths(plist)
        lines += [f"problem: {problem}" for problem in problems]
        env = plist.get("EnvironmentVariables", {})
        code, summary = probe_health(
            env.get("SEGMENT_HOST", "127.0.0.1"), env.get("SEGMENT_PORT", "8000")
        )
        lines.append(f"health:  {summary}")
    return (0 if loaded and code == 200 and not problems else 1), "\n".join(lines)


COMMANDS = ("install", "uninstall", "restart", "status", "logs", "print-plist")


def main(argv: list[str] | None = None, platform: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.launchd_agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=COMMANDS)
    args = parser.parse_args(argv)
    platform = platform or sys.platform
    home, uid = Path.home(), os.getuid()
    try:
        if args.command == "print-plist":
            rendered = render_plist(ROOT, home, os.environ)
            print(rendered.decode(), end="")
            try:
                env = plistlib.loads(rendered)["EnvironmentVariables"]
                for warning in check_ready(agent_paths(ROOT, home), env):
                    print(f"note: {warning}", file=sys.stderr)
            except AgentError as exc:
                print(f"note: install would refuse: {exc}", file=sys.stderr)
            return 0
        if args.command == "install":
            print(install(ROOT, home, os.environ, platform=platform, uid=uid))
        elif args.command == "uninstall":
            print(uninstall(home, platform=platform, uid=uid))
        elif args.command == "restart":
            print(restart(platform=platform, uid=uid))
        elif args.command == "logs":
            print(logs(home))
        else:
            code, report = status(home, platform=platform, uid=uid)
            print(report)
            return code
        return 0
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
