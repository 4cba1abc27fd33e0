"""Pytest fixtures for Home Assistant: the home's Mosquitto, Home Assistant's side, a gateway.

The broker runs per test on free 127.0.0.1 ports (plain MQTT and TLS from the
session CA) with password users; ``home_assistant`` is the Home Assistant stand-in
(persistent session, so events published while it reconnects still reach it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import GatewayFiles, random_token, token_auth, write_config
from testkit.ha_peer import HomeAssistantPeer
from testkit.home_broker import GATEWAY_USER, HA_USER, HomeBroker
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread

NODE_ID = "edgebell_gw_test"
BASE = "edgebell/gw-test"
AVAILABILITY = f"{BASE}/availability"


@pytest.fixture
def home_broker(tmp_path: Path, pki: TestPki) -> Iterator[HomeBroker]:
    with HomeBroker(tmp_path / "home-broker", tls=(pki.ca, pki.server)) as broker:
        yield broker


def connect_home_assistant(broker: HomeBroker, **kwargs: Any) -> HomeAssistantPeer:
    return HomeAssistantPeer(
        broker.host,
        broker.port,
        username=HA_USER,
        password=broker.users[HA_USER],
        clean_session=False,
        **kwargs,
    ).connect()


@pytest.fixture
def home_assistant(home_broker: HomeBroker) -> Iterator[HomeAssistantPeer]:
    peer = connect_home_assistant(home_broker)
    try:
        yield peer
    finally:
        peer.close()


def home_assistant_section(broker: HomeBroker, **extra: Any) -> dict[str, Any]:
    """The gateway's ``home_assistant:`` section, with test-sized reconnect backoff."""
    return {
        "url": broker.url,
        "username": GATEWAY_USER,
        "password_file": str(broker.password_files[GATEWAY_USER]),
        "reconnect_min": "0.05s",
        "reconnect_max": "0.5s",
        "keepalive": "5s",
        **extra,
    }


@pytest.fixture
def ha_gateway_files(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    home_broker: HomeBroker,
) -> GatewayFiles:
    """A gateway with static tokens, no cloud section, and the home broker."""
    return write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=[random_token()],
        overrides={"home_assistant": home_assistant_section(home_broker)},
    )
