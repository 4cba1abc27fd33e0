"""Where the config file, state and control socket live when the config does not say."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import platformdirs

from edgebell.errors import ConfigError

APP = "edgebell"
CONFIG_ENV = "EDGEBELL_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/edgebell/config.yaml")
SOCKET_NAME = "edgebell.sock"


def default_config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$EDGEBELL_CONFIG``, else ``/etc/edgebell/config.yaml`` if it exists, else the user's."""
    configured = environ.get(CONFIG_ENV, "")
    if configured:
        return Path(configured)
    if SYSTEM_CONFIG_PATH.exists():
        return SYSTEM_CONFIG_PATH
    return platformdirs.user_config_path(APP) / "config.yaml"


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """systemd's ``$STATE_DIRECTORY`` (its first entry), else the user's state directory."""
    first = _first_entry(environ.get("STATE_DIRECTORY", ""))
    return Path(first) if first else platformdirs.user_state_path(APP)


def default_control_socket(environ: Mapping[str, str] = os.environ) -> Path:
    """``$RUNTIME_DIRECTORY/edgebell.sock``, else in the user's runtime directory."""
    first = _first_entry(environ.get("RUNTIME_DIRECTORY", ""))
    if first:
        return Path(first) / SOCKET_NAME
    # Without $XDG_RUNTIME_DIR (sudo, cron) platformdirs warns and falls back to a private
    # directory; that fallback is what we want, so the warning is only noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            directory = platformdirs.user_runtime_path(APP)
        except PermissionError as exc:
            raise ConfigError(
                f"no safe runtime directory for the control socket ({exc}); set control_socket"
            ) from exc
    return directory / SOCKET_NAME


def _first_entry(value: str) -> str:
    # systemd joins several StateDirectory=/RuntimeDirectory= entries with colons.
    return value.split(":", 1)[0]
