"""Pytest fixtures for the cloud sync: a real Mosquitto (TLS, client certs, the ACL), the cloud.

The broker runs per test on a free 127.0.0.1 port with its own config and the
ACL of docs/mqtt.md; ``cloud`` is the backend's side (its own certificate, every
gateway's topics); ``signer`` signs token lists as the cloud does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebell import control
from edgebell.cloud import tools
from testkit.apns_standin import ReceivedPush
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    GATEWAY_ID,
    DaemonProcess,
    GatewayFiles,
    token_auth,
    write_config,
)
from testkit.mosquitto import CLOUD_USER, MosquittoBroker
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.standin_thread import StandInThread

PREFIX = "edgebell"
P = f"{PREFIX}/{GATEWAY_ID}"
FLEET_JWT = f"{PREFIX}/fleet/apns-jwt"
OTHER_GATEWAY = "gw-other"


@dataclass(frozen=True, slots=True)
class MqttIdentities:
    """Client certificates from the session CA: the cloud backend and a second gateway."""

    cloud: CertFiles
    other_gateway: CertFiles


@pytest.fixture(scope="session")
def mqtt_identities(pki: TestPki) -> MqttIdentities:
    return MqttIdentities(
        cloud=make_client_cert(pki.ca, pki.dir / "mqtt", CLOUD_USER),
        other_gateway=make_client_cert(pki.ca, pki.dir / "mqtt", OTHER_GATEWAY),
    )


@pytest.fixture
def mqtt_broker(tmp_path: Path, pki: TestPki) -> Iterator[MosquittoBroker]:
    """Mosquitto for this test: require_certificate, CN as user and client id, the ACL."""
    with MosquittoBroker(tmp_path / "broker", ca=pki.ca, server=pki.server) as broker:
        yield broker


@pytest.fixture
def cloud(
    mqtt_broker: MosquittoBroker, pki: TestPki, mqtt_identities: MqttIdentities
) -> Iterator[CloudPeer]:
    """The cloud backend, connected and subscribed to every gateway's topics."""
    with connect_cloud(mqtt_broker, pki, mqtt_identities) as peer:
        yield peer


def connect_cloud(
    broker: MosquittoBroker,
    pki: TestPki,
    identities: MqttIdentities,
    *,
    clean_session: bool = True,
) -> CloudPeer:
    return CloudPeer(
        broker.host,
        broker.port,
        ca=pki.ca.cert,
        identity=identities.cloud,
        subscribe=[f"{PREFIX}/#"],
        clean_session=clean_session,
    )


class Signer:
    """Signs token lists as the cloud backend does; versions are epoch ms, strictly growing."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._ver = int(time.time() * 1000)

    def next_ver(self) -> int:
        self._ver += 1
        return self._ver

    def sign(
        self,
        tokens: Sequence[Mapping[str, Any]],
        *,
        ver: int | None = None,
        aud: str = GATEWAY_ID,
        **claims: Any,
    ) -> str:
        document = {"aud": aud, "ver": ver or self.next_ver(), "tokens": list(tokens), **claims}
        return tools.sign_token_list(tools.token_list_claims(document), self._key)


@pytest.fixture
def signer(pki: TestPki) -> Signer:
    """The cloud's signer: its key is the one the gateways' cloud.token_list_key names."""
    return Signer(tools.load_signing_key(pki.token_list_key.private_key))


def entry(
    token: str,
    *,
    env: str = "sandbox",
    user: str = "alice",
    registered_at: int = 1_700_000_000_000,
    buttons: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One token-list entry as the cloud writes it."""
    item: dict[str, Any] = {
        "token": token,
        "env": env,
        "user": user,
        "registered_at": registered_at,
    }
    if buttons is not None:
        item["buttons"] = list(buttons)
    return item


def cloud_section(broker: MosquittoBroker, pki: TestPki, **extra: Any) -> dict[str, Any]:
    """The ``cloud:`` config of the test gateway, with test-sized reconnect backoff."""
    return {
        "url": broker.url,
        "ca_file": str(pki.ca.cert),
        "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key),
        "topic_prefix": PREFIX,
        "token_list_key": str(pki.token_list_key.public_key),
        "reconnect_min": "0.05s",
        "reconnect_max": "0.5s",
        "keepalive": "5s",
        **extra,
    }


@pytest.fixture
def cloud_gateway_files(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    mqtt_broker: MosquittoBroker,
) -> GatewayFiles:
    """A gateway whose phones come from the cloud only (no static tokens), token auth."""
    return write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        overrides={"cloud": cloud_section(mqtt_broker, pki)},
    )


def ring(daemon: DaemonProcess, button: str = "front") -> str:
    """Ring by hand through the control socket; the ring id."""
    answer = control.request(daemon.files.control_socket, {"cmd": "ring", "button": button})
    assert answer.get("ok"), answer
    ring_id: str = answer["ring_id"]
    return ring_id


def wait_list(daemon: DaemonProcess, ver: int, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the daemon uses token list ``ver``; its status."""
    return daemon.wait_status(lambda s: s["tokens"]["ver"] == ver, timeout)


def pushes_for(apns: StandInThread, ring_id: str) -> list[ReceivedPush]:
    return [p for p in apns.responses() if p.json()["edgebell"]["ring_id"] == ring_id]


def publish_list(cloud: CloudPeer, jws: str) -> None:
    """Publish a signed list as the cloud does: retained on ``P/tokens``."""
    cloud.publish(f"{P}/tokens", jws, retain=True)
