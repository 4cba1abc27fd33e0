"""Home Assistant's documented MQTT discovery schema: ``event``, ``sensor``, ``binary_sensor``.

Written from the configuration tables of Home Assistant's MQTT integration pages
(``event.mqtt``, ``sensor.mqtt``, ``binary_sensor.mqtt`` and the discovery section of
``mqtt``): required keys, the type of every key, the ``device`` and ``origin``
blocks, availability and the documented abbreviations. Home Assistant ignores keys
it does not know; this check refuses them instead, so a misspelt key fails a test
rather than silently doing nothing in a user's home.
"""

from __future__ import annotations

import re
from typing import Any

# The documented abbreviations this check understands (a discovery payload may use either).
ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "def_ent_id": "default_entity_id",
    "dev": "device",
    "dev_cla": "device_class",
    "e": "encoding",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "evt_typ": "event_types",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cu": "configuration_url",
    "cns": "connections",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "mdl_id": "model_id",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
    "sn": "serial_number",
}
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}

STR, LIST, MAP, BOOL, INT = "string", "list", "map", "boolean", "integer"
COMMON: dict[str, str] = {
    "availability": LIST,
    "availability_mode": STR,
    "availability_template": STR,
    "availability_topic": STR,
    "default_entity_id": STR,
    "device": MAP,
    "enabled_by_default": BOOL,
    "encoding": STR,
    "entity_category": STR,
    "entity_picture": STR,
    "icon": STR,
    "json_attributes_template": STR,
    "json_attributes_topic": STR,
    "name": STR,
    "object_id": STR,
    "origin": MAP,
    "payload_available": STR,
    "payload_not_available": STR,
    "qos": INT,
    "unique_id": STR,
}
COMPONENTS: dict[str, dict[str, str]] = {
    "event": {"state_topic": STR, "event_types": LIST, "device_class": STR, "value_template": STR},
    "sensor": {
        "state_topic": STR,
        "device_class": STR,
        "expire_after": INT,
        "force_update": BOOL,
        "last_reset_value_template": STR,
        "options": LIST,
        "suggested_display_precision": INT,
        "state_class": STR,
        "unit_of_measurement": STR,
        "value_template": STR,
    },
    "binary_sensor": {
        "state_topic": STR,
        "device_class": STR,
        "expire_after": INT,
        "force_update": BOOL,
        "off_delay": INT,
        "payload_off": STR,
        "payload_on": STR,
        "value_template": STR,
    },
}
REQUIRED = {
    "event": ("state_topic", "event_types"),
    "sensor": ("state_topic",),
    "binary_sensor": ("state_topic",),
}
DEVICE_CLASSES = {
    "event": {"button", "doorbell", "motion"},
    "sensor": {
        "enum",
        "timestamp",
        "duration",
        "data_size",
        "signal_strength",
        "temperature",
        "battery",
        "voltage",
    },
    "binary_sensor": {
        "battery",
        "connectivity",
        "door",
        "motion",
        "occupancy",
        "opening",
        "plug",
        "power",
        "presence",
        "problem",
        "running",
        "safety",
        "sound",
        "update",
    },
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
DEVICE_KEYS = {
    "configuration_url": STR,
    "connections": LIST,
    "hw_version": STR,
    "identifiers": LIST,
    "manufacturer": STR,
    "model": STR,
    "model_id": STR,
    "name": STR,
    "serial_number": STR,
    "suggested_area": STR,
    "sw_version": STR,
    "via_device": STR,
}
ORIGIN_KEYS = {"name": STR, "sw_version": STR, "support_url": STR}
_TYPES: dict[str, type | tuple[type, ...]] = {
    STR: str,
    LIST: list,
    MAP: dict,
    BOOL: bool,
    INT: int,
}
_ENTITY_ID = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+")
_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9_-]+")


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with documented abbreviations written out (device and origin too)."""
    full = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    if isinstance(full.get("device"), dict):
        full["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in full["device"].items()}
    if isinstance(full.get("origin"), dict):
        full["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in full["origin"].items()}
    return full


def check_topic(topic: str, discovery_prefix: str = "homeassistant") -> str:
    """The component of ``<prefix>/<component>/[<node_id>/]<object_id>/config``; else raises."""
    levels = topic.split("/")
    prefix_levels = discovery_prefix.split("/")
    rest = levels[len(prefix_levels) :]
    assert levels[: len(prefix_levels)] == prefix_levels, topic
    assert len(rest) in (3, 4), f"not a discovery topic: {topic}"
    assert rest[-1] == "config", f"not a discovery topic: {topic}"
    for level in rest[1:-1]:
        assert _TOPIC_LEVEL.fullmatch(level), f"{topic}: {level!r} is not [a-zA-Z0-9_-]"
    assert rest[0] in COMPONENTS, f"{topic}: component {rest[0]!r} not checked here"
    return rest[0]


def problems(component: str, payload: dict[str, Any]) -> list[str]:
    """Every way ``payload`` breaks the documented schema of ``component`` (empty: valid)."""
    found: list[str] = []
    config = expand(payload)
    keys = {**COMMON, **COMPONENTS[component]}
    for key, value in config.items():
        if key not in keys:
            found.append(f"unknown key {key!r}")
        elif value is not None and not _is(value, keys[key]):
            found.append(f"{key} must be a {keys[key]}, not {type(value).__name__}")
    for key in REQUIRED[component]:
        if key not in config:
            found.append(f"{key} is required")
    if "availability" in config and "availability_topic" in config:
        found.append("availability and availability_topic must not be used together")
    for item in config.get("availability") or []:
        if not isinstance(item, dict) or not isinstance(item.get("topic"), str):
            found.append("every availability entry needs a topic (string)")
            continue
        for key in item:
            if key not in ("topic", "payload_available", "payload_not_available", "value_template"):
                found.append(f"unknown availability key {key!r}")
    if config.get("availability_mode", "latest") not in ("all", "any", "latest"):
        found.append("availability_mode must be all, any or latest")
    if config.get("qos", 0) not in (0, 1, 2):
        found.append("qos must be 0, 1 or 2")
    if config.get("entity_category") not in (None, "config", "diagnostic"):
        found.append("entity_category must be config or diagnostic")
    device_class = config.get("device_class")
    if device_class is not None and device_class not in DEVICE_CLASSES[component]:
        found.append(f"{component} device_class {device_class!r} is not documented")
    found += _device(config)
    found += _origin(config)
    entity_id = config.get("default_entity_id")
    if isinstance(entity_id, str) and (
        not _ENTITY_ID.fullmatch(entity_id) or entity_id.split(".")[0] != component
    ):
        found.append(f"default_entity_id {entity_id!r} is not {component}.<lowercase id>")
    found += _component_rules(component, config)
    return found


def _component_rules(component: str, config: dict[str, Any]) -> list[str]:
    found = []
    if component == "event":
        types = config.get("event_types")
        if not types or not all(isinstance(t, str) and t for t in types):
            found.append("event_types must be a non-empty list of strings")
    if component == "sensor":
        if config.get("state_class") not in (None, *STATE_CLASSES):
            found.append(f"state_class {config['state_class']!r} is not documented")
        if "options" in config:
            options = config["options"]
            if not options or not all(isinstance(o, str) for o in options):
                found.append("options must be a non-empty list of strings")
            if config.get("device_class") != "enum":
                found.append("options needs device_class enum")
            if "state_class" in config or "unit_of_measurement" in config:
                found.append("options cannot go with state_class or unit_of_measurement")
    return found


def _device(config: dict[str, Any]) -> list[str]:
    device = config.get("device")
    if device is None:
        return []
    if not isinstance(device, dict):
        return ["device must be a map"]
    found = []
    if "unique_id" not in config:
        found.append("device only works when unique_id is set")
    if not device.get("identifiers") and not device.get("connections"):
        found.append("device needs identifiers or connections")
    for key, value in device.items():
        if key not in DEVICE_KEYS:
            found.append(f"unknown device key {key!r}")
        elif key == "identifiers" and isinstance(value, str):
            continue  # documented as [string, list]
        elif not _is(value, DEVICE_KEYS[key]):
            found.append(f"device.{key} must be a {DEVICE_KEYS[key]}")
    return found


def _origin(config: dict[str, Any]) -> list[str]:
    origin = config.get("origin")
    if origin is None:
        return []
    found = []
    if not isinstance(origin.get("name"), str):
        found.append("origin.name is required")
    for key, value in origin.items():
        if key not in ORIGIN_KEYS or not _is(value, ORIGIN_KEYS[key]):
            found.append(f"bad origin key {key!r}")
    return found


def _is(value: Any, kind: str) -> bool:
    if kind == INT and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def assert_valid(
    topic: str, payload: dict[str, Any], discovery_prefix: str = "homeassistant"
) -> None:
    component = check_topic(topic, discovery_prefix)
    found = problems(component, payload)
    assert not found, f"{topic}: {found}"
