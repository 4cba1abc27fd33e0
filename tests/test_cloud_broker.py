"""The broker side: restarts, outages, and the ACL that confines each gateway to its own topics."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import yaml
from fixtures_mqtt import (
    FLEET_JWT,
    OTHER_GATEWAY,
    PREFIX,
    MqttIdentities,
    P,
    Signer,
    connect_cloud,
    entry,
    publish_list,
    ring,
    wait_list,
)

from testkit.cloud_peer import CloudPeer
from testkit.gateway import GATEWAY_ID, DaemonProcess, GatewayFiles, random_token
from testkit.mosquitto import MosquittoBroker
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread


@pytest.fixture
def daemon(cloud_gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(cloud_gateway_files) as d:
        yield d


def test_a_restarted_broker_that_lost_everything_gets_subscriptions_and_online_back(
    daemon: DaemonProcess,
    cloud: CloudPeer,
    signer: Signer,
    mqtt_broker: MosquittoBroker,
) -> None:
    first = signer.next_ver()
    publish_list(cloud, signer.sign([entry(random_token())], ver=first))
    wait_list(daemon, first)
    cloud.wait_message(f"{P}/status", lambda m: m.get("tokens_ver") == first)
    cloud.clear()  # from here on, only what was published after the restart
    mqtt_broker.restart(forget=True)  # no sessions, no retained messages any more
    cloud.wait_reconnected(2)
    daemon.wait_status(lambda s: s["cloud"]["connected"] and s["cloud"]["connects"] == 2)
    # The retained "online" is gone with the broker's memory: this one is republished.
    online = cloud.wait_message(f"{P}/status", lambda m: m["state"] == "online")
    assert online.json()["tokens_ver"] == first
    # Subscribed again: a new list and a command reach the daemon.
    second = signer.next_ver()
    publish_list(cloud, signer.sign([entry(random_token())], ver=second))
    wait_list(daemon, second)
    cloud.publish_json(f"{P}/cmd", {"id": "after-restart", "cmd": "ping"})
    reply = cloud.wait_message(f"{P}/cmd/reply", lambda m: m["id"] == "after-restart")
    assert reply.json()["ok"] is True
    assert "lost" in daemon.log_text()


def test_rings_while_the_broker_is_down_reach_the_cloud_in_order_after_it_returns(
    cloud_gateway_files: GatewayFiles,
    pki: TestPki,
    mqtt_identities: MqttIdentities,
    signer: Signer,
    mqtt_broker: MosquittoBroker,
    apns_standin_thread: StandInThread,
) -> None:
    phone = random_token()
    ver = signer.next_ver()
    # A persistent session: the broker keeps what arrives for the cloud while it is away.
    with connect_cloud(mqtt_broker, pki, mqtt_identities, clean_session=False) as cloud:
        publish_list(cloud, signer.sign([entry(phone)], ver=ver))
        with DaemonProcess(cloud_gateway_files) as first:
            wait_list(first, ver)
            mqtt_broker.stop()
            first.wait_status(lambda s: not s["cloud"]["connected"])
            rings = [ring(first), ring(first, "back")]
            apns_standin_thread.wait_for(lambda s: len(s.received) >= 2, 10)
            first.wait_status(lambda s: s["outbox"]["pending"] == 0)
            assert first.stop() == 0  # what waits for the cloud is on disk
        with DaemonProcess(cloud_gateway_files) as second:
            rings.append(ring(second))
            apns_standin_thread.wait_for(lambda s: len(s.received) >= 3, 10)
            second.wait_status(lambda s: s["cloud"]["outgoing_queued"] >= 6)
            mqtt_broker.start()
            cloud.wait_reconnected(2, timeout=15)
            second.wait_status(lambda s: s["cloud"]["connected"])
            second.wait_status(lambda s: s["cloud"]["outgoing_queued"] == 0)
            cloud.wait_for(lambda ms: len([m for m in ms if m.topic == f"{P}/delivery"]) >= 3)
    events = [
        (m.topic.rsplit("/", 1)[1], m.json()["ring_id"])
        for m in cloud.messages()
        if m.topic in (f"{P}/ring", f"{P}/delivery")
    ]
    assert [rid for kind, rid in events if kind == "ring"] == rings
    for rid in rings:
        assert events.index(("ring", rid)) < events.index(("delivery", rid))
    for m in cloud.messages(f"{P}/delivery"):
        assert m.json()["delivered"] == 1


def test_a_gateway_certificate_cannot_read_or_write_another_gateways_topics(
    daemon: DaemonProcess,
    cloud: CloudPeer,
    signer: Signer,
    mqtt_broker: MosquittoBroker,
    pki: TestPki,
    mqtt_identities: MqttIdentities,
) -> None:
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(random_token())], ver=ver))
    wait_list(daemon, ver)
    cloud.publish_json(FLEET_JWT, {"jwt": "not for this test", "iat": 1}, retain=True)
    # gw-other's certificate, pretending to be gw-test by its client id.
    with CloudPeer(
        mqtt_broker.host,
        mqtt_broker.port,
        ca=pki.ca.cert,
        identity=mqtt_identities.other_gateway,
        client_id=GATEWAY_ID,
        subscribe=[f"{P}/#", f"{PREFIX}/#", f"{PREFIX}/fleet/#"],
    ) as intruder:
        cloud.publish_json(f"{P}/cmd", {"id": "probe", "cmd": "ping"})
        cloud.wait_message(f"{P}/cmd/reply", lambda m: m["id"] == "probe")
        intruder.publish(f"{P}/tokens", "forged", retain=True)
        intruder.publish_json(f"{P}/cmd", {"id": "evil", "cmd": "ring", "button": "front"})
        intruder.publish_json(f"{P}/ring", {"ring_id": "fake", "button": "front"})
        intruder.publish_json(f"{PREFIX}/{OTHER_GATEWAY}/status", {"state": "online"})
        intruder.publish_json(FLEET_JWT, {"jwt": "forged", "iat": 2}, retain=True)
        # What the broker delivers is ordered: once the cloud sees gw-other's own status,
        # anything the intruder sent before it would have arrived too.
        cloud.wait_message(f"{PREFIX}/{OTHER_GATEWAY}/status")
        intruder.wait_message(FLEET_JWT)  # it may read what the cloud sends the fleet
        seen_by_intruder = {m.topic for m in intruder.messages()}
    assert not [t for t in seen_by_intruder if t.startswith(f"{P}/")]
    forged = [
        m
        for m in cloud.messages()
        if m.payload in (b"forged",) or b"fake" in m.payload or b"evil" in m.payload
    ]
    assert forged == []
    status = daemon.status()
    assert status["cloud"]["refused_lists"] == 0  # the forged list never reached the daemon
    assert status["cloud"]["connects"] == 1  # and its session was not taken over
    assert {b["id"]: b["rings"] for b in status["buttons"]}["front"] == 0
    fleet = [m.json() for m in cloud.messages(FLEET_JWT)]
    assert fleet == [{"jwt": "not for this test", "iat": 1}]
    assert cloud.messages(f"{P}/tokens")[-1].payload.count(b".") == 2  # still the cloud's list


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_the_cloud_sees_offline_after_a_clean_stop_and_after_a_crash(
    cloud_gateway_files: GatewayFiles,
    cloud: CloudPeer,
    sig: signal.Signals,
    mqtt_broker: MosquittoBroker,
    pki: TestPki,
    mqtt_identities: MqttIdentities,
) -> None:
    with DaemonProcess(cloud_gateway_files) as daemon:
        daemon.wait_status(lambda s: s["cloud"]["connected"])
        cloud.wait_message(f"{P}/status", lambda m: m["state"] == "online")
        daemon.stop(sig)
    # SIGTERM: the daemon says it itself; kill -9: the broker publishes its last will.
    offline = cloud.wait_message(f"{P}/status", lambda m: m["state"] == "offline")
    assert offline.json() == {"state": "offline"}
    # Retained: whoever looks later sees it too.
    cloud.close()  # one connection per certificate: the broker would drop the older one
    with connect_cloud(mqtt_broker, pki, mqtt_identities) as late:
        last = late.wait_message(f"{P}/status")
        assert last.retain
        assert last.json() == {"state": "offline"}


def test_a_certificate_for_another_gateway_is_reported_at_start(
    cloud_gateway_files: GatewayFiles,
    mqtt_identities: MqttIdentities,
) -> None:
    config = yaml.safe_load(cloud_gateway_files.config.read_text())
    config["cloud"]["cert_file"] = str(mqtt_identities.other_gateway.cert)
    config["cloud"]["key_file"] = str(mqtt_identities.other_gateway.key)
    cloud_gateway_files.config.write_text(yaml.safe_dump(config))
    with DaemonProcess(cloud_gateway_files) as daemon:
        status = daemon.wait_status(lambda s: s["cloud"]["connected"])
        problem = [p for p in status["problems"] if "cert_file" in p]
        assert problem
        assert OTHER_GATEWAY in problem[0]
        assert status["state"] == "degraded"
