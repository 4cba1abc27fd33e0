"""config.yaml to a validated Config: every key checked, every error located."""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar, cast

import yaml

from edgebell.apns.model import JWT_REFRESH_RANGE
from edgebell.apns.model import Environment as ApnsEnvironment
from edgebell.config.defaults import (
    default_config_path,
    default_control_socket,
    default_state_dir,
)
from edgebell.config.home_assistant import home_assistant_section
from edgebell.config.model import (
    MQTT_PORTS,
    ApnsConfig,
    AuthConfig,
    ButtonConfig,
    CertificateAuthConfig,
    CloudConfig,
    Config,
    DelegatedAuthConfig,
    Environment,
    GatewayConfig,
    LogLevel,
    NotificationConfig,
    OutboxConfig,
    Protocol,
    RadioConfig,
    StaticToken,
    TokenAuthConfig,
    default_of,
    section_keys,
)
from edgebell.config.yamltree import Document, Fields, compose
from edgebell.durations import format_duration
from edgebell.errors import ConfigError, config_errors
from edgebell.privacy import short_token
from edgebell.radio.decoders import default_baudrate
from edgebell.radio.keys import PROTOCOLS, ButtonKey, key_from_match
from edgebell.secrets import resolve_secret_path, search_places
from edgebell.tokens import MIN_TOKEN_HEX, is_device_token

# Each section's keys are its dataclass's fields, and its defaults are the fields' defaults.
TOP_KEYS = section_keys(Config, but=("source", "lines", "searched"))
RADIO_KEYS = section_keys(RadioConfig)
APNS_KEYS = section_keys(ApnsConfig)
AUTH_KEYS: dict[str, tuple[str, ...]] = {
    "token": section_keys(TokenAuthConfig),
    "certificate": section_keys(CertificateAuthConfig),
    "delegated": section_keys(DelegatedAuthConfig),
}
CLOUD_KEYS = section_keys(CloudConfig)
T = TypeVar("T")
# The values of the one Environment enum (a device token belongs to exactly one).
ENVIRONMENTS = tuple(env.value for env in ApnsEnvironment)
LOG_LEVELS = ("debug", "info", "warning", "error")
PLACEHOLDERS = ("button_name", "button", "presses")
COLLAPSED_PLACEHOLDERS = (*PLACEHOLDERS, "rings", "last_at")
# The outbox database needs a few pages for its tables; anything smaller could not hold a row.
MIN_OUTBOX_SIZE = 64 * 1024
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

# A sound is the name of a file in the app: this leaves the payload room for the alert text.
MAX_SOUND_BYTES = 256
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BUTTON_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SAMPLE = {
    "button_name": "Front door",
    "button": "front",
    "presses": 1,
    "rings": 3,
    "last_at": "14:05",
}


def load_config(path: Path | None = None, *, environ: Mapping[str, str] = os.environ) -> Config:
    """Read and validate the config file (default: ``default_config_path(environ)``).

    Raises ConfigError as ``file:line: key.path: message`` for anything wrong; the
    files the config names are checked by ``check_config``, not here.
    """
    if path is None:
        path = default_config_path(environ)
    name = str(path)
    root = compose(_read_text(path, name), name)
    doc = Document(name)
    if root is None:
        raise doc.error(None, None, "the file is empty (it needs at least gateway, radio and apns)")
    return _Loader(doc, path.absolute().parent, environ).config(root, path)


def _read_text(path: Path, name: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "no such configuration file (give --config FILE or set $EDGEBELL_CONFIG)", file=name
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a configuration file", file=name) from None
    except PermissionError:
        raise ConfigError(
            f"not readable by this user (uid {os.getuid()}): permission denied", file=name
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror}", file=name) from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("not UTF-8 text", file=name, line=line) from None


def _preview(text: str) -> str:
    # A bad token is still most of a token: show 8 characters at most, and never half of it.
    return text[: min(8, len(text) // 2)] + "…"


class _Loader:
    """Turns the YAML tree of one file into a Config, section by section."""

    def __init__(self, doc: Document, base_dir: Path, environ: Mapping[str, str]) -> None:
        self.doc = doc
        self.base_dir = base_dir
        self.environ = environ
        self.searched: dict[Path, tuple[str, ...]] = {}

    def config(self, root: yaml.Node, source: Path) -> Config:
        if not isinstance(root, yaml.MappingNode):
            raise self.doc.error(
                root, None, "must be a mapping of sections (gateway:, radio:, apns: ...)"
            )
        top = self.doc.mapping(root, "", TOP_KEYS)
        # Each section is read on its own so that one run reports the errors of all of
        # them (check-config), not only the first.
        errors: list[ConfigError] = []

        def section(read: Callable[[], T]) -> T | None:
            try:
                return read()
            except ConfigError as exc:
                errors.extend(getattr(exc, "errors", (exc,)))
                return None

        gateway = section(lambda: self.gateway(top.require("gateway")))
        radio = section(lambda: self.radio(top.require("radio")))
        buttons = (
            None
            if radio is None  # matches depend on the protocol: judged once radio is right
            else section(lambda: self.buttons(top.get("buttons"), radio.protocol))
        )
        apns = section(lambda: self.apns(top.require("apns")))
        cloud_node = top.get("cloud")
        cloud = None if cloud_node is None else section(lambda: self.cloud(cloud_node))
        if apns is not None and isinstance(apns.auth, DelegatedAuthConfig) and cloud_node is None:
            errors.append(
                ConfigError(
                    "delegated needs the cloud section: the provider token comes over MQTT",
                    file=self.doc.file,
                    line=self.doc.lines.get("apns.auth.mode"),
                    key="apns.auth.mode",
                )
            )
        tokens = section(lambda: self.tokens(top.get("tokens")))
        state_node = top.get("state_dir")
        socket_node = top.get("control_socket")
        level_node = top.get("log_level")
        outbox_node = top.get("outbox")
        ha_node = top.get("home_assistant")
        state_dir = section(
            lambda: (
                default_state_dir(self.environ)
                if state_node is None
                else self.path(state_node, "state_dir")
            )
        )
        control_socket = section(
            lambda: (
                default_control_socket(self.environ)
                if socket_node is None
                else self.socket_path(socket_node, "control_socket")
            )
        )
        log_level = section(
            lambda: (
                "info"
                if level_node is None
                else self.doc.choice(level_node, "log_level", LOG_LEVELS)
            )
        )
        outbox = section(
            lambda: OutboxConfig() if outbox_node is None else self.outbox(outbox_node)
        )
        home_assistant = (
            None
            if ha_node is None or gateway is None
            else section(lambda: home_assistant_section(self, ha_node, gateway.id))
        )
        if errors:
            errors.sort(key=lambda e: e.line or 0)
            raise config_errors(errors)
        # No error was found, so every section was read (spelled out for the type checker).
        assert gateway is not None
        assert radio is not None
        assert buttons is not None
        assert apns is not None
        assert tokens is not None
        assert state_dir is not None
        assert control_socket is not None
        assert log_level is not None
        assert outbox is not None
        return Config(
            source=source,
            gateway=gateway,
            radio=radio,
            buttons=buttons,
            apns=apns,
            cloud=cloud,
            tokens=tokens,
            state_dir=state_dir,
            control_socket=control_socket,
            log_level=cast(LogLevel, log_level),
            outbox=outbox,
            home_assistant=home_assistant,
            lines=MappingProxyType(dict(self.doc.lines)),
            searched=MappingProxyType(self.searched),
        )

    def gateway(self, node: yaml.Node) -> GatewayConfig:
        fields = self.doc.mapping(node, "gateway", section_keys(GatewayConfig))
        id_node = fields.require("id")
        gateway_id = self.doc.text(id_node, "gateway.id")
        if not _GATEWAY_ID.fullmatch(gateway_id):
            raise self.doc.error(
                id_node,
                "gateway.id",
                f"{gateway_id!r} is not a valid gateway id: use 1 to 64 letters, digits, - or _ "
                "(it is the MQTT client id and the CN of the gateway's certificate)",
            )
        return GatewayConfig(id=gateway_id)

    def radio(self, node: yaml.Node) -> RadioConfig:
        fields = self.doc.mapping(node, "radio", RADIO_KEYS)
        protocol = cast(
            Protocol, self.doc.choice(fields.require("protocol"), "radio.protocol", PROTOCOLS)
        )
        baud_node = fields.get("baudrate")
        baudrate = default_baudrate(protocol)
        if baud_node is not None:
            baudrate = self.doc.integer(baud_node, "radio.baudrate")
            if baudrate <= 0:
                raise self.doc.error(baud_node, "radio.baudrate", "must be positive")
        # Only RFLink answers 10;PING;, so other receivers never get a health check.
        ping_default = default_of(RadioConfig, "ping_interval") if protocol == "rflink" else 0.0
        ping_interval = self.duration(fields, "ping_interval", ping_default)
        reconnect_min, reconnect_max = self.backoff(fields, "reconnect", RadioConfig)
        return RadioConfig(
            port=self.doc.text(fields.require("port"), "radio.port"),
            protocol=protocol,
            baudrate=baudrate,
            debounce=self.duration(fields, "debounce", default_of(RadioConfig, "debounce")),
            cooldown=self.duration(fields, "cooldown", default_of(RadioConfig, "cooldown")),
            ping_interval=ping_interval if protocol == "rflink" else 0.0,
            ping_timeout=self.setting(fields, RadioConfig, "ping_timeout"),
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
        )

    def buttons(self, node: yaml.Node | None, protocol: str) -> tuple[ButtonConfig, ...]:
        buttons: list[ButtonConfig] = []
        id_paths: dict[str, str] = {}
        key_paths: dict[ButtonKey, str] = {}
        for path, item in self.doc.sequence(node, "buttons"):
            fields = self.doc.mapping(item, path, ("id", "name", "match"))
            id_node = fields.require("id")
            button_id = self.doc.text(id_node, fields.key("id"))
            if not _BUTTON_ID.fullmatch(button_id):
                raise self.doc.error(
                    id_node,
                    fields.key("id"),
                    f"{button_id!r} is not a valid button id: "
                    "use 1 to 64 letters, digits, ., - or _",
                )
            if button_id in id_paths:
                raise self.doc.error(
                    id_node,
                    fields.key("id"),
                    f"duplicate button id {button_id!r} (also {id_paths[button_id]}, "
                    f"line {self.doc.lines[id_paths[button_id]]})",
                )
            id_paths[button_id] = fields.key("id")
            name_node = fields.get("name")
            name = button_id if name_node is None else self.doc.text(name_node, fields.key("name"))
            match_node = fields.require("match")
            match = self.match(match_node, fields.key("match"))
            try:
                key = key_from_match(protocol, dict(match))
            except ValueError as exc:
                raise self.doc.error(match_node, fields.key("match"), str(exc)) from None
            if key in key_paths:
                other = key_paths[key]
                raise self.doc.error(
                    match_node,
                    fields.key("match"),
                    f"same button as {other} (line {self.doc.lines[other]}): "
                    "two buttons cannot share one match",
                )
            key_paths[key] = fields.key("match")
            buttons.append(ButtonConfig(id=button_id, name=name, key=key, match=match))
        return tuple(buttons)

    def match(self, node: yaml.Node, path: str) -> tuple[tuple[str, str | int], ...]:
        if not isinstance(node, yaml.MappingNode):
            raise self.doc.error(
                node, path, "must be a mapping such as {protocol: EV1527, id: 0f7499}"
            )
        # key_from_match knows which keys each protocol takes and says so.
        names = [str(key.value) for key, _ in node.value if isinstance(key, yaml.ScalarNode)]
        fields = self.doc.mapping(node, path, names)
        return tuple(
            (name, self.doc.match_value(fields.require(name), fields.key(name))) for name in names
        )

    def apns(self, node: yaml.Node) -> ApnsConfig:
        fields = self.doc.mapping(node, "apns", APNS_KEYS)
        topic_node = fields.require("topic")
        topic = self.doc.text(topic_node, "apns.topic")
        if not _TOPIC.fullmatch(topic):
            raise self.doc.error(
                topic_node,
                "apns.topic",
                f"{topic!r} is not an app bundle id like com.example.doorbell",
            )
        environment = cast(
            Environment,
            self.doc.choice(fields.require("environment"), "apns.environment", ENVIRONMENTS),
        )
        host_node = fields.get("host")
        host = None
        if host_node is not None:
            host = self.doc.url(host_node, "apns.host", {"https": 443}, "https://host:port")
        ca_node = fields.get("ca_file")
        retry_min, retry_max = self.backoff(fields, "retry", ApnsConfig)
        notification_node = fields.get("notification")
        return ApnsConfig(
            topic=topic,
            environment=environment,
            auth=self.auth(fields.require("auth")),
            host=host,
            ca_file=None if ca_node is None else self.file(ca_node, "apns.ca_file"),
            expiration=self.setting(fields, ApnsConfig, "expiration"),
            notification=(
                NotificationConfig()
                if notification_node is None
                else self.notification(notification_node)
            ),
            connect_timeout=self.setting(fields, ApnsConfig, "connect_timeout"),
            request_timeout=self.setting(fields, ApnsConfig, "request_timeout"),
            ping_interval=self.duration(
                fields, "ping_interval", default_of(ApnsConfig, "ping_interval")
            ),
            jwt_refresh=self.jwt_refresh(fields),
            retry_min=retry_min,
            retry_max=retry_max,
            verify_credentials=self.flag(
                fields, "verify_credentials", default_of(ApnsConfig, "verify_credentials")
            ),
        )

    def flag(self, fields: Fields, name: str, default: bool) -> bool:
        node = fields.get(name)
        return default if node is None else self.doc.boolean(node, fields.key(name))

    def jwt_refresh(self, fields: Fields) -> float:
        seconds = self.duration(fields, "jwt_refresh", default_of(ApnsConfig, "jwt_refresh"))
        low, high = JWT_REFRESH_RANGE
        if not low <= seconds <= high:
            raise self.doc.error(
                fields.get("jwt_refresh"),
                "apns.jwt_refresh",
                f"must be between {format_duration(low)} and {format_duration(high)} "
                f"(Apple refuses provider tokens refreshed more often or kept longer), "
                f"not {format_duration(seconds)}",
            )
        return seconds

    def auth(self, node: yaml.Node) -> AuthConfig:
        every_key = {"mode"}.union(*AUTH_KEYS.values())
        fields = self.doc.mapping(node, "apns.auth", every_key)
        mode = self.doc.choice(fields.require("mode"), "apns.auth.mode", tuple(AUTH_KEYS))
        for name in fields.entries:
            if name != "mode" and name not in AUTH_KEYS[mode]:
                owner = next(other for other, keys in AUTH_KEYS.items() if name in keys)
                raise self.doc.error(
                    fields.key_node(name), fields.key(name), f"is for mode {owner}, not {mode}"
                )
        if mode == "token":
            return TokenAuthConfig(
                key_file=self.file(fields.require("key_file"), "apns.auth.key_file"),
                key_id=self.apple_id(
                    fields, "key_id", "key ID (shown with the key in Apple's portal)"
                ),
                team_id=self.apple_id(fields, "team_id", "team ID (shown under Membership)"),
            )
        if mode == "certificate":
            passphrase = fields.get("passphrase_file")
            return CertificateAuthConfig(
                cert_file=self.file(fields.require("cert_file"), "apns.auth.cert_file"),
                passphrase_file=(
                    None
                    if passphrase is None
                    else self.file(passphrase, "apns.auth.passphrase_file")
                ),
            )
        return DelegatedAuthConfig()

    def apple_id(self, fields: Fields, name: str, what: str) -> str:
        node = fields.require(name)
        value = self.doc.text(node, fields.key(name))
        if not _APPLE_ID.fullmatch(value):
            raise self.doc.error(
                node,
                fields.key(name),
                f"{value!r} is not an Apple {what}: it is 10 characters, A-Z and 0-9",
            )
        return value

    def notification(self, node: yaml.Node) -> NotificationConfig:
        fields = self.doc.mapping(node, "apns.notification", section_keys(NotificationConfig))
        defaults = NotificationConfig()
        sound: str | None = defaults.sound
        if "sound" in fields:
            sound_node = fields.get("sound")
            # An explicit null means a silent notification.
            sound = None if sound_node is None else self.doc.text(sound_node, fields.key("sound"))
            if sound is not None and len(sound.encode()) > MAX_SOUND_BYTES:
                raise self.doc.error(
                    sound_node,
                    fields.key("sound"),
                    f"too long ({len(sound.encode())} bytes, at most {MAX_SOUND_BYTES}): "
                    "it is the name of a sound file in the app, or default",
                )
        return NotificationConfig(
            title=self.template(fields, "title", defaults.title),
            body=self.template(fields, "body", defaults.body),
            sound=sound,
            collapsed=self.template(
                fields, "collapsed", defaults.collapsed, placeholders=COLLAPSED_PLACEHOLDERS
            ),
        )

    def outbox(self, node: yaml.Node) -> OutboxConfig:
        fields = self.doc.mapping(node, "outbox", section_keys(OutboxConfig))
        size_node = fields.get("max_size")
        if size_node is None:
            return OutboxConfig()
        key = fields.key("max_size")
        text = self.doc.text(size_node, key)
        match = _SIZE.fullmatch(text)
        if match is None:
            raise self.doc.error(
                size_node, key, f"{text!r} is not a size; use bytes or e.g. 512KiB, 64MiB, 1GiB"
            )
        size = int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()])
        if size < MIN_OUTBOX_SIZE:
            raise self.doc.error(size_node, key, "must be at least 64KiB")
        return OutboxConfig(max_size=size)

    def template(
        self,
        fields: Fields,
        name: str,
        default: str,
        *,
        placeholders: tuple[str, ...] = PLACEHOLDERS,
    ) -> str:
        node = fields.get(name)
        if node is None:
            return default
        path = fields.key(name)
        text = self.doc.text(node, path)
        allowed = ", ".join("{" + p + "}" for p in placeholders)
        try:
            for _, field_name, _, _ in string.Formatter().parse(text):
                if field_name is not None and field_name not in placeholders:
                    shown = "{" + field_name + "}"
                    raise self.doc.error(
                        node,
                        path,
                        f"unknown placeholder {shown}; use {allowed} (and {{{{ }}}} for braces)",
                    )
            text.format(**_SAMPLE)
        except (ValueError, KeyError, IndexError) as exc:
            raise self.doc.error(
                node, path, f"not a valid template ({exc}); write {{{{ and }}}} for braces"
            ) from None
        return text

    def cloud(self, node: yaml.Node) -> CloudConfig:
        fields = self.doc.mapping(node, "cloud", CLOUD_KEYS)
        url = self.doc.url(fields.require("url"), "cloud.url", MQTT_PORTS, "mqtts://host:port")
        prefix_node = fields.get("topic_prefix")
        prefix: str = default_of(CloudConfig, "topic_prefix")
        if prefix_node is not None:
            prefix = self.doc.text(prefix_node, "cloud.topic_prefix")
            if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
                raise self.doc.error(
                    prefix_node,
                    "cloud.topic_prefix",
                    "must be MQTT topic levels without wildcards (+, #) or a leading or trailing /",
                )
        reconnect_min, reconnect_max = self.backoff(fields, "reconnect", CloudConfig)
        return CloudConfig(
            url=url,
            ca_file=self.file(fields.require("ca_file"), "cloud.ca_file"),
            cert_file=self.file(fields.require("cert_file"), "cloud.cert_file"),
            key_file=self.file(fields.require("key_file"), "cloud.key_file"),
            topic_prefix=prefix,
            token_list_key=self.file(fields.require("token_list_key"), "cloud.token_list_key"),
            reconnect_min=reconnect_min,
            reconnect_max=reconnect_max,
            keepalive=self.setting(fields, CloudConfig, "keepalive"),
            connect_timeout=self.setting(fields, CloudConfig, "connect_timeout"),
        )

    def tokens(self, node: yaml.Node | None) -> tuple[StaticToken, ...]:
        tokens: list[StaticToken] = []
        seen: dict[str, str] = {}
        for path, item in self.doc.sequence(node, "tokens"):
            env: Environment | None = None
            if isinstance(item, yaml.MappingNode):
                fields = self.doc.mapping(item, path, ("token", "env"))
                token_node = fields.require("token")
                env_node = fields.get("env")
                if env_node is not None:
                    env = cast(
                        Environment, self.doc.choice(env_node, fields.key("env"), ENVIRONMENTS)
                    )
                token_path = fields.key("token")
            else:
                token_node, token_path = item, path
            token = self.token(token_node, token_path)
            if token in seen:
                raise self.doc.error(
                    token_node,
                    token_path,
                    f"duplicate token {short_token(token)} (also {seen[token]}, "
                    f"line {self.doc.lines[seen[token]]})",
                )
            seen[token] = token_path
            tokens.append(StaticToken(token=token, env=env))
        return tuple(tokens)

    def token(self, node: yaml.Node, path: str) -> str:
        text = self.doc.text(node, path).strip()
        if not is_device_token(text):
            raise self.doc.error(
                node,
                path,
                f"{_preview(text)} ({len(text)} characters) is not a device token: "
                f"a token is an even number ({MIN_TOKEN_HEX} to 200) of hex digits",
            )
        return text.lower()

    def duration(
        self, fields: Fields, name: str, default: float, *, positive: bool = False
    ) -> float:
        node = fields.get(name)
        if node is None:
            return default
        seconds = self.doc.duration(node, fields.key(name))
        if positive and seconds <= 0:
            raise self.doc.error(node, fields.key(name), "must be more than 0")
        return seconds

    def setting(self, fields: Fields, section: type, name: str) -> float:
        """A positive duration, defaulting to what ``section``'s dataclass declares."""
        return self.duration(fields, name, default_of(section, name), positive=True)

    def backoff(self, fields: Fields, prefix: str, section: type) -> tuple[float, float]:
        """``<prefix>_min`` and ``<prefix>_max``: positive, and the first not above the second."""
        low_name, high_name = f"{prefix}_min", f"{prefix}_max"
        low = self.setting(fields, section, low_name)
        high = self.setting(fields, section, high_name)
        if high < low:
            high_node = fields.get(high_name)
            if high_node is not None:
                raise self.doc.error(
                    high_node,
                    fields.key(high_name),
                    f"must not be less than {low_name} ({format_duration(low)})",
                )
            raise self.doc.error(
                fields.get(low_name),
                fields.key(low_name),
                f"must not be more than {high_name} ({format_duration(high)})",
            )
        return low, high

    def file(self, node: yaml.Node, path: str) -> Path:
        """A file the config names; a bare name may come from $CREDENTIALS_DIRECTORY."""
        text = self.doc.text(node, path)
        resolved = resolve_secret_path(text, base_dir=self.base_dir, environ=self.environ)
        if not os.path.exists(resolved):
            places = search_places(text, base_dir=self.base_dir, environ=self.environ)
            if places:
                self.searched[resolved] = places
        return resolved

    def path(self, node: yaml.Node, path: str) -> Path:
        """A directory or socket path; relative ones are relative to the config file."""
        resolved = Path(self.doc.text(node, path)).expanduser()
        return resolved if resolved.is_absolute() else self.base_dir / resolved

    def socket_path(self, node: yaml.Node, path: str) -> Path:
        resolved = self.path(node, path)
        if len(os.fsencode(resolved)) > MAX_SOCKET_PATH:
            raise self.doc.error(
                node,
                path,
                f"too long for a unix socket ({len(os.fsencode(resolved))} bytes, at most "
                f"{MAX_SOCKET_PATH})",
            )
        return resolved
