"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING and RELOADING datagrams.

Twenty lines of socket code do what the protocol needs; a library would add a
dependency for nothing. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends ``KEY=value`` datagrams to the socket systemd gave us."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self._address = address or None
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        # One assignment per line: a value with a newline would smuggle in another one.
        message = "\n".join(f"{k}={' '.join(v.splitlines())}" for k, v in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never worth crashing for
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str = "stopping") -> None:
        self.send(STOPPING="1", STATUS=status)

    def reloading(self, monotonic_usec: int, status: str = "reloading the configuration") -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(monotonic_usec), STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WatchdogSec=``), or None when not wanted."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
