"""What the MQTT links (the gateway's to the cloud and to the home broker, the registry's) share.

Each keeps its own reconnect loop and session; these are the pieces that are the
same to the letter: the part of an aiomqtt client a link uses, the socket and
keepalive options of a connection, how the link's task is stopped, and how a lost
connection is told in status and logs.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Protocol

from edgebell.errors import EdgebellError


class MqttMessage(Protocol):
    """A received message, as aiomqtt gives it."""

    @property
    def topic(self) -> Any: ...  # aiomqtt's Topic; str() is its name

    @property
    def payload(self) -> Any: ...

    @property
    def retain(self) -> bool: ...


class MqttSession(Protocol):
    """The part of ``aiomqtt.Client`` every link uses; each adds the ``subscribe`` it calls."""

    async def publish(
        self, topic: str, /, payload: bytes, qos: int = 0, retain: bool = False
    ) -> None: ...

    @property
    def messages(self) -> AsyncIterator[MqttMessage]: ...


# A ring is one small packet: send it now, not after the previous one's ACK (Nagle).
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def tls_context(
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    *,
    section: str,
    error: type[EdgebellError],
) -> ssl.SSLContext:
    """Verified TLS to a broker: its CA (else the system's), host name checked, our cert if set.

    A file that cannot be loaded is ``error``, naming ``section`` and every file given.
    """
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(f) for f in (ca_file, cert_file, key_file) if f is not None)
        raise error(f"cannot load the {section} TLS files ({files}): {exc}") from exc
    return context


def keepalive_seconds(keepalive: float) -> int:
    """MQTT's keepalive is whole seconds, and 0 would turn it off."""
    return max(1, math.ceil(keepalive))


async def stop_task(
    task: asyncio.Task[None] | None,
    timeout: float,  # noqa: ASYNC109 - a grace period
    others: Iterable[asyncio.Future[Any]] = (),
) -> None:
    """Give the link's task ``timeout`` to end by itself (its goodbye), then cancel it.

    ``others`` (tasks the link started) are awaited with it, as they are by then.
    """
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        task.cancel()
    await asyncio.gather(task, *others, return_exceptions=True)


def describe(error: BaseException | None) -> str:
    """The text of a lost connection for ``last_error`` and the log line."""
    if error is None:
        return "disconnected"
    # aiomqtt's "Disconnected during message iteration" has the reason as its cause.
    cause = error.__cause__
    return f"{error}: {cause}" if cause is not None and str(cause) else str(error) or repr(error)
