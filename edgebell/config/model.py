"""The loaded configuration: frozen values, one class per section of config.yaml."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from edgebell.errors import ConfigError
from edgebell.privacy import short_token
from edgebell.radio.keys import ButtonKey

Protocol = Literal["rflink", "rcswitch", "lines"]
Environment = Literal["production", "sandbox"]
LogLevel = Literal["debug", "info", "warning", "error"]

MQTT_PORTS = {"mqtts": 8883, "mqtt": 1883}

_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Who this gateway is: its MQTT client id and the CN of its certificate."""

    id: str


@dataclass(frozen=True, slots=True)
class RadioConfig:
    """The serial receiver and how presses are grouped into rings."""

    port: str
    protocol: Protocol
    baudrate: int  # the protocol's usual speed when not given (radio/decoders.py)
    debounce: float = field(default=1.5, kw_only=True)
    cooldown: float = field(default=10.0, kw_only=True)
    ping_interval: float = field(default=60.0, kw_only=True)  # RFLink only: others get 0
    ping_timeout: float = field(default=10.0, kw_only=True)
    reconnect_min: float = field(default=0.5, kw_only=True)
    reconnect_max: float = field(default=30.0, kw_only=True)


@dataclass(frozen=True, slots=True)
class ButtonConfig:
    """One doorbell button: the frame it sends (``match``) and its normalised ``key``."""

    id: str
    name: str
    key: ButtonKey
    match: tuple[tuple[str, str | int], ...]


@dataclass(frozen=True, slots=True)
class TokenAuthConfig:
    """APNs token auth: an ES256 provider JWT signed with Apple's ``.p8`` key."""

    key_file: Path
    key_id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class CertificateAuthConfig:
    """APNs certificate auth: a TLS client certificate (PEM with key, or ``.p12``)."""

    cert_file: Path
    passphrase_file: Path | None


@dataclass(frozen=True, slots=True)
class DelegatedAuthConfig:
    """APNs delegated auth: the cloud publishes the provider JWT; no Apple key here."""


AuthConfig = TokenAuthConfig | CertificateAuthConfig | DelegatedAuthConfig


@dataclass(frozen=True, slots=True)
class NotificationConfig:
    """What the alert says; ``{button_name}``, ``{button}`` and ``{presses}`` are filled in."""

    title: str = "Doorbell"
    body: str = "Someone is at the {button_name}"
    sound: str | None = "default"
    # One push for rings that waited while Apple was unreachable; {rings} and {last_at} too.
    collapsed: str = "{rings} rings at {button_name}, last at {last_at}"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The durable outbox: how large its database may grow (None: as the disk allows)."""

    max_size: int | None = None  # bytes


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """Apple push: topic, environment, auth and the HTTP/2 client's timings."""

    topic: str
    environment: Environment
    auth: AuthConfig
    host: str | None = field(default=None, kw_only=True)
    ca_file: Path | None = field(default=None, kw_only=True)
    expiration: float = field(default=15 * 60.0, kw_only=True)
    notification: NotificationConfig = field(default=NotificationConfig(), kw_only=True)
    connect_timeout: float = field(default=10.0, kw_only=True)
    request_timeout: float = field(default=10.0, kw_only=True)
    ping_interval: float = field(default=60.0, kw_only=True)
    jwt_refresh: float = field(default=40 * 60.0, kw_only=True)
    retry_min: float = field(default=1.0, kw_only=True)
    retry_max: float = field(default=60.0, kw_only=True)
    # Prove key, team and topic with Apple at start (see edgebell/apns/credentials.py).
    verify_credentials: bool = field(default=True, kw_only=True)


class BrokerUrl:
    """``host``, ``port`` and ``tls`` of a broker's ``url`` (``mqtt[s]://host[:port]``).

    Shared by every config section that names an MQTT broker; no slots of its own,
    so the frozen slotted dataclasses that inherit it stay slotted.
    """

    __slots__ = ()
    url: str

    @property
    def host(self) -> str:
        """Broker host name or address (IPv6 without brackets)."""
        return split_url(self.url, MQTT_PORTS)[1]

    @property
    def port(self) -> int:
        """Broker port: as given, else 8883 for ``mqtts://`` and 1883 for ``mqtt://``."""
        return split_url(self.url, MQTT_PORTS)[2]

    @property
    def tls(self) -> bool:
        """Whether the connection is TLS (``mqtts://``)."""
        return split_url(self.url, MQTT_PORTS)[0] == "mqtts"


@dataclass(frozen=True, slots=True)
class CloudConfig(BrokerUrl):
    """The MQTT broker the cloud syncs through, and the key that signs token lists."""

    url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    topic_prefix: str = "edgebell"
    token_list_key: Path = field(kw_only=True)
    # Extensions: reconnect backoff (with jitter), MQTT keepalive, connect/ack timeout.
    reconnect_min: float = field(default=1.0, kw_only=True)
    reconnect_max: float = field(default=60.0, kw_only=True)
    keepalive: float = field(default=60.0, kw_only=True)
    connect_timeout: float = field(default=10.0, kw_only=True)


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig(BrokerUrl):
    """The home's own MQTT broker, where Home Assistant discovers the doorbell and hears rings.

    ``node_id`` and ``base_topic`` are filled in from the gateway id by the loader.
    """

    url: str
    node_id: str
    base_topic: str
    discovery_prefix: str = "homeassistant"
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # A ring older than this when the broker is back is not sent: no burst of stale doorbells.
    max_event_age: float = 60.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    keepalive: float = 60.0
    connect_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A device token from the config file (lowercase hex); ``env`` None means apns.environment."""

    token: str
    env: Environment | None

    def __repr__(self) -> str:
        # Tokens are personal data: keep them out of logs and tracebacks.
        return f"StaticToken(token={short_token(self.token)!r}, env={self.env!r})"


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration; ``lines`` maps each key path to its line in ``source``."""

    source: Path
    gateway: GatewayConfig
    radio: RadioConfig
    buttons: tuple[ButtonConfig, ...]
    apns: ApnsConfig
    cloud: CloudConfig | None
    tokens: tuple[StaticToken, ...]
    state_dir: Path
    control_socket: Path
    log_level: LogLevel
    outbox: OutboxConfig = OutboxConfig()
    home_assistant: HomeAssistantConfig | None = None
    lines: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    # A bare file name found nowhere: the places it was looked for, so the error names them all.
    searched: Mapping[Path, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def error_at(self, key: str, message: str) -> ConfigError:
        """A ConfigError located at ``key`` (``apns.auth.key_file``) in the config file."""
        return ConfigError(message, file=str(self.source), line=self.lines.get(key), key=key)


def section_keys(cls: type, *, but: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The keys of a config section: the fields of its dataclass (``but`` those not in YAML)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in but)


def default_of(cls: type, name: str) -> Any:
    """The default of a section's key, as its dataclass declares it (the one place it is said)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def split_url(url: str, ports: Mapping[str, int]) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``scheme://host[:port]``; ValueError says what is wrong.

    ``ports`` maps each accepted scheme to its default port.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    schemes = " or ".join(f"{scheme}://" for scheme in ports)
    if parts.scheme not in ports:
        raise ValueError(f"must start with {schemes}")
    if not parts.hostname:
        raise ValueError("has no host name")
    if not _valid_host(parts.hostname):
        raise ValueError(f"has an invalid host {parts.hostname!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be just {parts.scheme}://host:port, without a path or query")
    if port == 0:
        raise ValueError("port must be 1 to 65535")
    return parts.scheme, parts.hostname, ports[parts.scheme] if port is None else port


def _valid_host(host: str) -> bool:
    if ":" not in host:
        return _HOST_NAME.fullmatch(host) is not None
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
