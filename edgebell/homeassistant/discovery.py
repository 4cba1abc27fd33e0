"""What edgebell tells Home Assistant over MQTT: discovery, availability, state and ring events.

Pure: values in, topics and payloads out, no I/O and no clock. The shapes follow
Home Assistant's MQTT discovery documentation (``event``, ``sensor`` and
``binary_sensor``) and do what zigbee2mqtt does: one device, entities whose
``unique_id`` depends only on the gateway id and the button id (a renamed button
keeps its entity), availability on one retained topic, and an empty retained
config for every topic announced before that is no longer wanted (its entity goes).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgebell.config.model import HomeAssistantConfig
from edgebell.rings import Ring, iso_time

ONLINE = b"online"
OFFLINE = b"offline"
EVENT_TYPE = "ring"
APNS_STATES = ("connected", "disconnected", "auth_error")
_OBJECT_ID = re.compile(r"[A-Za-z0-9_-]+")
_NOT_ENTITY_ID = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything goes on the home broker: discovery configs, events, availability."""

    discovery_prefix: str
    node_id: str
    base_topic: str

    @classmethod
    def of(cls, config: HomeAssistantConfig) -> Layout:
        return cls(config.discovery_prefix, config.node_id, config.base_topic)

    @property
    def availability(self) -> str:
        return f"{self.base_topic}/availability"

    @property
    def state(self) -> str:
        """The retained JSON the diagnostic sensors read (queue, APNs, receiver)."""
        return f"{self.base_topic}/state"

    @property
    def birth(self) -> str:
        """Where Home Assistant says ``online`` when it (re)starts."""
        return f"{self.discovery_prefix}/status"

    @property
    def own_configs(self) -> str:
        """Every discovery config under this node: what a broker may still retain of ours."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"

    def event(self, button_id: str) -> str:
        return f"{self.base_topic}/{button_id}/event"

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"


@dataclass(frozen=True, slots=True)
class Button:
    """A configured button as Home Assistant sees it: its stable id and its display name."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publication (always QoS 1 towards Home Assistant)."""

    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What the diagnostic entities show: pushes waiting, the APNs link, the receiver."""

    queue: int
    apns: str  # one of APNS_STATES
    apns_error: str | None
    receiver: bool


def object_id(button_id: str) -> str:
    """A button id as a discovery topic level (``[A-Za-z0-9_-]``), distinct for distinct ids.

    Button ids may hold ``.``; such ids get a short hash of the original appended
    so that ``a.b`` and ``a_b`` never share a topic.
    """
    if _OBJECT_ID.fullmatch(button_id):
        return button_id
    digest = hashlib.sha256(button_id.encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', button_id)}_{digest}"


def _entity_id(domain: str, *parts: str) -> str:
    slug = _NOT_ENTITY_ID.sub("_", "_".join(parts).lower()).strip("_")
    return f"{domain}.{slug}"


def device_block(gateway_id: str, version: str) -> dict[str, Any]:
    """The one device every entity belongs to: the gateway, identified by its id forever."""
    return {
        "identifiers": [f"edgebell_{gateway_id}"],
        "name": f"Doorbell gateway {gateway_id}",
        "manufacturer": "edgebell",
        "model": "Doorbell gateway",
        "sw_version": version,
    }


def discovery(
    layout: Layout, *, gateway_id: str, version: str, buttons: Sequence[Button]
) -> dict[str, bytes]:
    """Every discovery config, topic -> retained JSON payload, in the order to publish them."""
    device = device_block(gateway_id, version)
    common: dict[str, Any] = {
        "availability": [{"topic": layout.availability}],
        "device": device,
        "origin": {"name": "edgebell", "sw_version": version},
        "qos": 1,
    }
    uid = f"edgebell_{gateway_id}"
    configs: dict[str, dict[str, Any]] = {}
    for button in buttons:
        oid = object_id(button.id)
        configs[layout.config("event", oid)] = {
            "name": button.name,
            # From ids only, never the name: renaming a button keeps its entity and history.
            "unique_id": f"{uid}_{button.id}_ring",
            "default_entity_id": _entity_id("event", layout.node_id, oid),
            "state_topic": layout.event(button.id),
            "event_types": [EVENT_TYPE],
            "device_class": "doorbell",
            "icon": "mdi:doorbell",
            **common,
        }
    configs[layout.config("sensor", "queue")] = {
        "name": "Pushes waiting",
        "unique_id": f"{uid}_queue",
        "default_entity_id": _entity_id("sensor", layout.node_id, "pushes_waiting"),
        "state_topic": layout.state,
        "value_template": "{{ value_json.queue }}",
        "state_class": "measurement",
        "entity_category": "diagnostic",
        "icon": "mdi:tray-full",
        **common,
    }
    configs[layout.config("sensor", "apns")] = {
        "name": "Apple push",
        "unique_id": f"{uid}_apns",
        "default_entity_id": _entity_id("sensor", layout.node_id, "apple_push"),
        "state_topic": layout.state,
        "value_template": "{{ value_json.apns }}",
        "device_class": "enum",
        "options": list(APNS_STATES),
        "json_attributes_topic": layout.state,
        "json_attributes_template": '{{ {"last_error": value_json.apns_error} | tojson }}',
        "entity_category": "diagnostic",
        "icon": "mdi:cellphone-message",
        **common,
    }
    configs[layout.config("binary_sensor", "receiver")] = {
        "name": "Radio receiver",
        "unique_id": f"{uid}_receiver",
        "default_entity_id": _entity_id("binary_sensor", layout.node_id, "radio_receiver"),
        "state_topic": layout.state,
        "value_template": "{{ value_json.receiver }}",
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        **common,
    }
    return {topic: _json(payload) for topic, payload in configs.items()}


def announcement(current: Mapping[str, bytes], announced_before: Iterable[str]) -> list[Message]:
    """What to publish so Home Assistant has exactly ``current``.

    Removals come first (an empty retained config deletes the entity): should a
    moved topic carry a ``unique_id`` already in use, Home Assistant has let the old
    one go before it sees the new one and does not refuse it as a duplicate.
    """
    gone = sorted(set(announced_before) - set(current))
    return [Message(topic, b"", retain=True) for topic in gone] + [
        Message(topic, payload, retain=True) for topic, payload in current.items()
    ]


def leftover(topic: str, payload: bytes, *, retained: bool, current: Collection[str]) -> bool:
    """A retained config of this node that is not announced now: clear it.

    The state directory remembers what was announced; this catches what it cannot
    (a state directory wiped or restored from an old backup), as zigbee2mqtt clears
    retained configs it no longer has at start.
    """
    return retained and bool(payload) and topic not in current


def availability(layout: Layout, online: bool) -> Message:
    return Message(layout.availability, ONLINE if online else OFFLINE, retain=True)


def event_message(layout: Layout, ring: Ring) -> Message:
    """A ring as the button's event entity takes it. Never retained: HA drops replayed events."""
    document = {
        "event_type": EVENT_TYPE,
        "ring_id": ring.ring_id,
        "presses": ring.presses,
        "at": iso_time(ring.at),
        "button": ring.button,
    }
    return Message(layout.event(ring.button), _json(document), retain=False)


def state_message(layout: Layout, state: GatewayState) -> Message:
    """The diagnostic sensors' retained state: Home Assistant shows it again after a restart."""
    document = {
        "queue": state.queue,
        "apns": state.apns,
        "apns_error": state.apns_error,
        "receiver": "ON" if state.receiver else "OFF",
    }
    return Message(layout.state, _json(document), retain=True)


def apns_state(*, connected: bool, auth_problem: str | None) -> str:
    """The ``Apple push`` sensor's value: an auth problem outranks a link that is up."""
    if auth_problem:
        return "auth_error"
    return "connected" if connected else "disconnected"


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
