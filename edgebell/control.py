"""The control socket protocol and its client: how ``edgebell`` commands ask the running daemon.

One request per connection: the client writes one JSON object and a newline; the
daemon answers with one JSON object per line (``learn`` keeps streaming until the
client hangs up). The daemon's end is :mod:`edgebell.control_server`. This side is
plain blocking sockets and imports nothing heavy, so ``edgebell status`` stays quick.

Retrying is safe: :func:`request` sends a fresh ``request_id`` and the moment it
will give up as ``deadline`` (``CLOCK_MONOTONIC`` seconds, one clock for every
process on the machine). The daemon does not start a command whose deadline has
passed, so a command the client gave up on does not run behind its back; a
connection lost before the answer is retried once with the same id, and the daemon
answers a repeated id with the first result (``"repeat": true``) instead of
running it again.
"""

from __future__ import annotations

import grp
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgebell.errors import ControlError, NotAnsweringError, NotRunningError

JSON = dict[str, Any]

MAX_REQUEST = 64 * 1024


def _connect(path: Path, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        s.close()
        raise NotRunningError(
            f"not running: no edgebell daemon answers on {path} "
            "(under systemd: systemctl status edgebell)"
        ) from exc
    except PermissionError as exc:
        s.close()
        raise ControlError(
            f"permission denied on {path}: run as root or as a member of group "
            f"{group_of(path)} (usermod -aG {group_of(path)} $USER, then log in again)"
        ) from exc
    except OSError as exc:
        s.close()
        raise ControlError(f"cannot reach the daemon on {path}: {exc}") from exc
    return s


def group_of(path: Path) -> str:
    try:
        return grp.getgrgid(os.stat(path).st_gid).gr_name
    except (OSError, KeyError):
        return "edgebell"  # the group the systemd unit runs the daemon with


class _ConnectionLost(ControlError):
    """The connection broke (or closed) before the answer: safe to ask again with the same id."""


def stream(path: Path, request: JSON, *, timeout: float | None = 10.0) -> Iterator[JSON]:
    """Send one request; yield each JSON line of the answer until the daemon closes."""
    with _connect(path, 5.0 if timeout is None else timeout) as s:
        s.sendall(json.dumps(request).encode() + b"\n")
        s.settimeout(timeout)
        buffer = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError as exc:
                waited = round(timeout or 0.0, 1)
                raise NotAnsweringError(
                    f"the daemon on {path} is not answering (no reply within {waited:g} s)"
                ) from exc
            except OSError as exc:
                raise _ConnectionLost(f"lost the connection to the daemon: {exc}") from exc
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise ControlError("the daemon sent an unreadable answer") from exc


def request(path: Path, message: JSON, *, timeout: float = 10.0) -> JSON:
    """Send one request and return the daemon's one answer, giving up after ``timeout``."""
    give_up = time.monotonic() + timeout
    message = {"request_id": uuid.uuid4().hex, "deadline": give_up, **message}
    for attempt in (1, 2):
        left = max(0.1, give_up - time.monotonic())
        try:
            for answer in stream(path, message, timeout=left):
                return answer
            raise _ConnectionLost("the daemon closed the connection without answering")
        except _ConnectionLost:
            if attempt == 2 or time.monotonic() >= give_up:
                raise
    raise AssertionError("unreachable")
