"""The registry's config file (``edgebell cloud serve --config F``), loaded once and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import platformdirs
import yaml

from edgebell.config.model import MQTT_PORTS, BrokerUrl
from edgebell.config.yamltree import Document, Fields, compose
from edgebell.errors import ConfigError
from edgebell.registry.operations import Retention
from edgebell.secrets import resolve_secret_path

TOP_KEYS = (
    "database",
    "mqtt",
    "topic_prefix",
    "signing_key",
    "http",
    "apns",
    "retention",
    "state_dir",
    "log_level",
)
MQTT_KEYS = (
    "url",
    "ca_file",
    "cert_file",
    "key_file",
    "client_id",
    "shared_group",
    "reconnect_min",
    "reconnect_max",
    "keepalive",
    "connect_timeout",
)
HTTP_KEYS = ("listen", "api_tokens_file", "auth_hook")
APNS_KEYS = ("key_file", "key_id", "team_id")
RETENTION_KEYS = ("events", "events_per_gateway", "removed")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LISTEN = "127.0.0.1:8780"
DEFAULT_GROUP = "edgebell-registry"


@dataclass(frozen=True, slots=True)
class MqttConfig(BrokerUrl):
    """The broker, as a gateway's ``cloud:`` section names it, with the cloud's own identity."""

    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    client_id: str | None = None  # default: the CN of cert_file (what the broker's ACL sees)
    # Instances share the gateways' messages (MQTT shared subscriptions): each one is
    # handled once, by one instance. Empty: every instance gets every message.
    shared_group: str = DEFAULT_GROUP
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    keepalive: float = 60.0
    connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str
    port: int
    api_tokens_file: Path | None
    auth_hook: str | None = None  # "package.module:function", a maker's own user auth


@dataclass(frozen=True, slots=True)
class FleetApnsConfig:
    """The team's APNs key: with it the registry mints the fleet's provider JWT (delegated)."""

    key_file: Path
    key_id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    source: Path
    database: str = field(repr=False)  # may hold a password
    mqtt: MqttConfig | None
    topic_prefix: str
    signing_key: Path
    http: HttpConfig
    apns: FleetApnsConfig | None
    retention: Retention
    log_level: str


def load_registry_config(path: Path, *, environ: Mapping[str, str] = os.environ) -> RegistryConfig:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("no such configuration file (give --config FILE)", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot be read: {exc}", file=name) from None
    root = compose(text, name)
    doc = Document(name)
    if not isinstance(root, yaml.MappingNode):
        raise doc.error(root, None, "must be a mapping (signing_key:, mqtt:, http: ...)")
    return _Loader(doc, path.absolute().parent, environ).config(root, path)


class _Loader:
    def __init__(self, doc: Document, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.environ = environ

    def config(self, root: yaml.MappingNode, source: Path) -> RegistryConfig:
        top = self.doc.mapping(root, "", TOP_KEYS)
        state_node = top.get("state_dir")
        if state_node is not None:
            state_dir = self.path(state_node, "state_dir")
        elif self.environ.get("STATE_DIRECTORY"):
            # systemd's StateDirectory= (the first one when it names several).
            state_dir = Path(self.environ["STATE_DIRECTORY"].split(":", 1)[0])
        else:
            state_dir = platformdirs.user_state_path("edgebell-cloud")
        db_node = top.get("database")
        database = f"sqlite:///{state_dir / 'registry.db'}"
        if db_node is not None:
            database = self.doc.text(db_node, "database")
            if not database.startswith(("sqlite:///", "postgresql://", "postgres://")):
                raise self.doc.error(
                    db_node, "database", "must be sqlite:///path or postgresql://…"
                )
        prefix = "edgebell"
        prefix_node = top.get("topic_prefix")
        if prefix_node is not None:
            prefix = self.doc.text(prefix_node, "topic_prefix")
            if any(c in prefix for c in "+#\0$") or prefix.startswith("/") or prefix.endswith("/"):
                raise self.doc.error(
                    prefix_node, "topic_prefix", "must be MQTT topic levels without wildcards"
                )
        mqtt_node = top.get("mqtt")
        http_node = top.get("http")
        apns_node = top.get("apns")
        retention_node = top.get("retention")
        level_node = top.get("log_level")
        return RegistryConfig(
            source=source,
            database=database,
            mqtt=None if mqtt_node is None else self.mqtt(mqtt_node),
            topic_prefix=prefix,
            signing_key=self.file(top.require("signing_key"), "signing_key"),
            http=self.http(http_node),
            apns=None if apns_node is None else self.apns(apns_node),
            retention=Retention() if retention_node is None else self.retention(retention_node),
            log_level=(
                "info"
                if level_node is None
                else self.doc.choice(level_node, "log_level", LOG_LEVELS)
            ),
        )

    def mqtt(self, node: yaml.Node) -> MqttConfig:
        fields = self.doc.mapping(node, "mqtt", MQTT_KEYS)
        url = self.doc.url(fields.require("url"), "mqtt.url", MQTT_PORTS, "mqtts://host:port")
        client_node = fields.get("client_id")
        group_node = fields.get("shared_group")
        group = (
            DEFAULT_GROUP if group_node is None else str(cast(yaml.ScalarNode, group_node).value)
        )
        if any(c in group for c in "/+#"):
            raise self.doc.error(group_node, "mqtt.shared_group", "must be one topic level")
        low = self.duration(fields, "reconnect_min", 1.0)
        high = self.duration(fields, "reconnect_max", 60.0)
        if high < low:
            raise self.doc.error(
                fields.get("reconnect_max"),
                "mqtt.reconnect_max",
                "must not be less than reconnect_min",
            )
        return MqttConfig(
            url=url,
            ca_file=self.file(fields.require("ca_file"), "mqtt.ca_file"),
            cert_file=self.file(fields.require("cert_file"), "mqtt.cert_file"),
            key_file=self.file(fields.require("key_file"), "mqtt.key_file"),
            client_id=None if client_node is None else self.doc.text(client_node, "mqtt.client_id"),
            shared_group=group,
            reconnect_min=low,
            reconnect_max=high,
            keepalive=self.duration(fields, "keepalive", 60.0),
            connect_timeout=self.duration(fields, "connect_timeout", 10.0),
        )

    def http(self, node: yaml.Node | None) -> HttpConfig:
        if node is None:
            host, port = _listen(DEFAULT_LISTEN)
            return HttpConfig(host, port, None)
        fields = self.doc.mapping(node, "http", HTTP_KEYS)
        listen_node = fields.get("listen")
        listen = (
            DEFAULT_LISTEN if listen_node is None else self.doc.text(listen_node, "http.listen")
        )
        try:
            host, port = _listen(listen)
        except ValueError as exc:
            raise self.doc.error(listen_node, "http.listen", str(exc)) from None
        tokens_node = fields.get("api_tokens_file")
        hook_node = fields.get("auth_hook")
        hook = None if hook_node is None else self.doc.text(hook_node, "http.auth_hook")
        if hook is not None and ":" not in hook:
            raise self.doc.error(hook_node, "http.auth_hook", "must be package.module:function")
        return HttpConfig(
            host,
            port,
            None if tokens_node is None else self.file(tokens_node, "http.api_tokens_file"),
            hook,
        )

    def apns(self, node: yaml.Node) -> FleetApnsConfig:
        fields = self.doc.mapping(node, "apns", APNS_KEYS)
        return FleetApnsConfig(
            key_file=self.file(fields.require("key_file"), "apns.key_file"),
            key_id=self.doc.text(fields.require("key_id"), "apns.key_id"),
            team_id=self.doc.text(fields.require("team_id"), "apns.team_id"),
        )

    def retention(self, node: yaml.Node) -> Retention:
        fields = self.doc.mapping(node, "retention", RETENTION_KEYS)
        per_node = fields.get("events_per_gateway")
        per = (
            200 if per_node is None else self.doc.integer(per_node, "retention.events_per_gateway")
        )
        if per < 1:
            raise self.doc.error(per_node, "retention.events_per_gateway", "must be at least 1")
        return Retention(
            events_s=self.duration(fields, "events", 30 * 86400.0),
            events_per_gateway=per,
            removed_s=self.duration(fields, "removed", 90 * 86400.0),
        )

    def duration(self, fields: Fields, name: str, default: float) -> float:
        node = fields.get(name)
        if node is None:
            return default
        seconds = self.doc.duration(node, fields.key(name))
        if seconds <= 0:
            raise self.doc.error(node, fields.key(name), "must be more than 0")
        return seconds

    def file(self, node: yaml.Node, path: str) -> Path:
        return resolve_secret_path(
            self.doc.text(node, path), base_dir=self.base_dir, environ=self.environ
        )

    def path(self, node: yaml.Node, path: str) -> Path:
        resolved = Path(self.doc.text(node, path)).expanduser()
        return resolved if resolved.is_absolute() else self.base_dir / resolved


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8780")
    return host.strip("[]") or "127.0.0.1", int(port)
