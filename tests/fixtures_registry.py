"""Fixtures for the token registry: the registry process, its broker, a PostgreSQL server.

The broker is configured as docs/mqtt.md says, with one more cloud identity per
registry instance (``registry``, ``registry-2``): the CN is the MQTT client id, so
two instances, or an instance and the test's own cloud peer, need certificates of
their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import cloud_section

from testkit import waiting
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import GATEWAY_ID, DaemonProcess, GatewayFiles, token_auth, write_config
from testkit.mosquitto import CLOUD_USER, MosquittoBroker
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.postgres import PostgresServer
from testkit.registry import RegistryProcess, write_registry_config
from testkit.standin_thread import StandInThread

REGISTRY_USERS = ("registry", "registry-2")
P = f"edgebell/{GATEWAY_ID}"


@pytest.fixture(scope="session")
def registry_identities(pki: TestPki) -> dict[str, CertFiles]:
    return {
        name: make_client_cert(pki.ca, pki.dir / "mqtt", name)
        for name in (*REGISTRY_USERS, CLOUD_USER)
    }


@pytest.fixture
def registry_broker(tmp_path: Path, pki: TestPki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(
        tmp_path / "broker", ca=pki.ca, server=pki.server, more_cloud_users=REGISTRY_USERS
    ) as broker:
        yield broker


@pytest.fixture
def registry(
    tmp_path: Path,
    pki: TestPki,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
) -> Iterator[RegistryProcess]:
    """``edgebell cloud serve`` on SQLite, connected to the broker."""
    config, token, port = write_registry_config(
        tmp_path / "registry",
        pki=pki,
        broker=registry_broker,
        identity=registry_identities["registry"],
    )
    with RegistryProcess(config, token, port) as process:
        yield process


@pytest.fixture
def observer(
    registry_broker: MosquittoBroker, pki: TestPki, registry_identities: dict[str, CertFiles]
) -> Iterator[CloudPeer]:
    """Sees every message under the prefix (what the registry publishes included)."""
    with CloudPeer(
        registry_broker.host,
        registry_broker.port,
        ca=pki.ca.cert,
        identity=registry_identities[CLOUD_USER],
        subscribe=["edgebell/#"],
    ) as peer:
        yield peer


@pytest.fixture
def registry_gateway_files(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    registry_broker: MosquittoBroker,
) -> GatewayFiles:
    """A gateway whose phones come from the registry only."""
    (tmp_path / "gateway").mkdir()
    return write_config(
        tmp_path / "gateway",
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        overrides={"cloud": cloud_section(registry_broker, pki)},
    )


@pytest.fixture
def registry_daemon(registry_gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(registry_gateway_files) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each test makes its own database)."""
    with PostgresServer() as server:
        yield server


def ok(answer: Any) -> dict[str, Any]:
    assert answer.status == 200, answer
    document: dict[str, Any] = answer.document
    return document


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    return waiting.wait_until(predicate, timeout, what or repr(predicate), interval=0.05)
