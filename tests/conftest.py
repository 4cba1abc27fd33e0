"""Fixtures shared by the whole suite (each area keeps its own in a fixtures_*.py module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures_apns import apns_standin, apns_standin_thread, pki  # noqa: F401
from fixtures_home_assistant import ha_gateway_files, home_assistant, home_broker  # noqa: F401
from fixtures_mqtt import cloud, cloud_gateway_files, mqtt_broker, mqtt_identities, signer  # noqa: F401
from fixtures_rabbitmq import rabbit, rabbit_cloud  # noqa: F401
from fixtures_radio import fake_receiver, rflink_receiver  # noqa: F401
from fixtures_registry import (  # noqa: F401
    observer,
    postgres,
    registry,
    registry_broker,
    registry_daemon,
    registry_gateway_files,
    registry_identities,
)
from fixtures_service import notify_socket  # noqa: F401

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    GatewayFiles,
    random_token,
    token_auth,
    write_config,
)
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def phones() -> list[str]:
    """Three device tokens of different lengths (Apple does not promise 32 bytes)."""
    return [random_token(32), random_token(32), random_token(100)]


@pytest.fixture
def gateway_files(
    tmp_path: Path,
    pki: TestPki,  # noqa: F811
    apns_standin_thread: StandInThread,  # noqa: F811
    rflink_receiver: FakeReceiver,  # noqa: F811
    phones: list[str],
) -> GatewayFiles:
    """A config for a daemon wired to the stand-in and the pty receiver, token auth."""
    return write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=phones,
    )
