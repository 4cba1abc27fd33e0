"""SIGHUP: which settings of a new configuration a running daemon takes, and which need a restart.

A reload must never drop the warm APNs connection, the serial port or the control
socket, so only settings that live above them change in place: buttons and their
debounce and cooldown, the static tokens, what notifications say and how long they
live, the default APNs environment, the log level and the Home Assistant section
(its own connection, apart from the rest). Everything else is reported
as waiting for a restart.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from edgebell.config import Config


def adopt(running: Config, new: Config) -> Config:
    """``running`` with every setting a reload can apply taken from ``new``."""
    return dataclasses.replace(
        running,
        buttons=new.buttons,
        radio=dataclasses.replace(
            running.radio, debounce=new.radio.debounce, cooldown=new.radio.cooldown
        ),
        apns=dataclasses.replace(
            running.apns,
            environment=new.apns.environment,
            expiration=new.apns.expiration,
            notification=new.apns.notification,
        ),
        tokens=new.tokens,
        log_level=new.log_level,
        home_assistant=new.home_assistant,  # its link reconnects by itself when it must
        lines=new.lines,  # error messages point into the file as it is now
    )


def differences(old: Config, new: Config) -> list[str]:
    """The key paths (``radio.port``, ``apns.auth``) whose values differ, in file order."""
    return _diff(old, new, "")


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if not (type(old) is type(new) and dataclasses.is_dataclass(old)):
        # A leaf, a list (buttons, tokens: naming the list says enough) or a switch of
        # kind (token to certificate auth, cloud added): name the key as a whole.
        return [] if old == new else [prefix.rstrip(".")]
    changed: list[str] = []
    for f in dataclasses.fields(old):
        if f.name in ("source", "lines"):
            continue
        changed += _diff(getattr(old, f.name), getattr(new, f.name), f"{prefix}{f.name}.")
    return changed
