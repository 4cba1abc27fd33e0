"""Home Assistant's side of MQTT discovery, for tests, the demo and benchmarks (paho in a thread).

It does what Home Assistant's MQTT integration does with a broker: subscribes to
the discovery tree, keeps an entity per ``unique_id`` (a config on a topic
creates or updates one, an empty config deletes the one on that topic), takes
events from each event entity's ``state_topic`` (replayed retained ones are
discarded, as Home Assistant does), and publishes its birth message. Every
message is recorded with its arrival time; the methods are safe from any thread.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testkit.mqtt_peer import TIMEOUT as _TIMEOUT
from testkit.mqtt_peer import MqttPeer
from testkit.mqtt_peer import Received as Seen


@dataclass(frozen=True, slots=True)
class Entity:
    """A discovered entity: its component (``event``, ``sensor`` ...), topic and config."""

    component: str
    topic: str
    config: dict[str, Any]

    @property
    def unique_id(self) -> str:
        return str(self.config["unique_id"])


class HomeAssistantPeer(MqttPeer):
    """``with HomeAssistantPeer(host, port, username=..., password=...) as ha:`` connects."""

    refused = "broker refused Home Assistant"
    late = "the Home Assistant stand-in did not connect in time"

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
        super().__init__(
            host, port, topics=("#",), client_id=client_id, clean_session=clean_session
        )
        self._entities: dict[str, Entity] = {}  # discovery topic -> entity
        self._client.username_pw_set(username, password)
        if ca is not None:
            self._client.tls_set_context(ssl.create_default_context(cafile=str(ca)))

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

    def wait_until(self, predicate: Callable[[], bool], timeout: float = _TIMEOUT) -> None:
        """Block until ``predicate()`` (called under the lock, after each message) holds."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                shown = [(m.topic, m.payload[:120]) for m in self._messages[-8:]]
                raise AssertionError(f"Home Assistant stand-in: not met in {timeout} s; {shown}")

    def _noted(self, seen: Seen) -> None:
        """Keep the entities as Home Assistant would (called under the lock)."""
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
