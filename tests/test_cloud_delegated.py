"""Delegated APNs auth: no Apple key on the gateway, the cloud's fleet JWT over MQTT."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fixtures_mqtt import FLEET_JWT, Signer, cloud_section, entry, publish_list, ring, wait_list

from edgebell.cloud.tools import fleet_message, mint_apns_jwt
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    KEY_ID,
    TEAM_ID,
    DaemonProcess,
    GatewayFiles,
    random_token,
    write_config,
)
from testkit.mosquitto import MosquittoBroker
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread
from testkit.waiting import wait_until


@pytest.fixture
def delegated_files(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    mqtt_broker: MosquittoBroker,
) -> GatewayFiles:
    return write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth={"mode": "delegated"},
        overrides={"cloud": cloud_section(mqtt_broker, pki)},
    )


def publish_jwt(cloud: CloudPeer, pki: TestPki, iat: int) -> str:
    """Mint a provider JWT as the cloud does and publish it, retained, to the fleet."""
    token = mint_apns_jwt(pki.auth_key.private_key, KEY_ID, TEAM_ID, iat=iat)
    cloud.publish(FLEET_JWT, fleet_message(token), retain=True)
    return token


def wait_log(daemon: DaemonProcess, text: str, timeout: float = 10.0) -> None:
    wait_until(lambda: text in daemon.log_text(), timeout, f"{text!r} logged")


def authorizations(apns: StandInThread, ring_id: str) -> set[str]:
    apns.wait_for(lambda s: any(p.json()["edgebell"]["ring_id"] == ring_id for p in s.received), 10)
    return {
        p.headers["authorization"]
        for p in apns.received()
        if p.json()["edgebell"]["ring_id"] == ring_id
    }


def test_pushes_carry_the_clouds_jwt_and_a_newer_one_is_used_once_published(
    delegated_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    pki: TestPki,
    apns_standin_thread: StandInThread,
) -> None:
    assert ".p8" not in delegated_files.config.read_text()  # no Apple key on this gateway
    now = int(time.time())
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(random_token())], ver=ver))
    first = publish_jwt(cloud, pki, now - 120)
    with DaemonProcess(delegated_files) as daemon:
        status = daemon.wait_status(lambda s: s["cloud"]["apns_jwt_iat"] == now - 120)
        wait_list(daemon, ver)
        assert status["apns"]["auth"] == "delegated"
        # The stand-in verifies each JWT with the team's key, as Apple would.
        assert authorizations(apns_standin_thread, ring(daemon)) == {f"bearer {first}"}

        second = publish_jwt(cloud, pki, now)
        daemon.wait_status(lambda s: s["cloud"]["apns_jwt_iat"] == now)
        assert authorizations(apns_standin_thread, ring(daemon)) == {f"bearer {second}"}

        publish_jwt(cloud, pki, now - 600)  # an older one (a replay) is not taken
        wait_log(daemon, f"iat {now - 600} is not newer")
        assert authorizations(apns_standin_thread, ring(daemon)) == {f"bearer {second}"}
        assert daemon.status()["cloud"]["apns_jwt_iat"] == now
        assert daemon.stop() == 0
        log = daemon.log_text()
    assert "eyJ" not in log  # no JWT in the log


def test_a_ring_before_the_first_jwt_goes_out_when_it_arrives(
    delegated_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    pki: TestPki,
    apns_standin_thread: StandInThread,
) -> None:
    phone = random_token()
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(phone)], ver=ver))
    with DaemonProcess(delegated_files) as daemon:
        status = wait_list(daemon, ver)
        assert any("provider token" in p for p in status["problems"])
        ring_id = ring(daemon)
        daemon.wait_status(lambda s: s["outbox"]["pending"] == 1)
        assert apns_standin_thread.received() == []
        token = publish_jwt(cloud, pki, int(time.time()))
        assert authorizations(apns_standin_thread, ring_id) == {f"bearer {token}"}
        daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
        assert not any("provider token" in p for p in daemon.status()["problems"])


def test_the_last_jwt_is_kept_for_a_restart_while_the_broker_is_away(
    delegated_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    mqtt_broker: MosquittoBroker,
) -> None:
    phone = random_token()
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(phone)], ver=ver))
    iat = int(time.time())
    token = publish_jwt(cloud, pki, iat)
    with DaemonProcess(delegated_files) as first:
        first.wait_status(lambda s: s["cloud"]["apns_jwt_iat"] == iat)
        assert first.stop() == 0
    mqtt_broker.stop()
    with DaemonProcess(delegated_files) as second:
        status = second.status()
        assert status["cloud"]["connected"] is False
        assert status["cloud"]["apns_jwt_iat"] == iat
        assert authorizations(apns_standin_thread, ring(second)) == {f"bearer {token}"}


def test_credentials_are_proven_again_with_each_new_fleet_jwt(
    delegated_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    pki: TestPki,
    apns_standin_thread: StandInThread,
) -> None:
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(random_token())], ver=ver))
    with DaemonProcess(delegated_files) as daemon:
        status = wait_list(daemon, ver)
        # No JWT yet: nothing proven, and status says so instead of "healthy".
        assert status["apns"]["credentials"]["state"] == "not yet proven"
        assert status["state"] == "degraded"
        publish_jwt(cloud, pki, int(time.time()) - 60)
        status = daemon.wait_status(
            lambda s: s["apns"]["credentials"]["state"] == "verified", timeout=20
        )
        first = status["apns"]["credentials"]["verified_at"]
        publish_jwt(cloud, pki, int(time.time()))
        daemon.wait_status(lambda s: s["apns"]["credentials"]["verified_at"] != first, timeout=20)
    probes = [r for r in apns_standin_thread.responses(no_device=True) if not r.to_device]
    assert [(p.status, p.reason) for p in probes] == [(400, "BadDeviceToken")] * 2
