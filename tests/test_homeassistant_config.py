"""The ``home_assistant:`` section: defaults from the gateway id, located errors, check-config."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgebell.config import check_config, load_config
from edgebell.errors import ConfigError
from testkit.pki import TestPki

BASE = """\
gateway: {id: gw-0001}
radio: {port: /dev/null, protocol: rflink}
apns:
  topic: com.example.doorbell
  environment: sandbox
  auth: {mode: certificate, cert_file: apns.pem}
tokens: [aabbccddeeff00112233445566778899]
home_assistant:
"""


def write(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(section), "  "))
    return path


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    home = load_config(write(tmp_path, "url: mqtt://homeassistant.local\n")).home_assistant
    assert home is not None
    assert (home.host, home.port, home.tls) == ("homeassistant.local", 1883, False)
    assert home.discovery_prefix == "homeassistant"
    assert home.node_id == "edgebell_gw_0001"
    assert home.base_topic == "edgebell/gw-0001"
    assert home.max_event_age == 60.0
    assert home.username is None
    assert home.password_file is None


def test_every_key(tmp_path: Path) -> None:
    home = load_config(
        write(
            tmp_path,
            """\
            url: mqtts://broker.lan
            username: doorbell
            password_file: ha.pass
            ca_file: ca.pem
            cert_file: gw.crt
            key_file: gw.key
            discovery_prefix: ha
            node_id: front-gateway
            base_topic: house/doorbell
            max_event_age: 2m
            reconnect_min: 0.5s
            reconnect_max: 30s
            keepalive: 20s
            connect_timeout: 3s
            """,
        )
    ).home_assistant
    assert home is not None
    assert (home.port, home.tls, home.username) == (8883, True, "doorbell")
    assert home.password_file == tmp_path / "ha.pass"
    assert (home.discovery_prefix, home.node_id, home.base_topic) == (
        "ha",
        "front-gateway",
        "house/doorbell",
    )
    assert (home.max_event_age, home.reconnect_min, home.reconnect_max) == (120.0, 0.5, 30.0)


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ("username: x\n", "home_assistant.url", "url"),
        ("url: https://broker.lan\n", "home_assistant.url", "mqtt://"),
        ("url: mqtt://b\npassword_file: p\n", "home_assistant.password_file", "username"),
        ("url: mqtts://b\ncert_file: c\n", "home_assistant.cert_file", "key_file"),
        ("url: mqtt://b\nca_file: c\n", "home_assistant.ca_file", "mqtts://"),
        ("url: mqtt://b\nnode_id: a.b\n", "home_assistant.node_id", "node id"),
        ("url: mqtt://b\nbase_topic: edge/#\n", "home_assistant.base_topic", "wildcards"),
        (
            "url: mqtt://b\nbase_topic: homeassistant/bell\n",
            "home_assistant.base_topic",
            "discovery_prefix",
        ),
        ("url: mqtt://b\nmax_event_age: 0\n", "home_assistant.max_event_age", "more than 0"),
        ("url: mqtt://b\nmax_age: 5s\n", "home_assistant.max_age", ""),
    ],
)
def test_errors_name_the_key_and_line(tmp_path: Path, section: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, section))
    assert info.value.key == key
    assert info.value.line is not None
    assert info.value.line >= 8
    assert words in str(info.value)


def _with_apns_cert(tmp_path: Path, pki: TestPki, section: str) -> Path:
    path = write(tmp_path, section)
    text = path.read_text().replace("apns.pem", str(pki.client.cert.with_name("apns.pem")))
    bundle = pki.client.cert.with_name("apns.pem")
    bundle.write_bytes(pki.client.cert.read_bytes() + pki.client.key.read_bytes())
    bundle.chmod(0o600)
    path.write_text(text)
    return path


def test_check_config_reads_the_password_and_the_tls_files(tmp_path: Path, pki: TestPki) -> None:
    secret = tmp_path / "ha.pass"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    path = _with_apns_cert(
        tmp_path,
        pki,
        f"""\
        url: mqtts://127.0.0.1
        username: doorbell
        password_file: {secret}
        ca_file: {pki.ca.cert}
        cert_file: {pki.client.cert}
        key_file: {pki.client.key}
        """,
    )
    check_config(load_config(path))  # all good: no exception

    secret.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        check_config(load_config(path))
    assert info.value.key == "home_assistant.password_file"

    secret.write_text("")
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="empty"):
        check_config(load_config(path))


def test_check_config_refuses_a_key_of_another_certificate(tmp_path: Path, pki: TestPki) -> None:
    path = _with_apns_cert(
        tmp_path,
        pki,
        f"""\
        url: mqtts://127.0.0.1
        cert_file: {pki.client.cert}
        key_file: {pki.server.key}
        """,
    )
    with pytest.raises(ConfigError) as info:
        check_config(load_config(path))
    assert info.value.key == "home_assistant.key_file"
    assert "does not match" in str(info.value)
