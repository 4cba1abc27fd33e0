"""Pytest fixtures for a real 3-node RabbitMQ cluster: started once per session, stopped by it.

The cluster is slow to start (tens of seconds), so one serves every test of the
session; each test gets its own gateway (certificate, user, permissions, topics),
so what one test leaves in a durable session queue or a node's retained store
never reaches another.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import PREFIX

from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import GatewayFiles, token_auth, write_config
from testkit.mosquitto import CLOUD_USER
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.rabbitmq import GatewayGrant, RabbitCluster, RabbitNode
from testkit.standin_thread import StandInThread


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory, pki: TestPki) -> Iterator[RabbitCluster]:
    """Three nodes on loopback, joined, MQTT over TLS with certificate login, quorum sessions."""
    root = tmp_path_factory.mktemp("rabbitmq")
    with RabbitCluster(root / "cluster", ca=pki.ca, server=pki.server) as cluster:
        yield cluster
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class RabbitGateway:
    """One test's gateway: its id (the CN of its certificate) and where its files are."""

    id: str
    identity: CertFiles
    files: GatewayFiles

    @property
    def p(self) -> str:
        return f"{PREFIX}/{self.id}"


def new_gateway(
    tmp_path: Path,
    pki: TestPki,
    cluster: RabbitCluster,
    node: RabbitNode,
    apns: StandInThread,
    receiver: FakeReceiver,
    *,
    delegated: bool = False,
    grant: GatewayGrant | None = None,
) -> RabbitGateway:
    """A gateway with a fresh id, its user and permissions on the cluster, connected to ``node``."""
    gateway_id = f"gw-{secrets.token_hex(3)}"
    identity = make_client_cert(pki.ca, tmp_path / "certs", gateway_id)
    cluster.add_gateway(gateway_id, grant)
    cloud: dict[str, Any] = {
        "url": node.url,
        "ca_file": str(pki.ca.cert),
        "cert_file": str(identity.cert),
        "key_file": str(identity.key),
        "topic_prefix": PREFIX,
        "token_list_key": str(pki.token_list_key.public_key),
        "reconnect_min": "0.05s",
        "reconnect_max": "0.5s",
        "keepalive": "5s",
    }
    files = write_config(
        tmp_path,
        port=str(receiver.path),
        apns_url=apns.url,
        ca_file=pki.ca.cert,
        auth={"mode": "delegated"} if delegated else token_auth(pki.auth_key),
        overrides={"gateway": {"id": gateway_id}, "cloud": cloud},
    )
    return RabbitGateway(gateway_id, identity, files)


@pytest.fixture
def rabbit_cloud(rabbit: RabbitCluster, pki: TestPki, tmp_path: Path) -> Iterator[CloudPeer]:
    """The cloud backend on node 1, subscribed to every gateway's topics, answering hello."""
    identity = make_client_cert(pki.ca, tmp_path / "cloud", CLOUD_USER)
    node = rabbit.nodes[0]
    with CloudPeer(
        node.host, node.mqtt_port, ca=pki.ca.cert, identity=identity, subscribe=[f"{PREFIX}/#"]
    ) as peer:
        yield peer
