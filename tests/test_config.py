"""Tests for config loading, durations, secret files and check-config."""

from __future__ import annotations

import datetime
import grp
import os
import re
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import platformdirs
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from edgebell.apns.client import target
from edgebell.apns.model import Environment
from edgebell.cli import main as cli_main
from edgebell.config import (
    CertificateAuthConfig,
    Config,
    DelegatedAuthConfig,
    NotificationConfig,
    StaticToken,
    TokenAuthConfig,
    check_config,
    default_config_path,
    default_control_socket,
    default_state_dir,
    load_config,
    yamltree,
)
from edgebell.config import defaults as config_defaults
from edgebell.durations import format_duration, parse_duration
from edgebell.errors import ConfigError
from edgebell.radio.keys import key_from_match
from edgebell.secrets import read_passphrase, read_secret, resolve_secret_path

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
TOKEN = "8b3c0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5"
NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)

MINIMAL = f"""\
gateway:
  id: gw-0001
radio:
  port: /dev/ttyUSB0
  protocol: rflink
apns:
  topic: com.example.doorbell
  environment: production
  auth:
    mode: token
    key_file: AuthKey.p8
    key_id: ABC123DEFG
    team_id: DEF123GHIJ
tokens:
  - {{token: {TOKEN}, env: sandbox}}
"""

CLOUD = """\
cloud:
  url: mqtts://mqtt.example.com
  ca_file: ca.pem
  cert_file: gw.crt
  key_file: gw.key
  token_list_key: token-list.pub
"""

CERT_AUTH = "    mode: certificate\n    cert_file: apns.p12\n    passphrase_file: apns.pass\n"
TOKEN_AUTH = (
    "    mode: token\n    key_file: AuthKey.p8\n    key_id: ABC123DEFG\n    team_id: DEF123GHIJ\n"
)
BUTTON = "buttons:\n  - {id: front, match: {protocol: EV1527, id: 1}}\n"

Write = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write a config file into tmp_path and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def load(path: Path, **environ: str) -> Config:
    return load_config(path, environ=environ)


def error_of(path: Path, **environ: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path, **environ)
    return str(info.value)


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (10, 10.0),
        (1.5, 1.5),
        ("1.5s", 1.5),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1h 30m", 5400.0),
        ("1d", 86400.0),
        ("42", 42.0),
        (" 7.25 ", 7.25),
        (".5s", 0.5),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "s", "10x", "1.2.3s", "10M", "30s1m", "1m1m", "m10", "inf", "nan", True]
)
def test_parse_duration_refuses(value: str | bool) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, "-3s", "-10"])
def test_parse_duration_refuses_negative(value: str | float) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(value)


@given(st.integers(min_value=0, max_value=10**7).map(lambda ms: ms / 1000))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-6)


def test_format_duration_reads_well() -> None:
    assert [format_duration(s) for s in (0, 0.25, 1.5, 90, 3600, 5400)] == [
        "0s",
        "250ms",
        "1.5s",
        "1m30s",
        "1h",
        "1h30m",
    ]


# --- the example and the minimal config -----------------------------------------------------


def test_example_loads() -> None:
    config = load(EXAMPLE)
    assert config.source == EXAMPLE
    assert config.gateway.id == "gw-0001"
    assert config.radio.protocol == "rflink"
    assert config.radio.baudrate == 57600
    assert [b.id for b in config.buttons] == ["front"]
    assert config.buttons[0].key == key_from_match(
        "rflink", {"protocol": "EV1527", "id": "0f7499", "switch": "04"}
    )
    assert isinstance(config.apns.auth, TokenAuthConfig)
    assert config.cloud is not None
    assert config.cloud.port == 8883
    assert config.control_socket == Path("/run/edgebell/edgebell.sock")


def test_example_check_names_first_missing_file_with_its_line() -> None:
    config = load(EXAMPLE)
    text = EXAMPLE.read_text().splitlines()
    line = next(
        number
        for number, content in enumerate(text, 1)
        if not content.lstrip().startswith("#") and "mode: token" in content
    )
    with pytest.raises(ConfigError) as info:
        check_config(config)
    assert info.value.line == line
    assert info.value.key == "apns.auth.key_file"
    assert str(info.value).startswith(f"{EXAMPLE}:{line}: apns.auth.key_file: ")
    assert "APNs auth key edgebell.apns.p8 not found in: " in str(info.value)
    assert f", {EXAMPLE.parent}, /etc/credstore, /run/credstore, " in str(info.value)


def test_minimal_config_loads_with_defaults(write: Write, tmp_path: Path) -> None:
    config = load(write(MINIMAL), STATE_DIRECTORY="/var/lib/edgebell", RUNTIME_DIRECTORY="/run/e")
    assert config.buttons == ()
    assert config.cloud is None
    assert config.tokens == (StaticToken(token=TOKEN, env="sandbox"),)
    assert config.apns.auth == TokenAuthConfig(
        key_file=tmp_path / "AuthKey.p8", key_id="ABC123DEFG", team_id="DEF123GHIJ"
    )
    assert config.apns.host is None
    assert config.apns.ca_file is None
    assert config.apns.expiration == 900
    assert config.apns.notification == NotificationConfig()
    assert config.apns.notification.sound == "default"
    assert (config.apns.connect_timeout, config.apns.request_timeout) == (10, 10)
    assert (config.apns.ping_interval, config.apns.jwt_refresh) == (60, 2400)
    assert (config.apns.retry_min, config.apns.retry_max) == (1, 60)
    sandbox = target(Environment.SANDBOX, config.apns.host)
    assert (sandbox.host, sandbox.port) == ("api.sandbox.push.apple.com", 443)
    assert config.radio.debounce == 1.5
    assert config.radio.cooldown == 10
    assert (config.radio.ping_timeout, config.radio.reconnect_min) == (10, 0.5)
    assert config.radio.reconnect_max == 30
    assert config.state_dir == Path("/var/lib/edgebell")
    assert config.control_socket == Path("/run/e/edgebell.sock")
    assert config.log_level == "info"
    assert config.lines["apns.auth.key_file"] == 11


def test_config_is_frozen_and_lines_do_not_count_for_equality(write: Write) -> None:
    config = load(write(MINIMAL))
    with pytest.raises(AttributeError):
        config.log_level = "debug"  # type: ignore[misc]
    moved = load(write("# a comment moves every line\n" + MINIMAL))
    assert moved.lines["gateway.id"] == config.lines["gateway.id"] + 1
    assert moved == config
    assert "lines" not in repr(config)


def test_static_token_repr_hides_the_token() -> None:
    assert TOKEN not in repr(StaticToken(token=TOKEN, env=None))
    assert "8b3c0e1f…" in repr(StaticToken(token=TOKEN, env=None))


def test_error_at_locates_a_key(write: Write) -> None:
    config = load(write(MINIMAL))
    assert str(config.error_at("radio.port", "cannot open")).endswith(
        "config.yaml:4: radio.port: cannot open"
    )


# --- per-protocol defaults and buttons -----------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "baudrate", "ping_interval", "match"),
    [
        ("rflink", 57600, 60.0, "{protocol: EV1527, id: 0f7499, switch: '04'}"),
        ("rcswitch", 9600, 0.0, "{value: 5393, bits: 24, protocol: 1}"),
        ("lines", 9600, 0.0, "{code: A1B2}"),
    ],
)
def test_defaults_per_protocol(
    write: Write, protocol: str, baudrate: int, ping_interval: float, match: str
) -> None:
    text = replace(MINIMAL, "protocol: rflink", f"protocol: {protocol}")
    text += f"buttons:\n  - {{id: front, match: {match}}}\n"
    config = load(write(text))
    assert config.radio.baudrate == baudrate
    assert config.radio.ping_interval == ping_interval
    assert config.buttons[0].name == "front"


def test_baudrate_and_radio_extensions_override_defaults(write: Write) -> None:
    text = replace(
        MINIMAL,
        "  protocol: rflink\n",
        "  protocol: rflink\n  baudrate: 115200\n  debounce: 250ms\n  cooldown: 1m\n"
        "  ping_interval: 0\n  ping_timeout: 5\n  reconnect_min: 1s\n  reconnect_max: 2m\n",
    )
    radio = load(write(text)).radio
    assert (radio.baudrate, radio.debounce, radio.cooldown) == (115200, 0.25, 60)
    assert (radio.ping_interval, radio.ping_timeout) == (0, 5)
    assert (radio.reconnect_min, radio.reconnect_max) == (1, 120)


def test_match_values_are_kept_as_written(write: Write) -> None:
    text = replace(MINIMAL, "protocol: rflink", "protocol: lines")
    # Unquoted, YAML 1.1 would read 0123 as octal 83 and 1_000 as 1000.
    text += "buttons:\n  - {id: a, name: Back door, match: {code: 0123}}\n"
    text += "  - {id: b, match: {code: 1_000}}\n  - {id: c, match: {code: 77}}\n"
    buttons = load(write(text)).buttons
    assert [b.match for b in buttons] == [
        (("code", "0123"),),
        (("code", "1_000"),),
        (("code", 77),),
    ]
    assert buttons[0].key == (("code", "0123"),)
    assert buttons[0].name == "Back door"


def test_duplicate_button_ids(write: Write) -> None:
    text = MINIMAL + textwrap.dedent("""\
        buttons:
          - id: front
            match: {protocol: EV1527, id: 1}
          - id: front
            match: {protocol: EV1527, id: 2}
        """)
    path = write(text)
    assert error_of(path) == (
        f"{path}:19: buttons[1].id: duplicate button id 'front' (also buttons[0].id, line 17)"
    )


def test_same_match_twice(write: Write) -> None:
    text = MINIMAL + textwrap.dedent("""\
        buttons:
          - id: front
            match: {protocol: EV1527, id: 0f7499, switch: "04"}
          - id: back
            match: {protocol: ev1527, id: "F7499", switch: 4}
        """)
    message = error_of(write(text))
    assert message.startswith(
        f"{write(text)}:20: buttons[1].match: same button as buttons[0].match"
    )


def test_bad_match_is_located_at_the_match(write: Write) -> None:
    text = MINIMAL + "buttons:\n  - id: front\n    match: {protocol: EV1527, switch: 1}\n"
    assert error_of(write(text)).endswith(":18: buttons[0].match: id: required for rflink")


@pytest.mark.parametrize("button_id", ["front door", "'x/y'", "''"])
def test_bad_button_id(write: Write, button_id: str) -> None:
    text = MINIMAL + f"buttons:\n  - id: {button_id}\n    match: {{protocol: X, id: 1}}\n"
    assert ":17: buttons[0].id: " in error_of(write(text))


# --- located errors --------------------------------------------------------------------------


def test_missing_key_names_the_line_of_the_mapping(write: Write) -> None:
    path = write(replace(MINIMAL, "    key_id: ABC123DEFG\n", ""))
    # The auth mapping starts with `mode:` on line 10.
    assert error_of(path) == f"{path}:10: apns.auth.key_id: required"


def test_missing_key_in_flow_mapping(write: Write) -> None:
    text = replace(
        MINIMAL,
        "  auth:\n    mode: token\n    key_file: AuthKey.p8\n",
        "  auth: {mode: token, key_file: AuthKey.p8,\n",
    )
    text = replace(
        text, "    key_id: ABC123DEFG\n    team_id: DEF123GHIJ\n", "    key_id: ABC123DEFG}\n"
    )
    path = write(text)
    assert error_of(path) == f"{path}:9: apns.auth.team_id: required"


def test_missing_section(write: Write) -> None:
    path = write(replace(MINIMAL, "gateway:\n  id: gw-0001\n", ""))
    assert error_of(path) == f"{path}:1: gateway: required"


def test_empty_required_value(write: Write) -> None:
    path = write(replace(MINIMAL, "port: /dev/ttyUSB0", "port:"))
    assert error_of(path) == f"{path}:4: radio.port: required, but empty"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "protocol: rflink",
            "protocol: rflink\n  baudrate: fast",
            ":6: radio.baudrate: must be a whole number, not text",
        ),
        (
            "protocol: rflink",
            "protocol: rflink\n  baudrate: true",
            ":6: radio.baudrate: must be a whole number, not true/false",
        ),
        ("port: /dev/ttyUSB0", "port: [a, b]", ":4: radio.port: must be a string, not a list"),
        (
            "protocol: rflink",
            "protocol: zigbee",
            ":5: radio.protocol: must be one of rflink, rcswitch, lines, not 'zigbee'",
        ),
        (
            "environment: production",
            "environment: prod",
            ":8: apns.environment: must be one of production, sandbox",
        ),
        ("id: gw-0001", "id: {a: 1}", ":2: gateway.id: must be a string, not a mapping"),
        (
            f"tokens:\n  - {{token: {TOKEN}, env: sandbox}}\n",
            "tokens: 5\n",
            ":14: tokens: must be a list, not a number",
        ),
        (
            "gateway:\n",
            "log_level: loud\ngateway:\n",
            ":1: log_level: must be one of debug, info, warning, error",
        ),
        ("id: gw-0001", "id: !!binary aGk=", ":2: gateway.id: unsupported YAML tag"),
    ],
)
def test_wrong_type_names_the_line_of_the_value(
    write: Write, old: str, new: str, expected: str
) -> None:
    path = write(replace(MINIMAL, old, new))
    message = error_of(path)
    assert message.startswith(str(path) + expected), message


def test_unknown_key_suggests_the_close_one(write: Write) -> None:
    path = write(replace(MINIMAL, "protocol: rflink", "protocol: rflink\n  debounse: 1s"))
    assert error_of(path) == f"{path}:6: radio.debounse: unknown key; did you mean 'debounce'?"


def test_unknown_key_lists_the_known_ones(write: Write) -> None:
    path = write(MINIMAL + "frobnicate: 1\n")
    message = error_of(path)
    assert message.startswith(
        f"{path}:16: frobnicate: unknown key (expected one of: apns, buttons,"
    )


def test_key_of_another_auth_mode(write: Write) -> None:
    path = write(
        replace(
            MINIMAL, "    team_id: DEF123GHIJ\n", "    team_id: DEF123GHIJ\n    cert_file: a.pem\n"
        )
    )
    assert error_of(path) == f"{path}:14: apns.auth.cert_file: is for mode certificate, not token"


def test_duplicate_key(write: Write) -> None:
    path = write(
        replace(MINIMAL, "  protocol: rflink\n", "  protocol: rflink\n  port: /dev/ttyACM0\n")
    )
    assert error_of(path) == f"{path}:6: radio.port: duplicate key (first at line 4)"


def test_merge_keys_are_refused(write: Write) -> None:
    path = write(
        replace(MINIMAL, "  protocol: rflink\n", "  protocol: rflink\n  <<: {baudrate: 1}\n")
    )
    assert "radio: merge keys (<<) are not supported" in error_of(path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10x", "not a duration: '10x'"),
        ("-5", "a duration must not be negative"),
        ("yes", "must be a duration like 1.5s or 10m, not true/false"),
    ],
)
def test_bad_duration(write: Write, value: str, message: str) -> None:
    path = write(replace(MINIMAL, "protocol: rflink", f"protocol: rflink\n  cooldown: {value}"))
    assert error_of(path).startswith(f"{path}:6: radio.cooldown: {message}")


def test_zero_is_refused_where_it_makes_no_sense(write: Write) -> None:
    path = write(
        replace(MINIMAL, "environment: production", "environment: production\n  expiration: 0")
    )
    assert error_of(path) == f"{path}:9: apns.expiration: must be more than 0"


def test_backoff_bounds_in_order(write: Write) -> None:
    path = write(replace(MINIMAL, "protocol: rflink", "protocol: rflink\n  reconnect_max: 0.1s"))
    assert (
        error_of(path)
        == f"{path}:6: radio.reconnect_max: must not be less than reconnect_min (500ms)"
    )
    path = write(
        replace(MINIMAL, "environment: production", "environment: production\n  retry_min: 2m")
    )
    assert error_of(path) == f"{path}:9: apns.retry_min: must not be more than retry_max (1m)"


@pytest.mark.parametrize(
    ("value", "ok"), [("20m", True), ("55m", True), ("19m", False), ("1h", False)]
)
def test_jwt_refresh_range(write: Write, value: str, ok: bool) -> None:
    path = write(
        replace(
            MINIMAL, "environment: production", f"environment: production\n  jwt_refresh: {value}"
        )
    )
    if ok:
        assert load(path).apns.jwt_refresh == parse_duration(value)
    else:
        assert error_of(path).startswith(f"{path}:9: apns.jwt_refresh: must be between 20m and 55m")


@pytest.mark.parametrize("gateway_id", ["gw 1", "gw/1", "'gw.1'", "x" * 65, "'ü'"])
def test_bad_gateway_id(write: Write, gateway_id: str) -> None:
    path = write(replace(MINIMAL, "id: gw-0001", f"id: {gateway_id}"))
    assert error_of(path).startswith(f"{path}:2: gateway.id: ")
    assert "is not a valid gateway id" in error_of(path)


def test_gateway_id_digits_stay_as_written(write: Write) -> None:
    assert load(write(replace(MINIMAL, "id: gw-0001", "id: 0001"))).gateway.id == "0001"


@pytest.mark.parametrize(("name", "value"), [("key_id", "abc123defg"), ("team_id", "DEF123")])
def test_apple_ids(write: Write, name: str, value: str) -> None:
    path = write(re.sub(rf"{name}: \w+", f"{name}: {value}", MINIMAL))
    message = error_of(path)
    assert f"apns.auth.{name}: '{value}' is not an Apple" in message
    assert "10 characters, A-Z and 0-9" in message


@pytest.mark.parametrize(
    "token",
    [
        TOKEN + "zz",  # not hex
        TOKEN + "a",  # odd length
        "ab" * 101,  # too long
        "abcd",  # too short
    ],
)
def test_bad_token_never_shown_in_full(write: Write, token: str) -> None:
    path = write(replace(MINIMAL, TOKEN, token))
    message = error_of(path)
    shown = token[: min(8, len(token) // 2)]
    assert message.startswith(f"{path}:15: tokens[0].token: {shown}… ({len(token)} characters)")
    assert "is not a device token" in message
    assert token not in message
    assert token[: max(9, len(token) // 2 + 1)] not in message


def test_duplicate_token_not_shown_in_full(write: Write) -> None:
    path = write(MINIMAL + f"  - {TOKEN.upper()}\n")
    message = error_of(path)
    assert (
        message
        == f"{path}:16: tokens[1]: duplicate token 8b3c0e1f… (also tokens[0].token, line 15)"
    )


def test_tokens_lowercased_and_plain_strings(write: Write) -> None:
    other = "ABCDEF0123456789"
    config = load(write(MINIMAL + f"  - {other}\n  - {{token: '{'0' * 16}'}}\n"))
    assert config.tokens[1:] == (
        StaticToken(token=other.lower(), env=None),
        StaticToken(token="0" * 16, env=None),
    )


def test_yaml_syntax_error_names_its_line(write: Write) -> None:
    path = write(replace(MINIMAL, "  protocol: rflink\n", "  protocol: [rflink\n"))
    message = error_of(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: YAML syntax error: ", message), message
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.line == 6


def test_yaml_syntax_error_does_not_quote_the_line(write: Write) -> None:
    path = write(MINIMAL + f"  - {{token: {TOKEN}\n")
    message = error_of(path)
    assert "YAML syntax error" in message
    assert TOKEN not in message


def test_tab_indentation(write: Write) -> None:
    path = write(replace(MINIMAL, "  port:", "\tport:"))
    assert error_of(path).startswith(f"{path}:4: YAML syntax error: ")


def test_control_character(write: Write) -> None:
    path = write(MINIMAL + "log_level: info\x07\n")
    assert error_of(path) == f"{path}:16: YAML syntax error: character #x0007 is not allowed"


def test_empty_file(write: Write) -> None:
    path = write("# nothing yet\n")
    assert (
        error_of(path) == f"{path}: the file is empty (it needs at least gateway, radio and apns)"
    )


def test_top_level_must_be_a_mapping(write: Write) -> None:
    assert "must be a mapping of sections" in error_of(write("- gateway\n"))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path).startswith(f"{path}: no such configuration file")


def test_file_name_is_the_path_as_given(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(replace(MINIMAL, "id: gw-0001", "id: 'gw 1'"))
    monkeypatch.chdir(path.parent)
    assert error_of(Path("config.yaml")).startswith("config.yaml:2: gateway.id:")


def test_not_utf8(write: Write) -> None:
    path = write(MINIMAL)
    path.write_bytes(path.read_bytes() + b"log_level: \xff\n")
    assert error_of(path) == f"{path}:16: not UTF-8 text"


# --- apns, notification, cloud ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "endpoint"),
    [
        ("https://127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("https://[::1]:8443", ("::1", 8443)),
        ("https://push.example.net", ("push.example.net", 443)),
    ],
)
def test_apns_host_override(write: Write, host: str, endpoint: tuple[str, int]) -> None:
    path = write(
        replace(MINIMAL, "environment: production", f"environment: production\n  host: '{host}'")
    )
    apns = load(path).apns
    assert apns.host == host
    production = target(Environment.PRODUCTION, apns.host)
    assert (production.host, production.port) == endpoint


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.1:8443",
        "https://:8443",
        "https://[::1:8443",
        "https://h:99999",
        "https://h:1/x",
        "https://u:p@h:1",
        "https://a b:1",
    ],
)
def test_apns_host_must_be_an_https_url(write: Write, host: str) -> None:
    path = write(
        replace(MINIMAL, "environment: production", f"environment: production\n  host: '{host}'")
    )
    assert error_of(path).startswith(f"{path}:9: apns.host: ")


def test_notification_templates(write: Write) -> None:
    text = replace(
        MINIMAL,
        "environment: production",
        "environment: production\n  notification:\n    title: '{button_name} ({presses})'\n"
        "    body: 'Ring at {button} {{ok}}'\n    sound: null",
    )
    notification = load(write(text)).apns.notification
    assert notification == NotificationConfig(
        title="{button_name} ({presses})", body="Ring at {button} {{ok}}", sound=None
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("Hi {name}", "unknown placeholder {name}"),
        ("Hi {}", "unknown placeholder {}"),
        ("Hi {button.x}", "unknown placeholder {button.x}"),
        ("Hi {button", "not a valid template"),
        ("Hi {presses:q}", "not a valid template"),
    ],
)
def test_bad_notification_template(write: Write, body: str, message: str) -> None:
    text = replace(
        MINIMAL,
        "environment: production",
        f"environment: production\n  notification: {{body: '{body}'}}",
    )
    path = write(text)
    assert error_of(path).startswith(f"{path}:9: apns.notification.body: {message}")


def test_a_sound_too_long_for_any_push_is_refused_by_check_config(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    def with_sound(sound: str) -> Path:
        return write(
            replace(
                MINIMAL,
                "environment: production",
                f"environment: production\n  notification:\n    sound: {sound}",
            )
        )

    assert load(with_sound("s" * 256)).apns.notification.sound == "s" * 256
    path = with_sound("s" * 3900)  # left no room in the payload: every ring would fail
    assert error_of(path).startswith(
        f"{path}:10: apns.notification.sound: too long (3900 bytes, at most 256)"
    )
    assert cli_main(["check-config", "--config", str(path)]) == 2
    assert "apns.notification.sound: too long" in capsys.readouterr().err


@pytest.mark.parametrize("shape", ["flow", "block"])
def test_deeply_nested_yaml_is_a_config_error_with_either_yaml_parser(
    write: Write,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shape: str,
) -> None:
    depth = 5000
    if shape == "flow":
        path = write(MINIMAL + "log_level: " + "[" * depth + "]" * depth + "\n")
    else:
        path = write(MINIMAL + "log_level:\n" + "".join(" " * i + "- \n" for i in range(depth)))
    for loader in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        # Without libyaml (a PyYAML built from source) the pure-Python parser recurses.
        monkeypatch.setattr(yamltree, "_LOADER", loader)
        message = error_of(path)
        assert message.startswith(f"{path}"), message
        assert "nest" in message, message
        assert cli_main(["check-config", "--config", str(path)]) == 2
        assert "configuration error" in capsys.readouterr().err


def test_certificate_and_delegated_auth(write: Write, tmp_path: Path) -> None:
    text = replace(MINIMAL, TOKEN_AUTH, "    mode: certificate\n    cert_file: apns.p12\n")
    assert load(write(text)).apns.auth == CertificateAuthConfig(
        cert_file=tmp_path / "apns.p12", passphrase_file=None
    )
    text = replace(MINIMAL, TOKEN_AUTH, "    mode: delegated\n")
    path = write(text)
    assert error_of(path) == (
        f"{path}:10: apns.auth.mode: delegated needs the cloud section: "
        "the provider token comes over MQTT"
    )
    config = load(write(text + replace(CLOUD, "mqtts://mqtt.example.com", "'mqtt://[::1]'")))
    assert config.apns.auth == DelegatedAuthConfig()
    assert config.cloud is not None
    assert (config.cloud.host, config.cloud.port, config.cloud.tls) == ("::1", 1883, False)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtts://mqtt.example.com", "mqtt.example.com", 8883, True),
        ("mqtts://mqtt.example.com:8884", "mqtt.example.com", 8884, True),
        ("mqtt://10.0.0.1", "10.0.0.1", 1883, False),
    ],
)
def test_cloud_url(write: Write, url: str, host: str, port: int, tls: bool) -> None:
    config = load(write(MINIMAL + replace(CLOUD, "mqtts://mqtt.example.com", url)))
    assert config.cloud is not None
    assert (config.cloud.host, config.cloud.port, config.cloud.tls) == (host, port, tls)
    assert config.cloud.topic_prefix == "edgebell"


@pytest.mark.parametrize(
    ("key", "value"), [("url", "https://x:1"), ("url", "mqtts://x/y"), ("topic_prefix", "a/#")]
)
def test_bad_cloud_values(write: Write, key: str, value: str) -> None:
    fields = {
        "url": "mqtts://x",
        "ca_file": "ca.pem",
        "cert_file": "c",
        "key_file": "k",
        "token_list_key": "t",
    }
    fields[key] = value
    cloud = "cloud:\n" + "".join(f"  {k}: '{v}'\n" for k, v in fields.items())
    path = write(MINIMAL + cloud)
    assert error_of(path).startswith(f"{path}:{17 + list(fields).index(key)}: cloud.{key}: ")


def test_cloud_requires_its_files(write: Write) -> None:
    path = write(MINIMAL + "cloud:\n  url: mqtts://x\n")
    assert error_of(path) == f"{path}:17: cloud.ca_file: required"


# --- paths: defaults, environment, credentials -----------------------------------------------


def test_default_config_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_config_path({"EDGEBELL_CONFIG": "/x/e.yaml"}) == Path("/x/e.yaml")
    system = tmp_path / "etc-config.yaml"
    monkeypatch.setattr(config_defaults, "SYSTEM_CONFIG_PATH", system)
    assert default_config_path({}) == platformdirs.user_config_path("edgebell") / "config.yaml"
    system.write_text("")
    assert default_config_path({}) == system
    assert default_config_path({"EDGEBELL_CONFIG": ""}) == system


def test_load_config_uses_edgebell_config(write: Write) -> None:
    path = write(MINIMAL)
    assert load_config(environ={"EDGEBELL_CONFIG": str(path)}).source == path


def test_state_and_runtime_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "STATE_DIRECTORY": "/var/lib/edgebell:/var/lib/other",
        "RUNTIME_DIRECTORY": "/run/edgebell",
    }
    assert default_state_dir(env) == Path("/var/lib/edgebell")
    assert default_control_socket(env) == Path("/run/edgebell/edgebell.sock")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_state_dir({}) == tmp_path / "state" / "edgebell"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert default_control_socket({}) == runtime / "edgebell" / "edgebell.sock"


def test_configured_paths_are_relative_to_the_config_file(write: Write, tmp_path: Path) -> None:
    text = MINIMAL + "state_dir: state\ncontrol_socket: run/e.sock\nlog_level: DEBUG\n"
    config = load(write(text), STATE_DIRECTORY="/ignored")
    assert config.state_dir == tmp_path / "state"
    assert config.control_socket == tmp_path / "run" / "e.sock"
    assert config.log_level == "debug"


def test_socket_path_length(write: Write) -> None:
    path = write(MINIMAL + f"control_socket: /run/{'x' * 120}.sock\n")
    assert "control_socket: too long for a unix socket" in error_of(path)


def test_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "AuthKey.p8").write_text("")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    base = tmp_path / "etc"
    assert (
        resolve_secret_path("AuthKey.p8", base_dir=base, environ=env) == credentials / "AuthKey.p8"
    )
    # Not there: next to the config; a path with a slash never looks in the credentials dir.
    assert resolve_secret_path("other.p8", base_dir=base, environ=env) == base / "other.p8"
    assert resolve_secret_path("./AuthKey.p8", base_dir=base, environ=env) == base / "AuthKey.p8"
    assert resolve_secret_path("/k/AuthKey.p8", base_dir=base, environ=env) == Path("/k/AuthKey.p8")
    assert resolve_secret_path("AuthKey.p8", base_dir=base, environ={}) == base / "AuthKey.p8"


def test_credentials_directory_in_config(write: Write, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "AuthKey.p8").write_text("")
    config = load(write(MINIMAL), CREDENTIALS_DIRECTORY=str(credentials))
    assert isinstance(config.apns.auth, TokenAuthConfig)
    assert config.apns.auth.key_file == credentials / "AuthKey.p8"


# --- secret files ----------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_read_secret(tmp_path: Path) -> None:
    path = write_file(tmp_path / "key", b"SECRET-CONTENT", 0o400)
    assert read_secret(path, what="key") == b"SECRET-CONTENT"


def test_group_readable_secret_refused_with_the_one_rule(tmp_path: Path) -> None:
    # Issue 10: 0640 was accepted while the hint and the docs said owner only.
    path = write_file(tmp_path / "key", b"SECRET-CONTENT", 0o640)
    with pytest.raises(ConfigError) as info:
        read_secret(path, what="APNs auth key")
    group = grp.getgrgid(path.stat().st_gid).gr_name
    assert str(info.value) == (
        f"APNs auth key {path} is open to group {group} (mode 0640); a key is for its owner "
        f"alone: chmod 600 {path} (keep it root-owned in /etc/credstore for the service, "
        "or owned by the user that runs edgebell)"
    )


def test_a_fifo_as_key_file_is_refused_without_opening_it(tmp_path: Path) -> None:
    # Issue 10: opened before the regular-file check, a FIFO hung check-config and run.
    fifo = tmp_path / "AuthKey.p8"
    os.mkfifo(fifo, 0o600)
    done: list[str] = []

    def read() -> None:
        with pytest.raises(ConfigError) as info:
            read_secret(fifo, what="APNs auth key")
        done.append(str(info.value))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    if not done:  # unblock the stuck open() so the thread ends
        with open(fifo, "wb"):
            pass
    assert done == [f"APNs auth key {fifo} is not a regular file (a FIFO): refused without reading"]


def test_read_passphrase_drops_only_the_line_ending(tmp_path: Path) -> None:
    path = write_file(tmp_path / "pass", b" s3cret \r\n")
    assert read_passphrase(path) == b" s3cret "


def test_world_readable_secret_refused(tmp_path: Path) -> None:
    path = write_file(tmp_path / "key", b"SECRET-CONTENT", 0o644)
    with pytest.raises(ConfigError) as info:
        read_secret(path, what="APNs auth key")
    assert str(info.value) == (
        f"APNs auth key {path} is open to other users (mode 0644); a key is for its owner "
        f"alone: chmod 600 {path} (keep it root-owned in /etc/credstore for the service, "
        "or owned by the user that runs edgebell)"
    )
    assert "SECRET-CONTENT" not in str(info.value)


def test_missing_and_unreadable_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret(tmp_path / "missing", what="key")
    with pytest.raises(ConfigError, match="is not a regular file"):
        read_secret(tmp_path, what="key")


# --- check_config ----------------------------------------------------------------------------


def pem_private(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate(
    key: ec.EllipticCurvePrivateKey, *, days: int = 365, start: datetime.datetime = NOW
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-0001")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start - datetime.timedelta(days=1))
        .not_valid_after(start + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check(path: Path, **environ: str) -> list[str]:
    return check_config(load(path, **environ), now=NOW)


def check_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        check(path)
    return str(info.value)


def test_real_p256_key_passes(write: Write, tmp_path: Path) -> None:
    write_file(tmp_path / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())))
    assert check(write(MINIMAL + BUTTON)) == []


def test_p256_key_from_credentials_directory(write: Write, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    write_file(
        credentials / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())), 0o400
    )
    assert check(write(MINIMAL + BUTTON), CREDENTIALS_DIRECTORY=str(credentials)) == []


def test_world_readable_key_refused_by_check(write: Write, tmp_path: Path) -> None:
    write_file(tmp_path / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())), 0o644)
    path = write(MINIMAL + BUTTON)
    message = check_error(path)
    assert message.startswith(f"{path}:11: apns.auth.key_file: APNs auth key ")
    assert "chmod 600" in message
    assert "PRIVATE KEY" not in message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (lambda: pem_private(rsa.generate_private_key(65537, 2048)), "holds another kind of key"),
        (lambda: pem_private(ec.generate_private_key(ec.SECP384R1())), "holds another kind of key"),
        (lambda: b"not a key", "is not the AuthKey_XXXXXXXXXX.p8 file"),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "is encrypted",
        ),
    ],
)
def test_wrong_apns_key_fails(
    write: Write, tmp_path: Path, data: Callable[[], bytes], problem: str
) -> None:
    key = write_file(tmp_path / "AuthKey.p8", data())
    path = write(MINIMAL + BUTTON)
    assert check_error(path).startswith(f"{path}:11: apns.auth.key_file: {key} {problem}")


def test_missing_apns_key(write: Write, tmp_path: Path) -> None:
    path = write(MINIMAL + BUTTON)
    assert check_error(path) == (
        f"{path}:11: apns.auth.key_file: APNs auth key AuthKey.p8 not found in: the service's "
        f"credentials ($CREDENTIALS_DIRECTORY is not set here), {tmp_path}, /etc/credstore, "
        "/run/credstore, /usr/local/lib/credstore, /usr/lib/credstore, /lib/credstore "
        "(keys belong in /etc/credstore, mode 0600: docs/operations.md)"
    )


def cloud_files(tmp_path: Path) -> ec.EllipticCurvePrivateKey:
    """Valid APNs key and cloud files in tmp_path; returns the gateway key."""
    write_file(tmp_path / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    write_file(tmp_path / "ca.pem", pem_cert(certificate(ca_key)), 0o644)
    gateway_key = ec.generate_private_key(ec.SECP256R1())
    write_file(tmp_path / "gw.crt", pem_cert(certificate(gateway_key)), 0o644)
    write_file(tmp_path / "gw.key", pem_private(gateway_key))
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_file(tmp_path / "token-list.pub", pem, 0o644)
    return gateway_key


def test_cloud_files_pass(write: Write, tmp_path: Path) -> None:
    cloud_files(tmp_path)
    assert check(write(MINIMAL + CLOUD + BUTTON)) == []


def test_token_list_key_must_be_ed25519_public(write: Write, tmp_path: Path) -> None:
    cloud_files(tmp_path)
    path = write(MINIMAL + CLOUD + BUTTON)
    rsa_public = (
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    write_file(tmp_path / "token-list.pub", rsa_public, 0o644)
    assert check_error(path).startswith(f"{path}:21: cloud.token_list_key: ")
    assert "is not an Ed25519 public key" in check_error(path)
    write_file(
        tmp_path / "token-list.pub", pem_private(ed25519.Ed25519PrivateKey.generate()), 0o600
    )
    assert "holds a private key" in check_error(path)


def test_cloud_ca_must_be_pem_certificates(write: Write, tmp_path: Path) -> None:
    cloud_files(tmp_path)
    path = write(MINIMAL + CLOUD + BUTTON)
    write_file(tmp_path / "ca.pem", b"junk", 0o644)
    assert (
        check_error(path)
        == f"{path}:18: cloud.ca_file: {tmp_path / 'ca.pem'} holds no PEM certificate"
    )


def test_cloud_key_checks(write: Write, tmp_path: Path) -> None:
    gateway_key = cloud_files(tmp_path)
    path = write(MINIMAL + CLOUD + BUTTON)
    (tmp_path / "gw.key").chmod(0o604)
    assert "cloud.key_file: gateway key" in check_error(path)
    assert "chmod 600" in check_error(path)
    write_file(tmp_path / "gw.key", pem_private(ec.generate_private_key(ec.SECP256R1())))
    assert check_error(path).endswith("the private key does not match the certificate")
    encrypted = gateway_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    write_file(tmp_path / "gw.key", encrypted)
    assert "the private key is encrypted (decrypt it" in check_error(path)


def test_certificates_expiring_and_expired(write: Write, tmp_path: Path) -> None:
    gateway_key = cloud_files(tmp_path)
    path = write(MINIMAL + CLOUD + BUTTON)
    write_file(tmp_path / "gw.crt", pem_cert(certificate(gateway_key, days=10)), 0o644)
    assert check(path) == [
        f"{path}:19: cloud.cert_file: {tmp_path / 'gw.crt'}: the certificate expires on 2030-01-11"
    ]
    write_file(tmp_path / "gw.crt", pem_cert(certificate(gateway_key, days=-1)), 0o644)
    assert check_error(path).endswith("the certificate expired on 2029-12-31")


def test_certificate_auth_p12_with_passphrase(write: Write, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    p12 = pkcs12.serialize_key_and_certificates(
        b"apns", key, certificate(key), None, serialization.BestAvailableEncryption(b"s3cret")
    )
    write_file(tmp_path / "apns.p12", p12)
    write_file(tmp_path / "apns.pass", b"s3cret\n")
    path = write(replace(MINIMAL, TOKEN_AUTH, CERT_AUTH) + BUTTON)
    assert check(path) == []
    write_file(tmp_path / "apns.pass", b"wrong\n")
    assert "a .p12 that the passphrase in passphrase_file opens" in check_error(path)
    (tmp_path / "apns.pass").chmod(0o644)
    assert check_error(path).startswith(f"{path}:12: apns.auth.passphrase_file: passphrase file")


def test_certificate_auth_pem_with_key(write: Write, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    write_file(tmp_path / "apns.pem", pem_cert(certificate(key)) + pem_private(key))
    auth = "    mode: certificate\n    cert_file: apns.pem\n"
    path = write(replace(MINIMAL, TOKEN_AUTH, auth) + BUTTON)
    assert check(path) == []
    write_file(tmp_path / "apns.pem", pem_cert(certificate(key)))
    assert (
        check_error(path)
        == f"{path}:11: apns.auth.cert_file: {tmp_path / 'apns.pem'} holds no readable PEM "
        "private key"
    )
    write_file(tmp_path / "apns.pem", b"\x00junk")
    assert "is neither PEM (certificate and key) nor a .p12 without passphrase" in check_error(path)


def test_apns_ca_file_checked(write: Write, tmp_path: Path) -> None:
    write_file(tmp_path / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())))
    text = replace(
        MINIMAL,
        "environment: production",
        "environment: production\n  host: https://[::1]:8443\n  ca_file: test-ca.pem",
    )
    path = write(text + BUTTON)
    assert (
        check_error(path)
        == f"{path}:10: apns.ca_file: CA file test-ca.pem not found in: the service's credentials "
        f"($CREDENTIALS_DIRECTORY is not set here), {tmp_path}, /etc/credstore, /run/credstore, "
        "/usr/local/lib/credstore, /usr/lib/credstore, /lib/credstore"
    )
    write_file(
        tmp_path / "test-ca.pem",
        pem_cert(certificate(ec.generate_private_key(ec.SECP256R1()))),
        0o644,
    )
    assert check(path) == [f"{path}:9: apns.host: pushes go to https://[::1]:8443, not to Apple"]


def test_warnings(write: Write, tmp_path: Path) -> None:
    write_file(tmp_path / "AuthKey.p8", pem_private(ec.generate_private_key(ec.SECP256R1())))
    text = replace(MINIMAL, "protocol: rflink", "protocol: lines\n  ping_interval: 30s")
    text = replace(text, f"  - {{token: {TOKEN}, env: sandbox}}\n", "")
    path = write(text)
    warnings = check(path)
    assert warnings == [
        f"{path}: buttons: no buttons: nothing will ring "
        "(`edgebell learn` shows the match: of each button pressed)",
        f"{path}:15: tokens: neither cloud nor tokens is set: a ring notifies nobody",
        f"{path}:6: radio.ping_interval: ignored: lines receivers do not answer pings",
    ]
    assert load(path).radio.ping_interval == 0


def test_outbox_max_size_takes_bytes_or_units_and_refuses_tiny_or_bad_sizes(
    write: Write,
) -> None:
    assert load(write(MINIMAL)).outbox.max_size is None
    assert load(write(MINIMAL + "outbox: {max_size: 64MiB}\n")).outbox.max_size == 64 << 20
    assert load(write(MINIMAL + "outbox: {max_size: 512KB}\n")).outbox.max_size == 512 << 10
    assert load(write(MINIMAL + "outbox: {max_size: 1048576}\n")).outbox.max_size == 1 << 20
    assert "outbox.max_size: must be at least 64KiB" in error_of(
        write(MINIMAL + "outbox: {max_size: 1KiB}\n")
    )
    assert "outbox.max_size: 'lots' is not a size" in error_of(
        write(MINIMAL + "outbox:\n  max_size: lots\n")
    )


def test_collapsed_notification_text_knows_rings_and_last_at(write: Write) -> None:
    text = MINIMAL.replace(
        "  environment: production\n",
        "  environment: production\n"
        '  notification: {collapsed: "{rings}x {button_name} ({last_at})"}\n',
    )
    assert load(write(text)).apns.notification.collapsed == "{rings}x {button_name} ({last_at})"
    bad = text.replace("({last_at})", "({when})")
    assert "apns.notification.collapsed: unknown placeholder {when}" in error_of(write(bad))
    # {rings} means nothing in the body of a single ring's push.
    single = MINIMAL.replace(
        "  environment: production\n",
        '  environment: production\n  notification: {body: "{rings} rings"}\n',
    )
    assert "apns.notification.body: unknown placeholder {rings}" in error_of(write(single))
