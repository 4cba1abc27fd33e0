"""The ``home_assistant:`` section of config.yaml: the home's own MQTT broker, checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import yaml

from edgebell.config.model import (
    MQTT_PORTS,
    HomeAssistantConfig,
    default_of,
    section_keys,
    split_url,
)
from edgebell.config.yamltree import Document, Fields


class SectionReader(Protocol):
    """What reading a section needs of the config loader (``load._Loader``)."""

    @property
    def doc(self) -> Document: ...

    def file(self, node: yaml.Node, path: str) -> Path: ...

    def setting(self, fields: Fields, section: type, name: str) -> float: ...

    def backoff(self, fields: Fields, prefix: str, section: type) -> tuple[float, float]: ...


SECTION = "home_assistant"
KEYS = section_keys(HomeAssistantConfig)
# Home Assistant's rule for the <node_id> level of a discovery topic.
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def default_node_id(gateway_id: str) -> str:
    """``edgebell_<gateway id>`` with ``-`` turned into ``_`` (the design's default)."""
    return "edgebell_" + gateway_id.replace("-", "_")


def home_assistant_section(
    loader: SectionReader, node: yaml.Node, gateway_id: str
) -> HomeAssistantConfig:
    """The validated section; a ConfigError at the offending key otherwise."""
    doc = loader.doc
    fields = doc.mapping(node, SECTION, KEYS)
    url_node = fields.require("url")
    url = doc.text(url_node, f"{SECTION}.url")
    try:
        scheme = split_url(url, MQTT_PORTS)[0]
    except ValueError as exc:
        raise doc.error(
            url_node, f"{SECTION}.url", f"{exc} (expected mqtt://host:1883 or mqtts://host:8883)"
        ) from None
    tls = scheme == "mqtts"

    username_node = fields.get("username")
    username = None if username_node is None else doc.text(username_node, f"{SECTION}.username")
    password_node = fields.get("password_file")
    if password_node is not None and username is None:
        raise doc.error(
            password_node, f"{SECTION}.password_file", "needs username: the broker's user name"
        )
    ca_node, cert_node, key_node = (fields.get(k) for k in ("ca_file", "cert_file", "key_file"))
    if (cert_node is None) != (key_node is None):
        given, missing = ("key_file", "cert_file")
        if key_node is None:
            given, missing = missing, given
        raise doc.error(
            fields.get(given), f"{SECTION}.{given}", f"needs {missing} too (a client certificate)"
        )
    for name in ("ca_file", "cert_file"):
        item = fields.get(name)
        if item is not None and not tls:
            raise doc.error(
                item,
                f"{SECTION}.{name}",
                f"only for mqtts:// (TLS); {SECTION}.url is {url}",
            )
    prefix = _topic(
        loader,
        fields.get("discovery_prefix"),
        "discovery_prefix",
        default_of(HomeAssistantConfig, "discovery_prefix"),
    )
    base = _topic(loader, fields.get("base_topic"), "base_topic", f"edgebell/{gateway_id}")
    if base == prefix or base.startswith(prefix + "/"):
        raise doc.error(
            fields.get("base_topic"),
            f"{SECTION}.base_topic",
            f"must not lie under discovery_prefix {prefix!r}: Home Assistant reads that tree "
            "as configuration",
        )
    node_id_node = fields.get("node_id")
    node_id = default_node_id(gateway_id)
    if node_id_node is not None:
        node_id = doc.text(node_id_node, f"{SECTION}.node_id")
        if not _NODE_ID.fullmatch(node_id):
            raise doc.error(
                node_id_node,
                f"{SECTION}.node_id",
                f"{node_id!r} is not a discovery node id: use 1 to 64 letters, digits, _ or -",
            )
    reconnect_min, reconnect_max = loader.backoff(fields, "reconnect", HomeAssistantConfig)
    return HomeAssistantConfig(
        url=url,
        node_id=node_id,
        base_topic=base,
        discovery_prefix=prefix,
        username=username,
        password_file=(
            None
            if password_node is None
            else loader.file(password_node, f"{SECTION}.password_file")
        ),
        ca_file=None if ca_node is None else loader.file(ca_node, f"{SECTION}.ca_file"),
        cert_file=None if cert_node is None else loader.file(cert_node, f"{SECTION}.cert_file"),
        key_file=None if key_node is None else loader.file(key_node, f"{SECTION}.key_file"),
        max_event_age=loader.setting(fields, HomeAssistantConfig, "max_event_age"),
        reconnect_min=reconnect_min,
        reconnect_max=reconnect_max,
        keepalive=loader.setting(fields, HomeAssistantConfig, "keepalive"),
        connect_timeout=loader.setting(fields, HomeAssistantConfig, "connect_timeout"),
    )


def _topic(loader: SectionReader, node: yaml.Node | None, name: str, default: str) -> str:
    if node is None:
        return default
    key = f"{SECTION}.{name}"
    text = loader.doc.text(node, key)
    if (
        not text
        or any(c in text for c in "+#\0")
        or text.startswith("/")
        or text.endswith("/")
        or "//" in text
    ):
        raise loader.doc.error(
            node, key, "must be MQTT topic levels without wildcards (+, #) or empty levels"
        )
    return text


def describe(section: HomeAssistantConfig) -> str:
    """One line for ``check-config``: where the doorbell goes and how it is announced."""
    who = f" as {section.username}" if section.username else ""
    if section.cert_file is not None:
        who += " with a client certificate"
    return (
        f"home_assistant: {section.url}{who}; discovery "
        f"{section.discovery_prefix}/<component>/{section.node_id}/..., events on "
        f"{section.base_topic}/<button>/event, rings older than "
        f"{section.max_event_age:g} s not sent after an outage"
    )
