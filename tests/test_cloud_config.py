"""The ``cloud:`` section's extension keys: reconnect backoff, keepalive, connect timeout."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgebell.config import load_config
from edgebell.errors import ConfigError

BASE = """\
gateway: {id: gw-1}
radio: {port: /dev/null, protocol: rflink}
apns:
  topic: com.example.doorbell
  environment: sandbox
  auth: {mode: delegated}
cloud:
  url: mqtts://broker.example.com
  ca_file: ca.pem
  cert_file: gw.crt
  key_file: gw.key
  token_list_key: list.pub
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent(extra), "  "))
    return path


def test_defaults_retry_forever_from_one_second_to_a_minute(tmp_path: Path) -> None:
    cloud = load_config(write(tmp_path)).cloud
    assert cloud is not None
    assert (cloud.reconnect_min, cloud.reconnect_max) == (1.0, 60.0)
    assert (cloud.keepalive, cloud.connect_timeout) == (60.0, 10.0)
    assert (cloud.host, cloud.port, cloud.tls) == ("broker.example.com", 8883, True)


def test_extension_keys_take_durations(tmp_path: Path) -> None:
    cloud = load_config(
        write(
            tmp_path,
            """\
            reconnect_min: 250ms
            reconnect_max: 2m
            keepalive: 30s
            connect_timeout: 5
            """,
        )
    ).cloud
    assert cloud is not None
    assert (cloud.reconnect_min, cloud.reconnect_max) == (0.25, 120.0)
    assert (cloud.keepalive, cloud.connect_timeout) == (30.0, 5.0)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("reconnect_min: 10s\nreconnect_max: 5s\n", "cloud.reconnect_max"),
        ("keepalive: 0\n", "cloud.keepalive"),
        ("connect_timeout: -1\n", "cloud.connect_timeout"),
        ("reconect_min: 1s\n", "cloud.reconect_min"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, extra: str, key: str) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert info.value.line is not None
    assert info.value.line > 7
