"""A real 3-node RabbitMQ cluster: hello instead of per-node retained messages, quorum sessions,
per-gateway permissions, and refusals reported as such.

The cloud is on node 1; each gateway on node 2 unless a test says otherwise.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fixtures_mqtt import FLEET_JWT, PREFIX, Signer, entry, ring
from fixtures_rabbitmq import RabbitGateway, new_gateway
from paho.mqtt.enums import CallbackAPIVersion

from edgebell.cloud.tools import fleet_message, mint_apns_jwt
from testkit.cloud_peer import CloudPeer
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import KEY_ID, TEAM_ID, DaemonProcess, random_token
from testkit.pki import CertFiles, TestPki
from testkit.rabbitmq import GatewayGrant, RabbitCluster, RabbitNode
from testkit.standin_thread import StandInThread

WAIT = 60.0  # a node's restart and the reconnects after it, on a busy machine


@pytest.fixture
def gateway(
    tmp_path: Path,
    pki: TestPki,
    rabbit: RabbitCluster,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> Iterator[RabbitGateway]:
    made = new_gateway(tmp_path, pki, rabbit, rabbit.nodes[1], apns_standin_thread, rflink_receiver)
    yield made
    rabbit.remove_user(made.id)


def wait_ver(daemon: DaemonProcess, ver: int) -> None:
    daemon.wait_status(lambda s: s["tokens"]["ver"] == ver, WAIT)


def test_a_fresh_gateway_on_another_node_gets_its_list_and_jwt_by_hello(
    tmp_path: Path,
    pki: TestPki,
    rabbit: RabbitCluster,
    rabbit_cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> None:
    gw = new_gateway(
        tmp_path,
        pki,
        rabbit,
        rabbit.nodes[1],
        apns_standin_thread,
        rflink_receiver,
        delegated=True,
    )
    phone = random_token()
    token = mint_apns_jwt(pki.auth_key.private_key, KEY_ID, TEAM_ID)
    # Published retained on node 1, as always: RabbitMQ keeps them there.
    rabbit_cloud.delegate(gw.id)
    rabbit_cloud.set_fleet_jwt(fleet_message(token))
    ver = rabbit_cloud.set_list(gw.id, signer.sign([entry(phone)], aud=gw.id))
    with DaemonProcess(gw.files) as daemon:
        wait_ver(daemon, ver)
        status = daemon.wait_status(lambda s: s["cloud"]["apns_jwt_iat"] is not None, WAIT)
        assert not [p for p in status["problems"] if "provider token" in p or "cloud" in p]
        hello = rabbit_cloud.wait_message(f"{gw.p}/hello").json()
        assert hello["tokens_ver"] is None
        assert {(gw.id, "tokens"), (gw.id, "apns-jwt")} <= set(rabbit_cloud.hello_answers)
        ring_id = ring(daemon)
        apns_standin_thread.wait_for(lambda s: len(s.received) == 1, WAIT)
        [push] = apns_standin_thread.received()
        assert (push.token, push.json()["edgebell"]["ring_id"]) == (phone, ring_id)
        assert push.headers["authorization"] == f"bearer {token}"
        # RabbitMQ 3.10 speaks MQTT 3.1.1 only: the gateway found out and fell back.
        assert "does not speak MQTT 5" in daemon.log_text()
    rabbit.remove_user(gw.id)


def test_a_list_changed_and_a_ring_made_while_the_gateways_node_is_down_arrive_in_order(
    gateway: RabbitGateway,
    rabbit: RabbitCluster,
    rabbit_cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
) -> None:
    node = rabbit.nodes[1]
    first_phone, second_phone, third_phone = random_token(), random_token(), random_token()
    first = rabbit_cloud.set_list(gateway.id, signer.sign([entry(first_phone)], aud=gateway.id))
    with DaemonProcess(gateway.files) as daemon:
        wait_ver(daemon, first)
        node.stop()
        try:
            daemon.wait_status(lambda s: not s["cloud"]["connected"], WAIT)
            # While its node is down: two new lists from the cloud, two rings on the gateway.
            second = rabbit_cloud.set_list(
                gateway.id, signer.sign([entry(second_phone)], aud=gateway.id)
            )
            rings = [ring(daemon, "front")]
            third = rabbit_cloud.set_list(
                gateway.id, signer.sign([entry(third_phone)], aud=gateway.id)
            )
            rings.append(ring(daemon, "back"))
            status = daemon.status()
            assert status["cloud"]["outgoing_queued"] >= 2
            assert not any("ACL" in p for p in status["problems"])  # a node down is no refusal
        finally:
            node.start()
            node.wait_booted()
        wait_ver(daemon, third)
        status = daemon.wait_status(lambda s: s["cloud"]["outgoing_queued"] == 0, WAIT)
        # Both lists arrived, in order: the older one after the newer would be refused.
        assert status["cloud"]["refused_lists"] == 0
        log = daemon.log_text()
        assert log.index(f"token list ver {second} in use") < log.index(
            f"token list ver {third} in use"
        )
        rabbit_cloud.wait_for(
            lambda ms: len([m for m in ms if m.topic == f"{gateway.p}/ring"]) == 2, WAIT
        )
    cloud_rings = [m.json()["ring_id"] for m in rabbit_cloud.messages(f"{gateway.p}/ring")]
    assert cloud_rings == rings


def test_a_second_gateways_certificate_cannot_read_or_write_the_first_gateways_topics(
    gateway: RabbitGateway,
    tmp_path: Path,
    pki: TestPki,
    rabbit: RabbitCluster,
    rabbit_cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> None:
    other = new_gateway(
        tmp_path / "other", pki, rabbit, rabbit.nodes[2], apns_standin_thread, rflink_receiver
    )
    node = rabbit.nodes[1]
    ver = rabbit_cloud.set_list(gateway.id, signer.sign([entry(random_token())], aud=gateway.id))
    with DaemonProcess(gateway.files) as daemon:
        wait_ver(daemon, ver)
        p = gateway.p
        # With its own client id, the broker closes the connection over each attempt.
        for topic in (f"{p}/tokens", f"{p}/cmd", f"{p}/#", f"{PREFIX}/#"):
            assert probe_subscribe(node, pki, other.identity, other.id, topic) == "closed"
        for topic in (f"{p}/tokens", f"{p}/cmd", f"{p}/ring", FLEET_JWT):
            assert probe_publish(node, pki, other.identity, other.id, topic) == "closed"
        # With the gateway's client id (RabbitMQ disconnects the gateway: a known limit),
        # it may neither clean nor resume the gateway's session queue, nor use its topics.
        for clean in (True, False):
            for topic in (f"{other.p}/cmd", f"{p}/cmd"):
                got = probe_subscribe(node, pki, other.identity, gateway.id, topic, clean=clean)
                assert got in ("closed", "login refused: Server unavailable")
            got = probe_publish(node, pki, other.identity, gateway.id, f"{p}/ring", clean=clean)
            assert got in ("closed", "login refused: Server unavailable")
        # What the other certificate may do, it may: its own commands and the fleet topic.
        assert probe_subscribe(node, pki, other.identity, other.id, f"{other.p}/cmd") == "granted"
        assert probe_subscribe(node, pki, other.identity, other.id, FLEET_JWT) == "granted"
        # The gateway still has its session and its commands: nothing leaked or was forged.
        rabbit_cloud.publish_json(f"{p}/cmd", {"id": "after", "cmd": "ping"})
        reply = rabbit_cloud.wait_message(f"{p}/cmd/reply", lambda m: m["id"] == "after", WAIT)
        assert reply.json()["ok"] is True
        status = daemon.status()
        assert status["cloud"]["refused_lists"] == 0
        assert {b["id"]: b["rings"] for b in status["buttons"]}["front"] == 0
    forged = [m for m in rabbit_cloud.messages() if b"forged" in m.payload]
    assert forged == []
    rabbit.remove_user(other.id)


def test_a_too_narrow_permission_shows_as_a_permission_problem(
    tmp_path: Path,
    pki: TestPki,
    rabbit: RabbitCluster,
    rabbit_cloud: CloudPeer,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> None:
    # One topic short: the gateway's user may not read its commands.
    gw = new_gateway(
        tmp_path,
        pki,
        rabbit,
        rabbit.nodes[1],
        apns_standin_thread,
        rflink_receiver,
        grant=GatewayGrant(read=("tokens", "apns-jwt")),
    )
    with DaemonProcess(gw.files) as daemon:
        status = daemon.wait_status(lambda s: any(f"{gw.p}/cmd" in p for p in s["problems"]), WAIT)
        [problem] = [p for p in status["problems"] if f"{gw.p}/cmd" in p]
        assert problem == (
            f"the broker refused the subscription to {gw.p}/cmd (it closed the connection):"
            " check its ACL"
        )
        assert not any("unreachable" in p for p in status["problems"])
        human = daemon.cli("status")
        assert f"{gw.p}/cmd" in human.stdout
        assert "check its ACL" in human.stdout
    rabbit.remove_user(gw.id)


def test_a_certificate_without_a_user_shows_as_a_refused_login(
    tmp_path: Path,
    pki: TestPki,
    rabbit: RabbitCluster,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
) -> None:
    gw = new_gateway(tmp_path, pki, rabbit, rabbit.nodes[2], apns_standin_thread, rflink_receiver)
    rabbit.remove_user(gw.id)  # every certificate's CN must exist as a user
    with DaemonProcess(gw.files) as daemon:
        status = daemon.wait_status(
            lambda s: any("refused this gateway's login" in p for p in s["problems"]), WAIT
        )
        [problem] = [p for p in status["problems"] if "login" in p]
        assert "a user named after the certificate's CN" in problem
        assert f"{gw.p}/status" in problem  # the last will it must be allowed to publish
        assert not any("unreachable" in p for p in status["problems"])


# -- a bare MQTT client that tries one thing ------------------------------------------------


def probe_subscribe(
    node: RabbitNode,
    pki: TestPki,
    identity: CertFiles,
    client_id: str,
    topic: str,
    *,
    clean: bool = True,
) -> str:
    """``granted``, ``refused`` (a SUBACK failure code), ``closed`` (the broker hung up), or
    ``login refused: …``."""
    return _probe(node, pki, identity, client_id, clean, lambda c: c.subscribe(topic, qos=1))


def probe_publish(
    node: RabbitNode,
    pki: TestPki,
    identity: CertFiles,
    client_id: str,
    topic: str,
    *,
    clean: bool = True,
) -> str:
    """``granted`` (PUBACK), ``closed`` or ``login refused: …``."""
    return _probe(
        node, pki, identity, client_id, clean, lambda c: c.publish(topic, b"forged", qos=1)
    )


def _probe(
    node: RabbitNode,
    pki: TestPki,
    identity: CertFiles,
    client_id: str,
    clean: bool,
    action: Callable[[mqtt.Client], object],
) -> str:
    outcome: list[str] = []
    done = threading.Event()
    connected = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean,
        protocol=mqtt.MQTTv311,
    )
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(identity.cert, identity.key)
    client.tls_set_context(context)

    def finish(result: str) -> None:
        if not outcome:
            outcome.append(result)
        done.set()
        connected.set()  # a refused login ends the wait for the connection too

    client.on_connect = lambda c, u, f, rc, p=None: (
        connected.set() if not rc.is_failure else finish(f"login refused: {rc}")
    )
    client.on_subscribe = lambda c, u, mid, codes, p=None: finish(
        "refused" if any(code.is_failure for code in codes) else "granted"
    )
    client.on_publish = lambda c, u, mid, rc, p=None: finish("granted")
    client.on_disconnect = lambda c, u, f, rc, p=None: finish("closed")
    client.connect(node.host, node.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(WAIT), "the probe did not connect"
        if not done.is_set():
            action(client)
        assert done.wait(WAIT), "the broker neither acknowledged nor closed"
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0]
