"""Home Assistant's side of MQTT discovery, for tests, the demo and benchmarks (paho in a thread).

It does what Home Assistant's MQTT integration does with a broker: subscribes to
the discovery tree, keeps an entity per ``unique_id`` (a config on a topic
creates or updates one, an empty config deletes the one on that topic), takes
events from each event entity's ``state_topic`` (replayed retained ones are
discarded, as Home Assistant does), and publishes its birth message. Every
message is recorded with its arrival time; the methods are safe from any thread.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One message as it arrived; ``at_ns`` is ``time.monotonic_ns()`` on arrival."""

    topic: str
    payload: bytes
    retain: bool
    at_ns: int

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class Entity:
    """A discovered entity: its component (``event``, ``sensor`` ...), topic and config."""

    component: str
    topic: str
    config: dict[str, Any]

    @property
    def unique_id(self) -> str:
        return str(self.config["unique_id"])


class HomeAssistantPeer:
    """``with HomeAssistantPeer(host, port, username=..., password=...) as ha:`` connects."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        password: str,
        discovery_prefix: str = "homeassistant",
        ca: Path | None = None,
        client_id: str = "homeassistant-standin",
        clean_session: bool = True,
    ) -> None:
        """``clean_session=False`` keeps QoS 1 events for it while it reconnects."""
        self.discovery_prefix = discovery_prefix
        self._host = host
        self._port = port
        self._cond = threading.Condition()
        self._messages: list[Seen] = []
        self._entities: dict[str, Entity] = {}  # discovery topic -> entity
        self._subscribed = False
        self._connect_error: str | None = None
        self._pending_sub: int | None = None
        self.connects = 0
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.username_pw_set(username, password)
        if ca is not None:
            self._client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------

    def connect(self, timeout: float = _TIMEOUT) -> Self:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        try:
            self.wait_subscribed(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def wait_subscribed(self, timeout: float = _TIMEOUT, connects: int = 1) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (
                    (self._subscribed and self.connects >= connects)
                    or self._connect_error is not None
                ),
                timeout,
            )
            if self._connect_error is not None:
                raise ConnectionError(f"broker refused Home Assistant: {self._connect_error}")
            if not ok:
                raise TimeoutError("the Home Assistant stand-in did not connect in time")

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

    # -- what Home Assistant does -------------------------------------------------------------

    def birth(self) -> None:
        """Home Assistant (re)started: ``online`` on ``<prefix>/status`` (not retained)."""
        info = self._client.publish(f"{self.discovery_prefix}/status", "online", qos=1)
        info.wait_for_publish(_TIMEOUT)

    def entities(self, component: str | None = None) -> list[Entity]:
        """The entities as Home Assistant would have them now."""
        with self._cond:
            return [
                e for e in self._entities.values() if component is None or e.component == component
            ]

    def entity(self, unique_id: str) -> Entity | None:
        with self._cond:
            return next((e for e in self._entities.values() if e.unique_id == unique_id), None)

    def events(self, state_topic: str) -> list[Seen]:
        """Events fired on ``state_topic`` (replayed retained messages are not events)."""
        with self._cond:
            return [m for m in self._messages if m.topic == state_topic and not m.retain]

    def last(self, topic: str) -> Seen | None:
        with self._cond:
            found = [m for m in self._messages if m.topic == topic]
            return found[-1] if found else None

    def messages(self, topic: str | None = None) -> list[Seen]:
        with self._cond:
            return [m for m in self._messages if topic is None or m.topic == topic]

    def clear(self) -> None:
        """Forget the messages seen so far (entities stay)."""
        with self._cond:
            self._messages.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = _TIMEOUT) -> None:
        """Block until ``predicate()`` (called under the lock, after each message) holds."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                shown = [(m.topic, m.payload[:120]) for m in self._messages[-8:]]
                raise AssertionError(f"Home Assistant stand-in: not met in {timeout} s; {shown}")

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
            self.connects += 1
            self._subscribed = False
            sock = client.socket()
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _, mid = client.subscribe([("#", 1)])
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
        at = time.monotonic_ns()
        seen = Seen(message.topic, bytes(message.payload), bool(message.retain), at)
        with self._cond:
            self._messages.append(seen)
            self._discovered(seen)
            self._cond.notify_all()

    def _discovered(self, seen: Seen) -> None:
        levels = seen.topic.split("/")
        if levels[0] != self.discovery_prefix or levels[-1] != "config" or len(levels) < 4:
            return
        if not seen.payload:
            self._entities.pop(seen.topic, None)  # an empty config deletes the entity
            return
        try:
            config = seen.json()
        except ValueError:
            return
        if isinstance(config, dict):
            self._entities[seen.topic] = Entity(levels[1], seen.topic, config)
