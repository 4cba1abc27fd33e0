"""What the MQTT stand-ins share (paho in a thread): connect, subscribe again, record.

A peer subscribes its topics after every connect (paho reconnects by itself after
a broker restart), records every message with its arrival time, and wakes the
threads that wait on its condition. Subclasses set up TLS or a password on
``self._client`` and act on what arrives.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Received:
    """One message the peer received; ``at_ns`` is ``time.monotonic_ns()`` on arrival."""

    topic: str
    payload: bytes
    retain: bool
    at_ns: int

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttPeer:
    """A paho client that subscribes ``topics`` (QoS 1) on every connect and records messages."""

    # For the errors of wait_subscribed: who was refused, who did not come in time.
    refused = "broker refused the peer"
    late = "the peer did not connect and subscribe in time"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topics: Sequence[str],
        client_id: str,
        clean_session: bool,
    ) -> None:
        self._host = host
        self._port = port
        self._topics = tuple(topics)
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._connected = False
        self._subscribed = False
        self.connects = 0
        self._connect_error: str | None = None
        self._pending_sub: int | None = None
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self, timeout: float = TIMEOUT) -> Self:
        """Connect and return once the subscriptions are acknowledged."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        try:
            self.wait_subscribed(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_subscribed(self, timeout: float = TIMEOUT, connects: int = 1) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    (self._subscribed and self.connects >= connects)
                    or self._connect_error is not None
                ),
                timeout,
            )
            if self._connect_error is not None:
                raise ConnectionError(f"{self.refused}: {self._connect_error}")
            if not ok:
                raise TimeoutError(self.late)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what arrived -------------------------------------------------------------------

    def messages(self, topic: str | None = None) -> list[Received]:
        """A copy of what arrived so far (on ``topic`` only, when given)."""
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self._messages.clear()

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def _noted(self, received: Received) -> None:
        """A subclass's bookkeeping for a new message, under the lock, before waiters wake."""

    def _record(self, message: mqtt.MQTTMessage) -> Received:
        received = Received(
            message.topic, bytes(message.payload), bool(message.retain), time.monotonic_ns()
        )
        with self._cond:
            self._messages.append(received)
            self._noted(received)
            self._cond.notify_all()
        return received

    # -- paho callbacks (its network thread) ----------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: Any,
        properties: Any = None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._connect_error = str(reason_code)
                self._cond.notify_all()
                return
            self._connected = True
            self._subscribed = False
            self.connects += 1
            sock = client.socket()
            if isinstance(sock, socket.socket):  # as the gateway does: no Nagle delay
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, mid = client.subscribe([(topic, 1) for topic in self._topics])
            self._pending_sub = mid
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: Any,
        properties: Any = None,
    ) -> None:
        with self._cond:
            self._connected = False
            self._subscribed = False
            self._cond.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        with self._cond:
            if mid == self._pending_sub:
                self._subscribed = True
                self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._record(message)
