"""Fixtures shared by the whole suite (each area keeps its own in a fixtures_*.py module)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
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


@pytest.fixture(scope="session", autouse=True)
def no_keys_left_behind(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A green run leaves none of its generated private keys (test PKI, APNs keys) in /tmp.

    pytest keeps the last three runs' temporary directories; this empties this run's at
    its end unless a test failed (then they help to find out why). The directory and
    its lock stay for pytest: tmp_path_retention_policy = "none" would drop the lock
    and let another session running at the same time delete the directory under us.
    """
    yield
    if request.session.testsfailed:
        return
    base = tmp_path_factory.getbasetemp()
    for child in base.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif child.name != ".lock":
            child.unlink(missing_ok=True)


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
