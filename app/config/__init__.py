"""The service's settings (SEGMENT_* variables) and how their values are read."""

from app.config.settings import (
    DEFAULT_MODEL,
    DEMO_MODEL,
    Settings,
    SettingsError,
    get_settings,
    settings_problems,
)
from app.config.values import keep_alive_seconds

__all__ = [
    "DEFAULT_MODEL",
    "DEMO_MODEL",
    "Settings",
    "SettingsError",
    "get_settings",
    "keep_alive_seconds",
    "settings_problems",
]
