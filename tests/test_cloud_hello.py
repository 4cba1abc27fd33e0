"""The hello handshake over a real Mosquitto: lists and JWTs without retained delivery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_mqtt import FLEET_JWT, P, Signer, cloud_section, entry, ring, wait_list

from edgebell.cloud.tools import fleet_message, mint_apns_jwt
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    GATEWAY_ID,
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


@pytest.fixture
def daemon(cloud_gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(cloud_gateway_files) as d:
        yield d


def hellos(cloud: CloudPeer) -> list[dict[str, object]]:
    return [m.json() for m in cloud.messages(f"{P}/hello")]


def test_a_gateway_gets_its_list_by_hello_when_the_broker_holds_none(
    cloud_gateway_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
) -> None:
    phone = random_token()
    # The cloud's current list, never published retained: as a clustered broker whose
    # node never saw the retained message.
    ver = cloud.set_list(GATEWAY_ID, signer.sign([entry(phone)]), publish=False)
    with DaemonProcess(cloud_gateway_files) as daemon:
        wait_list(daemon, ver)
        [hello] = hellos(cloud)
        assert hello["tokens_ver"] is None  # a fresh gateway: no list yet
        assert hello["jwt_iat"] is None  # not delegated
        assert (GATEWAY_ID, "tokens") in cloud.hello_answers
        ring_id = ring(daemon)
        apns_standin_thread.wait_for(lambda s: len(s.received) == 1, 10)
        assert apns_standin_thread.received()[0].token == phone
        cloud.wait_message(f"{P}/ring", lambda m: m["ring_id"] == ring_id)


def test_a_gateway_whose_list_is_current_gets_no_list_again(
    cloud_gateway_files: GatewayFiles, cloud: CloudPeer, signer: Signer
) -> None:
    ver = cloud.set_list(GATEWAY_ID, signer.sign([entry(random_token())]), publish=False)
    with DaemonProcess(cloud_gateway_files) as daemon:
        wait_list(daemon, ver)
        assert len(hellos(cloud)) == 1
    # Restarted with the list saved: its hello names the current ver, the cloud stays quiet.
    with DaemonProcess(cloud_gateway_files) as daemon:
        cloud.wait_for(lambda _: len(hellos(cloud)) == 2)
        assert hellos(cloud)[1]["tokens_ver"] == ver
        assert daemon.status()["tokens"]["ver"] == ver
    answers = [kind for gateway, kind in cloud.hello_answers if gateway == GATEWAY_ID]
    assert answers == ["tokens"]  # only the fresh gateway's first hello


def test_resync_says_hello_and_the_newer_list_arrives(
    daemon: DaemonProcess, cloud: CloudPeer, signer: Signer
) -> None:
    first = cloud.set_list(GATEWAY_ID, signer.sign([entry(random_token())]))
    wait_list(daemon, first)
    newer = cloud.set_list(GATEWAY_ID, signer.sign([entry(random_token())]), publish=False)
    before = len(hellos(cloud))
    cloud.publish_json(f"{P}/cmd", {"id": "rs", "cmd": "resync"})
    reply = cloud.wait_message(f"{P}/cmd/reply", lambda m: m["id"] == "rs").json()
    assert reply["ok"] is True
    assert len(hellos(cloud)) > before
    assert hellos(cloud)[-1]["tokens_ver"] in (first, newer)
    wait_list(daemon, newer)


def test_a_delegated_gateway_gets_the_fleet_jwt_by_hello(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    mqtt_broker: MosquittoBroker,
    cloud: CloudPeer,
    signer: Signer,
) -> None:
    files = write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth={"mode": "delegated"},
        overrides={"cloud": cloud_section(mqtt_broker, pki)},
    )
    token = mint_apns_jwt(pki.auth_key.private_key, KEY_ID, TEAM_ID)
    cloud.delegate(GATEWAY_ID)
    cloud.set_fleet_jwt(fleet_message(token), publish=False)  # nothing retained on the fleet
    ver = cloud.set_list(GATEWAY_ID, signer.sign([entry(random_token())]), publish=False)
    with DaemonProcess(files) as daemon:
        wait_list(daemon, ver)
        status = daemon.wait_status(lambda s: s["cloud"]["apns_jwt_iat"] is not None)
        assert not any("provider token" in p for p in status["problems"])
        assert cloud.messages(FLEET_JWT) == []
        assert (GATEWAY_ID, "apns-jwt") in cloud.hello_answers
        ring_id = ring(daemon)
        apns_standin_thread.wait_for(lambda s: len(s.received) == 1, 10)
        push = apns_standin_thread.received()[0]
        assert push.json()["edgebell"]["ring_id"] == ring_id
        assert push.headers["authorization"] == f"bearer {token}"
