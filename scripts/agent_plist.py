"""The login agent's plist, rendered (pure): launchd/<label>.plist filled in by key (plistlib, no
text templating) with one checkout's absolute paths and the SEGMENT_* settings to keep.

Standard library only at import (`make uninstall-agent` and `make agent-status` work without
.venv); rendering imports app.config lazily for the settings' defaults.
"""

from __future__ import annotations

import os
import plistlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
PATH_SETTINGS = ("SEGMENT_VAE_PATH", "SEGMENT_MODELS_DIR", "SEGMENT_LOG_FILE")
# launchd's own file for stderr is not rotated: the service empties it at start past this.
LAUNCHD_LOG_MAX_MB = 1
SECRET_SETTINGS = ("SEGMENT_API_TOKEN",)
# A version with its patch number in an interpreter's path (pyenv's versions/3.12.4, uv's
# cpython-3.12.4-..., Homebrew's Cellar/python@3.12/3.12.4): gone after an upgrade.
PATCH_VERSION = re.compile(r"(?<![\d.])\d+\.\d+\.\d+")


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
    def logs(self) -> Path:
        return self.home / "Library" / "Logs" / NAME

    @property
    def service_log(self) -> Path:
        """The service's own log (SEGMENT_LOG_FILE), rotated by size."""
        return self.logs / "service.log"

    @property
    def launchd_log(self) -> Path:
        """launchd's StandardOutPath/StandardErrorPath: what comes before logging starts."""
        return self.logs / "launchd.log"


def agent_paths(checkout: Path, home: Path) -> AgentPaths:
    """Absolute paths: launchd has no shell, no PATH and no working directory of yours."""
    return AgentPaths(checkout=checkout.resolve(), home=home.absolute())


def _absolute(value: str, checkout: Path, home: Path) -> str:
    """A path setting as launchd must see it: `~` is `home`, relative is from the checkout."""
    path = home / value[2:] if value == "~" or value.startswith("~/") else Path(value)
    return os.path.normpath(path if path.is_absolute() else checkout / path)


def agent_environment(checkout: Path, home: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The plist's EnvironmentVariables: every SEGMENT_* in `env`, the core ones defaulted, and
    the agent's own defaults: its rotating log, and loading on the first request."""
    from app.config import DEMO_MODEL, Settings  # lazy: see the module's note on imports
    from app.config.settings import DEMO_DIR_NAME, VAE_FILE

    demo_vae = f"{DEMO_DIR_NAME}/{VAE_FILE}"

    defaults = {f"SEGMENT_{n.upper()}": str(f.default) for n, f in Settings.model_fields.items()}
    out = {key: value for key, value in env.items() if key.startswith("SEGMENT_")}
    # The paths' defaults are derived at start-up: written out here for this checkout.
    out.setdefault("SEGMENT_MODELS_DIR", "models")
    if out.get("SEGMENT_MODEL") == DEMO_MODEL:
        out.setdefault("SEGMENT_VAE_PATH", str(Path(out["SEGMENT_MODELS_DIR"]) / demo_vae))
    out.setdefault("SEGMENT_VAE_PATH", str(Path(out["SEGMENT_MODELS_DIR"]) / "vae-oid.npz"))
    for key in ALWAYS_SET:
        out.setdefault(key, defaults[key])
    out.setdefault("SEGMENT_LOG_FILE", str(agent_paths(checkout, home).service_log))
    out.setdefault("SEGMENT_PRELOAD", "false")  # nobody may ask all day: load on demand
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


class TemplateError(Exception):
    """The template has a placeholder rendering does not fill."""


def render_plist(
    checkout: Path, home: Path, env: Mapping[str, str], template: Path = TEMPLATE
) -> bytes:
    """The LaunchAgent for this checkout: the template with its placeholders filled by key."""
    paths = agent_paths(checkout, home)
    with template.open("rb") as f:
        plist: dict[str, Any] = plistlib.load(f)
    plist["ProgramArguments"] = [
        str(paths.python),
        "-m",
        "app",
        "serve",
        "--stderr-max-mb",
        str(LAUNCHD_LOG_MAX_MB),
    ]
    plist["WorkingDirectory"] = str(paths.checkout)
    plist["StandardOutPath"] = plist["StandardErrorPath"] = str(paths.launchd_log)
    plist["EnvironmentVariables"] = {
        **agent_environment(paths.checkout, paths.home, env),
        **plist.get("EnvironmentVariables", {}),
    }
    left = re.findall(r"@[A-Z_]+@", repr(plist))
    if left:  # the template gained a placeholder this function does not know
        raise TemplateError(f"{template} has unfilled placeholders: {', '.join(left)}")
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML)


def saved_settings(agent_env: Mapping[str, str]) -> list[str]:
    """`NAME=value` per setting the plist keeps, secrets masked: what install shows."""
    return [
        f"{key}={'(hidden)' if key in SECRET_SETTINGS else value}"
        for key, value in sorted(agent_env.items())
        if key.startswith("SEGMENT_") or key == "HF_HOME"
    ]


def interpreter_paths(python: Path) -> list[str]:
    """Where the venv's python really lives: its symlink's target (one step, as the venv
    recorded it) and pyvenv.cfg's `home`."""
    found = []
    if python.is_symlink():
        found.append(os.readlink(python))
    config = python.parent.parent / "pyvenv.cfg"
    if config.is_file():
        for line in config.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                found.append(value.strip())
    return found


def patch_version_warning(python: Path) -> str | None:
    """A warning when the venv's interpreter lives under a path naming a patch version."""
    for path in interpreter_paths(python):
        match = PATCH_VERSION.search(path)
        if match:
            return (
                f"the venv's Python lives in {path}, a path naming version {match.group()}: "
                "when that version is removed (pyenv/uv/Homebrew upgrade), the agent stops "
                "starting. Then run `make clean install install-agent` again, or rebuild the "
                "venv with a stable interpreter path (e.g. PYTHON=/opt/homebrew/bin/python3.12)."
            )
    return None
