"""Pytest fixtures and helpers for the service tests: systemd's notify socket, SIGHUP reloads."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testkit.gateway import DaemonProcess, GatewayFiles
from testkit.waiting import wait_until


@dataclass(frozen=True, slots=True)
class Notification:
    """One sd_notify datagram as systemd would parse it, with the time it arrived."""

    at: float  # time.monotonic() when it was read
    fields: dict[str, str]


class NotifyListener:
    """A real unix datagram socket given to the daemon as ``NOTIFY_SOCKET``.

    A thread reads every datagram as it arrives and keeps it, as systemd would.
    """

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: keep the socket in a short private dir.
        self._dir = Path(tempfile.mkdtemp(prefix="eb-notify-"))
        self.path = self._dir / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.05)
        self._messages: list[Notification] = []
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path)}

    def messages(self, key: str | None = None) -> list[Notification]:
        """Everything received so far, or only the datagrams that carry ``key``."""
        with self._changed:
            return [m for m in self._messages if key is None or key in m.fields]

    def count(self, key: str) -> int:
        return len(self.messages(key))

    def wait_for(
        self, predicate: Callable[[list[Notification]], bool], what: str, timeout: float = 10.0
    ) -> list[Notification]:
        """Block until ``predicate(all messages)`` holds; fail the test at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {what} within {timeout} s; got {self._messages}")
                self._changed.wait(left)
            return list(self._messages)

    def wait_key(self, key: str, count: int = 1, timeout: float = 10.0) -> Notification:
        """The ``count``-th datagram carrying ``key`` (waiting for it if need be)."""
        self.wait_for(
            lambda ms: sum(key in m.fields for m in ms) >= count, f"{count} x {key}", timeout
        )
        return self.messages(key)[count - 1]

    def _read(self) -> None:
        while not self._stopping:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._changed:
                self._messages.append(Notification(time.monotonic(), fields))
                self._changed.notify_all()

    def close(self) -> None:
        self._stopping = True
        self._thread.join(5)
        self._sock.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)


@pytest.fixture
def notify_socket() -> Iterator[NotifyListener]:
    """systemd's side of sd_notify: give ``notify_socket.env`` to the daemon."""
    listener = NotifyListener()
    try:
        yield listener
    finally:
        listener.close()


RELOAD_OUTCOMES = ("configuration reloaded from", "reload refused")


def reload(daemon: DaemonProcess, timeout: float = 10.0) -> dict[str, Any]:
    """SIGHUP the daemon, wait until its log says the file was taken or refused; the status."""
    assert daemon.proc is not None

    def outcomes() -> int:
        log = daemon.log_text()
        return sum(log.count(line) for line in RELOAD_OUTCOMES)

    before = outcomes()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: outcomes() != before, timeout, lambda: f"a reload\n{daemon.log_text()}")
    return daemon.status()


def edit_config(files: GatewayFiles, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the gateway's config.yaml with ``change`` applied to its data."""
    data = yaml.safe_load(files.config.read_text())
    change(data)
    files.config.write_text(yaml.safe_dump(data, sort_keys=False))
