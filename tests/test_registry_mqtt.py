"""The registry's MQTT side against a real Mosquitto: hello answers and the fleet JWT (delegated).

The test plays a gateway with that gateway's own certificate, so the broker's
ACL applies to it exactly as to a real one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from fixtures_registry import ok

from testkit.cloud_peer import CloudPeer
from testkit.gateway import GATEWAY_ID, random_token
from testkit.mosquitto import MosquittoBroker
from testkit.pki import CertFiles, TestPki, make_client_cert
from testkit.registry import RegistryProcess, write_registry_config

P = f"edgebell/{GATEWAY_ID}"
FLEET = "edgebell/fleet/apns-jwt"


@pytest.fixture
def delegated_registry(
    tmp_path: Path,
    pki: TestPki,
    registry_broker: MosquittoBroker,
    registry_identities: dict[str, CertFiles],
) -> Iterator[RegistryProcess]:
    """A registry that holds the team's APNs key and mints the fleet's provider JWT."""
    config, token, port = write_registry_config(
        tmp_path / "registry",
        pki=pki,
        broker=registry_broker,
        identity=registry_identities["registry"],
        extra={
            "apns": {
                "key_file": str(pki.auth_key.private_key),
                "key_id": pki.auth_key.key_id,
                "team_id": pki.auth_key.team_id,
            }
        },
    )
    with RegistryProcess(config, token, port) as process:
        yield process


@pytest.fixture
def as_gateway(registry_broker: MosquittoBroker, pki: TestPki) -> Iterator[CloudPeer]:
    with CloudPeer(
        registry_broker.host,
        registry_broker.port,
        ca=pki.ca.cert,
        identity=pki.client,
        subscribe=[f"{P}/#", FLEET],
    ) as peer:
        yield peer


def assert_nothing_more(peer: CloudPeer, own: str) -> None:
    """Nothing but the peer's own messages arrived. The broker forwards in order and the
    registry's answers were acknowledged before it counted the hello: a marker the peer
    sends now arrives after any answer."""
    marker = own.rsplit("/", 1)[0] + "/cmd/reply"
    peer.publish(marker, b'{"id": "marker", "ok": true, "detail": ""}')
    peer.wait_for(lambda ms: any(m.topic == marker for m in ms))
    assert [m.topic for m in peer.messages() if m.topic not in (own, marker)] == []


def hello(tokens_ver: int | None, jwt_iat: int | None) -> bytes:
    document = {
        "version": "test",
        "tokens_ver": tokens_ver,
        "jwt_iat": jwt_iat,
        "at": "2026-12-06T14:05:00.000Z",
    }
    return json.dumps(document).encode()


def test_hello_is_answered_with_the_current_list_and_the_fleet_jwt(
    delegated_registry: RegistryProcess, as_gateway: CloudPeer, pki: TestPki
) -> None:
    registry = delegated_registry
    ok(registry.api("PUT", f"/v1/users/alice/phones/{random_token()}", {"env": "sandbox"}))
    ver = ok(registry.api("PUT", f"/v1/gateways/{GATEWAY_ID}", {"owner": "alice"}))["lists"][0][
        "ver"
    ]
    # The fleet JWT, retained for every gateway, verifies with the team's key.
    fleet = as_gateway.wait_message(FLEET).json()
    claims = jwt.decode(fleet["jwt"], pki.auth_key.load_public_key(), algorithms=["ES256"])
    assert claims == {"iss": pki.auth_key.team_id, "iat": fleet["iat"]}
    assert jwt.get_unverified_header(fleet["jwt"])["kid"] == pki.auth_key.key_id

    as_gateway.clear()
    as_gateway.publish(f"{P}/hello", hello(None, None))
    registry.wait_for(lambda s: s["counters"].get("hellos answered") == 1)
    as_gateway.wait_for(lambda ms: {f"{P}/tokens", f"{P}/apns-jwt"} <= {m.topic for m in ms})
    answered = {m.topic: m for m in as_gateway.messages()}
    assert answered[f"{P}/tokens"].payload.count(b".") == 2
    assert json.loads(answered[f"{P}/apns-jwt"].payload) == fleet

    # A gateway that is up to date gets nothing more.
    as_gateway.clear()
    as_gateway.publish(f"{P}/hello", hello(ver, fleet["iat"]))
    registry.wait_for(lambda s: s["counters"].get("hellos answered") == 2)
    assert_nothing_more(as_gateway, f"{P}/hello")
    status = registry.status()
    assert status["counters"]["fleet JWTs minted"] == 1
    assert status["delegated"] is True


def test_a_hello_from_an_unknown_gateway_or_broken_is_refused_and_counted(
    registry: RegistryProcess,
    registry_broker: MosquittoBroker,
    pki: TestPki,
) -> None:
    stranger = make_client_cert(pki.ca, pki.dir / "mqtt", "gw-stranger")
    with CloudPeer(
        registry_broker.host,
        registry_broker.port,
        ca=pki.ca.cert,
        identity=stranger,
        subscribe=["edgebell/gw-stranger/#"],
    ) as peer:
        peer.publish("edgebell/gw-stranger/hello", hello(None, None))
        peer.publish("edgebell/gw-stranger/hello", b'{"version": 3}')
        registry.wait_for(
            lambda s: (
                s["refused"].get("hello: unknown gateway") == 1
                and s["refused"].get("hello: version must be a string of 1 to 256 characters") == 1
            )
        )
        assert_nothing_more(peer, "edgebell/gw-stranger/hello")


def test_a_change_while_the_broker_is_away_is_published_when_it_is_back(
    registry: RegistryProcess, registry_broker: MosquittoBroker, observer: CloudPeer
) -> None:
    ok(registry.api("PUT", f"/v1/users/alice/phones/{random_token()}", {"env": "sandbox"}))
    registry_broker.stop()
    status = registry.wait_for(lambda s: not s["mqtt"]["connected"])
    assert status["state"] == "degraded"
    answer = ok(registry.api("PUT", f"/v1/gateways/{GATEWAY_ID}", {"owner": "alice"}))
    assert answer["lists"][0]["published"] is False
    ver = answer["lists"][0]["ver"]
    status = registry.status()
    assert status["lists_unpublished"] == 1
    assert any("not published" in p for p in status["problems"])

    registry_broker.start()
    status = registry.wait_for(lambda s: s["state"] == "healthy", timeout=30)
    assert status["lists_unpublished"] == 0
    observer.wait_reconnected(2, timeout=30)
    observer.wait_for(lambda ms: any(m.topic == f"{P}/tokens" for m in ms), timeout=30)
    assert ok(registry.api("GET", f"/v1/gateways/{GATEWAY_ID}"))["published_ver"] == ver
