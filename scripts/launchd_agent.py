"""Run the service at login as a macOS LaunchAgent (`make install-agent` and friends).

    python -m scripts.launchd_agent {install,uninstall,status,print-plist}

The plist is launchd/<label>.plist filled in by key (plistlib, no text templating) with this
checkout's absolute paths and the SEGMENT_* settings of the current environment, so
`SEGMENT_PORT=8080 make install-agent` serves on 8080. `print-plist` works on any OS.
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
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Standard library only at import: `make uninstall-agent` and `make agent-status` must work
# even without .venv. Only rendering (defaults, validation) imports app.config, lazily.

LABEL = "local.paligemma-segment.server"
NAME = "paligemma-segment"  # ~/Library/Logs/<NAME>/
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "launchd" / f"{LABEL}.plist"
# Always written (so they can be edited in the plist), from the environment or the defaults.
ALWAYS_SET = (
    "SEGMENT_MODEL",
    "SEGMENT_VAE_PATH",
    "SEGMENT_MODELS_DIR",
    "SEGMENT_HOST",
    "SEGMENT_PORT",
)
PATH_SETTINGS = ("SEGMENT_VAE_PATH", "SEGMENT_MODELS_DIR")
# Folders macOS privacy protection (TCC) may keep a background process out of.
PROTECTED_FOLDERS = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")
UNLOAD_WAIT_S = 35.0  # the plist's ExitTimeOut (30 s) plus a margin
NOT_LOADED_EXIT = 113  # what `launchctl print` returns for an unknown service


class AgentError(Exception):
    """Why the agent cannot be installed or queried; the message says what to do."""


@dataclass(frozen=True)
class AgentPaths:
    """Where the agent's pieces live for one checkout and one user."""

    checkout: Path
    home: Path

    @property
    def python(self) -> Path:
        # Not resolved: the venv's own python (a symlink) is what makes the venv take effect.
        return self.checkout / ".venv" / "bin" / "python"

    @property
    def plist(self) -> Path:
        return self.home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    @property
    def log(self) -> Path:
        return self.home / "Library" / "Logs" / NAME / "server.log"


def agent_paths(checkout: Path, home: Path) -> AgentPaths:
    """Absolute paths: launchd has no shell, no PATH and no working directory of yours."""
    return AgentPaths(checkout=checkout.resolve(), home=home.absolute())


# -- rendering (pure) ------------------------------------------------------------------------
def _absolute(value: str, checkout: Path, home: Path) -> str:
    """A path setting as launchd must see it: `~` is `home`, relative is from the checkout."""
    path = home / value[2:] if value == "~" or value.startswith("~/") else Path(value)
    return os.path.normpath(path if path.is_absolute() else checkout / path)


def agent_environment(checkout: Path, home: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The plist's EnvironmentVariables: every SEGMENT_* in `env`, the core ones defaulted."""
    from app.config import Settings  # lazy: see the note on imports above

    defaults = {f"SEGMENT_{n.upper()}": str(f.default) for n, f in Settings.model_fields.items()}
    out = {key: value for key, value in env.items() if key.startswith("SEGMENT_")}
    for key in ALWAYS_SET:
        out.setdefault(key, defaults[key])
    for key in PATH_SETTINGS:
        out[key] = _absolute(out[key], checkout, home)
    local_model = Path(_absolute(out["SEGMENT_MODEL"], checkout, home))
    if local_model.is_dir():  # a checkpoint directory, not a Hub id
        out["SEGMENT_MODEL"] = str(local_model)
    hf_home = env.get("HF_HOME")
    out["HF_HOME"] = (
        _absolute(hf_home, checkout, home) if hf_home else str(home / ".cache/huggingface")
    )
    return out


def render_plist(
    checkout: Path, home: Path, env: Mapping[str, str], template: Path = TEMPLATE
) -> bytes:
    """The LaunchAgent for this checkout: the template with its placeholders filled by key."""
    paths = agent_paths(checkout, home)
    with template.open("rb") as f:
        plist: dict[str, Any] = plistlib.load(f)
    plist["ProgramArguments"] = [str(paths.python), "-m", "app"]
    plist["WorkingDirectory"] = str(paths.checkout)
    plist["StandardOutPath"] = plist["StandardErrorPath"] = str(paths.log)
    plist["EnvironmentVariables"] = {
        **agent_environment(paths.checkout, paths.home, env),
        **plist.get("EnvironmentVariables", {}),
    }
    left = re.findall(r"@[A-Z_]+@", repr(plist))
    if left:  # the template gained a placeholder this function does not know
        raise AgentError(f"{template} has unfilled placeholders: {', '.join(left)}")
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML)


# -- checks ----------------------------------------------------------------------------------
def check_platform(platform: str) -> None:
    """launchd is macOS only; elsewhere say what to use instead."""
    if platform != "darwin":
        raise AgentError(
            f"LaunchAgents are macOS only (this is {platform!r}). Run `make serve` in a "
            "terminal, or a systemd user service with the same `.venv/bin/python -m app`."
        )


def check_ready(paths: AgentPaths, agent_env: Mapping[str, str]) -> None:
    """Refuse to install an agent that could only fail at login: venv, settings, weights."""
    from app.config import Settings  # lazy: see the note on imports above

    if not os.access(paths.python, os.X_OK):
        raise AgentError(f"No virtual environment at {paths.python}: run `make serve` once.")
    fields: dict[str, Any] = {
        key.removeprefix("SEGMENT_").lower(): value
        for key, value in agent_env.items()
        if key.startswith("SEGMENT_")
    }
    try:
        settings = Settings(**fields)
    except ValueError as exc:  # pydantic's ValidationError: a SEGMENT_* value is invalid
        raise AgentError(f"Invalid setting in the environment: {exc}") from exc
    if not (settings.model_path() / "config.json").is_file():
        raise AgentError(
            f"Model {settings.model!r} not found in {settings.model_path()}: run `make models` "
            "first (or set SEGMENT_MODEL to a local checkpoint directory)."
        )
    if not settings.vae_path.is_file():
        raise AgentError(f"Mask decoder {settings.vae_path} not found: run `make models` first.")


def protected_folder(paths: AgentPaths) -> Path | None:
    """The privacy-protected folder the checkout is in, if any (agents may be denied it)."""
    for name in PROTECTED_FOLDERS:
        folder = paths.home / name
        if paths.checkout.is_relative_to(folder):
            return folder
    return None


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


def load(uid: int, plist: Path) -> None:
    """bootstrap into the GUI session; `load -w` where bootstrap does not exist (old macOS)."""
    launchctl("enable", service_target(uid))  # undo an earlier `disable`/`unload -w`
    boot = launchctl("bootstrap", f"gui/{uid}", str(plist))
    if boot.returncode == 0:
        return
    legacy = launchctl("load", "-w", str(plist))
    if legacy.returncode != 0:
        raise AgentError(
            f"launchctl could not load {plist}: bootstrap said {boot.stderr.strip()!r} "
            f"(exit {boot.returncode}), load -w said {legacy.stderr.strip()!r}."
        )


# -- commands --------------------------------------------------------------------------------
def install(checkout: Path, home: Path, env: Mapping[str, str], *, platform: str, uid: int) -> str:
    """Write the plist and (re)load it; an agent already loaded is booted out first."""
    check_platform(platform)
    paths = agent_paths(checkout, home)
    rendered = render_plist(paths.checkout, paths.home, env)
    agent_env = plistlib.loads(rendered)["EnvironmentVariables"]
    check_ready(paths, agent_env)
    unload(uid)
    paths.log.parent.mkdir(parents=True, exist_ok=True)
    paths.plist.parent.mkdir(parents=True, exist_ok=True)
    partial = paths.plist.with_suffix(".plist.partial")
    partial.unlink(missing_ok=True)
    partial.touch(mode=0o600)  # EnvironmentVariables may hold SEGMENT_API_TOKEN
    partial.write_bytes(rendered)
    partial.replace(paths.plist)
    load(uid, paths.plist)
    lines = [
        f"Installed {LABEL}; it starts now and at every login.",
        f"  plist:  {paths.plist}",
        f"  logs:   {paths.log}  (tail -f it)",
        f"  serves: http://{agent_env['SEGMENT_HOST']}:{agent_env['SEGMENT_PORT']} "
        "once /health says ok (`make agent-status`)",
    ]
    folder = protected_folder(paths)
    if folder:
        lines.append(
            f"  note:   the checkout is in {folder}, which macOS privacy protection may keep the "
            "agent out of; if the log says 'Operation not permitted', move the checkout."
        )
    return "\n".join(lines)


def uninstall(home: Path, *, platform: str, uid: int) -> str:
    """Boot the agent out and remove its plist; nothing to do is not an error."""
    check_platform(platform)
    plist = agent_paths(ROOT, home).plist
    unload(uid)
    existed = plist.is_file()
    plist.unlink(missing_ok=True)
    return f"Removed {plist}." if existed else f"{LABEL} was not installed; nothing to remove."


@dataclass(frozen=True)
class ServiceState:
    """What `launchctl print` says about a loaded service."""

    state: str | None
    pid: int | None
    last_exit: str | None


def parse_print(text: str) -> ServiceState:
    """The first `state`, `pid` and `last exit code` lines of `launchctl print` output."""

    def field(name: str) -> str | None:
        match = re.search(rf"^\s*{name} = (.+)$", text, flags=re.M)
        return match.group(1).strip() if match else None

    pid = field("pid")
    return ServiceState(
        state=field("state"),
        pid=int(pid) if pid and pid.isdigit() else None,
        last_exit=field("last exit code"),
    )


def probe_health(host: str, port: str, timeout_s: float = 2.0) -> tuple[int | None, str]:
    """GET /health: (HTTP status or None, a one-line summary)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind: ask loopback
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as exc:  # 503 while loading or failed: the body says why
        code, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return None, f"{url}: not answering ({getattr(exc, 'reason', exc)})"
    try:
        health = json.loads(body)
        summary = " ".join(str(health[k]) for k in ("status", "reason") if health.get(k))
    except (ValueError, AttributeError):
        summary = body[:200].decode(errors="replace")
    return code, f"{url}: {code} {summary}"


def status(home: Path, *, platform: str, uid: int) -> tuple[int, str]:
    """Loaded? PID, last exit status, log path, /health. Exit 0 only when healthy."""
    check_platform(platform)
    paths = agent_paths(ROOT, home)
    lines = [f"agent:   {service_target(uid)}"]
    printed = launchctl("print", service_target(uid))
    loaded = printed.returncode == 0
    if loaded:
        s = parse_print(printed.stdout)
        lines.append(f"loaded:  yes; state {s.state}, pid {s.pid}, last exit code {s.last_exit}")
    else:
        lines.append("loaded:  no (`make install-agent` to install and start it)")
    installed = paths.plist.is_file()
    lines.append(f"plist:   {paths.plist}{'' if installed else ' (not installed)'}")
    lines.append(f"logs:    {paths.log}")
    code: int | None = None
    if installed:
        env = plistlib.loads(paths.plist.read_bytes()).get("EnvironmentVariables", {})
        code, summary = probe_health(
            env.get("SEGMENT_HOST", "127.0.0.1"), env.get("SEGMENT_PORT", "8000")
        )
        lines.append(f"health:  {summary}")
    return (0 if loaded and code == 200 else 1), "\n".join(lines)


def main(argv: list[str] | None = None, platform: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.launchd_agent", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["install", "uninstall", "status", "print-plist"])
    args = parser.parse_args(argv)
    platform = platform or sys.platform
    home, uid = Path.home(), os.getuid()
    try:
        if args.command == "print-plist":
            rendered = render_plist(ROOT, home, os.environ)
            print(rendered.decode(), end="")
            try:
                check_ready(
                    agent_paths(ROOT, home), plistlib.loads(rendered)["EnvironmentVariables"]
                )
            except AgentError as exc:
                print(f"note: install would refuse: {exc}", file=sys.stderr)
            return 0
        if args.command == "install":
            print(install(ROOT, home, os.environ, platform=platform, uid=uid))
            return 0
        if args.command == "uninstall":
            print(uninstall(home, platform=platform, uid=uid))
            return 0
        code, report = status(home, platform=platform, uid=uid)
        print(report)
        return code
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
