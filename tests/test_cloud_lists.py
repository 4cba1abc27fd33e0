"""Token lists over a real Mosquitto, end to end: the daemon rings exactly the cloud's phones."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures_mqtt import (
    OTHER_GATEWAY,
    P,
    Signer,
    entry,
    publish_list,
    pushes_for,
    ring,
    wait_list,
)

from edgebell.cloud.tokenlist import MAX_MESSAGE_BYTES
from testkit.cloud_peer import CloudPeer
from testkit.gateway import DaemonProcess, GatewayFiles, random_token
from testkit.mosquitto import MosquittoBroker
from testkit.standin_thread import StandInThread

APPLE_SAYS_GONE_AT = 1_800_000_000_000  # ms: the timestamp the stand-in puts in its 410s


@pytest.fixture
def daemon(cloud_gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(cloud_gateway_files) as d:
        yield d


def delivered(apns: StandInThread, cloud: CloudPeer, ring_id: str) -> set[str]:
    """Tokens that got ring ``ring_id``, once its final delivery report is out."""
    cloud.wait_message(f"{P}/delivery", lambda m: m["ring_id"] == ring_id and m["final"])
    return {p.token for p in pushes_for(apns, ring_id) if p.status == 200}


def test_a_signed_list_arrives_and_the_next_ring_reaches_exactly_its_tokens(
    daemon: DaemonProcess, cloud: CloudPeer, signer: Signer, apns_standin_thread: StandInThread
) -> None:
    a, b, back_only = random_token(), random_token(100), random_token()
    ver = signer.next_ver()
    listed = [entry(a), entry(b, user="bob"), entry(back_only, buttons=["back"])]
    publish_list(cloud, signer.sign(listed, ver=ver))
    status = wait_list(daemon, ver)
    assert status["tokens"]["count"] == 3
    assert status["cloud"]["connected"] is True
    assert status["cloud"]["last_sync_at"] is not None
    online = cloud.wait_message(f"{P}/status", lambda m: m.get("tokens_ver") == ver)
    assert online.retain or online.json()["state"] == "online"
    assert set(online.json()) >= {"state", "version", "since", "tokens_ver", "queue"}

    front = ring(daemon, "front")
    assert delivered(apns_standin_thread, cloud, front) == {a, b}
    back = ring(daemon, "back")
    assert delivered(apns_standin_thread, cloud, back) == {a, b, back_only}
    rang = cloud.wait_message(f"{P}/ring", lambda m: m["ring_id"] == front).json()
    assert rang["button"] == "front"
    assert rang["presses"] == 1
    assert rang["at"].endswith("Z")
    report = cloud.wait_message(f"{P}/delivery", lambda m: m["ring_id"] == front).json()
    assert (report["delivered"], report["failed"], report["queued"], report["expired"]) == (
        2,
        0,
        0,
        0,
    )


def test_a_new_version_adds_one_token_removes_another_and_its_queued_push_is_not_sent(
    daemon: DaemonProcess, cloud: CloudPeer, signer: Signer, apns_standin_thread: StandInThread
) -> None:
    stays, leaves, joins = random_token(), random_token(), random_token()
    first = signer.next_ver()
    publish_list(cloud, signer.sign([entry(stays), entry(leaves)], ver=first))
    wait_list(daemon, first)
    # Apple keeps failing the push to the phone about to be removed: it stays queued.
    apns_standin_thread.set(token_errors={leaves: (503, "ServiceUnavailable")})
    queued_ring = ring(daemon)
    apns_standin_thread.wait_for(
        lambda s: any(p.token == leaves and p.status == 503 for p in s.responses), 10
    )
    second = signer.next_ver()
    publish_list(cloud, signer.sign([entry(stays), entry(joins)], ver=second))
    wait_list(daemon, second)
    report = cloud.wait_message(
        f"{P}/delivery", lambda m: m["ring_id"] == queued_ring and m["final"]
    ).json()
    assert (report["delivered"], report["removed"], report["queued"]) == (1, 1, 0)
    apns_standin_thread.set(token_errors={})  # from now on Apple would take it: it must not go

    next_ring = ring(daemon)
    assert delivered(apns_standin_thread, cloud, next_ring) == {stays, joins}
    assert not [p for p in apns_standin_thread.responses() if p.token == leaves and p.status == 200]
    assert daemon.status()["outbox"]["pending"] == 0


def test_refused_lists_leave_the_current_list_in_use_and_the_bell_ringing(
    daemon: DaemonProcess,
    cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
) -> None:
    a, b, intruder = random_token(), random_token(), random_token()
    ver = signer.next_ver()
    good = signer.sign([entry(a), entry(b)], ver=ver)
    publish_list(cloud, good)
    wait_list(daemon, ver)
    publish_list(cloud, good)  # the same list again: simply current
    evil = [entry(a), entry(b), entry(intruder)]
    refused = [
        Signer(Ed25519PrivateKey.generate()).sign(evil),  # not cloud.token_list_key's pair
        signer.sign(evil, aud=OTHER_GATEWAY),  # another gateway's list
        signer.sign(evil, ver=ver - 1),  # older
        signer.sign(evil, ver=ver),  # same version, other content
        "garbage, not a JWS",
    ]
    for message in refused:
        publish_list(cloud, message)
    # A megabyte never reaches the gateway (MQTT 5 Maximum Packet Size: the broker drops
    # it); the garbage published after it is the next list the gateway sees and refuses.
    megabyte = "x" * (1024 * 1024)
    assert len(megabyte) > MAX_MESSAGE_BYTES
    publish_list(cloud, megabyte)
    refused.append("more garbage")
    publish_list(cloud, refused[-1])
    status = daemon.wait_status(lambda s: s["cloud"]["refused_lists"] == len(refused))
    assert status["tokens"]["ver"] == ver
    assert status["tokens"]["count"] == 2
    assert status["cloud"]["last_refusal"].startswith("not a compact JWS")
    told = cloud.wait_message(f"{P}/status", lambda m: m.get("refused_lists") == len(refused))
    assert told.json()["tokens_ver"] == ver

    assert delivered(apns_standin_thread, cloud, ring(daemon)) == {a, b}
    log = daemon.log_text()
    assert log.count("refused a token list") == len(refused)
    assert intruder not in log


def test_a_dead_token_is_reported_once_and_a_newer_registration_revives_it(
    daemon: DaemonProcess, cloud: CloudPeer, signer: Signer, apns_standin_thread: StandInThread
) -> None:
    live, dead = random_token(), random_token()
    apns_standin_thread.set(
        token_errors={dead: (410, "Unregistered")},
        unregistered_timestamp_ms=APPLE_SAYS_GONE_AT,
    )
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(live), entry(dead)], ver=ver))
    wait_list(daemon, ver)
    assert delivered(apns_standin_thread, cloud, ring(daemon)) == {live}
    feedback = cloud.wait_message(f"{P}/feedback").json()
    assert feedback == {
        "token": dead,
        "status": 410,
        "reason": "Unregistered",
        "timestamp": APPLE_SAYS_GONE_AT,
        "ver": ver,
    }
    assert daemon.status()["tokens"]["suppressed"] == 1

    second = ring(daemon)
    assert delivered(apns_standin_thread, cloud, second) == {live}
    assert not [p for p in pushes_for(apns_standin_thread, second) if p.token == dead]

    # Still listed, registered before Apple's verdict: stays quiet.
    older = signer.next_ver()
    stale = [entry(live), entry(dead, registered_at=APPLE_SAYS_GONE_AT - 1)]
    publish_list(cloud, signer.sign(stale, ver=older))
    wait_list(daemon, older)
    assert delivered(apns_standin_thread, cloud, ring(daemon)) == {live}

    # The phone registered again after Apple's timestamp: it hears the bell again.
    apns_standin_thread.set(token_errors={})
    newer = signer.next_ver()
    fresh = [entry(live), entry(dead, registered_at=APPLE_SAYS_GONE_AT + 1)]
    publish_list(cloud, signer.sign(fresh, ver=newer))
    status = wait_list(daemon, newer)
    assert status["tokens"]["suppressed"] == 0
    assert delivered(apns_standin_thread, cloud, ring(daemon)) == {live, dead}
    assert len(cloud.messages(f"{P}/feedback")) == 1
    assert dead not in daemon.log_text()


def test_after_a_restart_with_the_broker_down_the_saved_list_rings(
    cloud_gateway_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    mqtt_broker: MosquittoBroker,
    apns_standin_thread: StandInThread,
) -> None:
    a, b = random_token(), random_token()
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(a), entry(b)], ver=ver))
    with DaemonProcess(cloud_gateway_files) as first:
        wait_list(first, ver)
        assert first.stop() == 0
    mqtt_broker.stop()
    with DaemonProcess(cloud_gateway_files) as second:
        status = second.status()
        assert status["tokens"]["ver"] == ver
        assert status["cloud"]["connected"] is False
        assert any("cloud" in p for p in status["problems"])
        ring_id = ring(second)
        apns_standin_thread.wait_for(
            lambda s: (
                {p.token for p in s.received if p.json()["edgebell"]["ring_id"] == ring_id}
                == {a, b}
            ),
            10,
        )
        queued = second.wait_status(lambda s: s["cloud"]["outgoing_queued"] >= 2)
        assert queued["cloud"]["last_error"]
        human = second.cli("status")
        assert "NOT CONNECTED" in human.stdout


def test_static_tokens_ring_alongside_the_list(
    cloud_gateway_files: GatewayFiles,
    cloud: CloudPeer,
    signer: Signer,
    apns_standin_thread: StandInThread,
) -> None:
    static, listed = random_token(), random_token()
    config = yaml.safe_load(cloud_gateway_files.config.read_text())
    config["tokens"] = [{"token": static}]
    cloud_gateway_files.config.write_text(yaml.safe_dump(config))
    with DaemonProcess(cloud_gateway_files) as daemon:
        ver = signer.next_ver()
        publish_list(cloud, signer.sign([entry(listed)], ver=ver))
        assert wait_list(daemon, ver)["tokens"]["count"] == 2
        assert delivered(apns_standin_thread, cloud, ring(daemon)) == {static, listed}
        empty = signer.next_ver()
        publish_list(cloud, signer.sign([], ver=empty))
        wait_list(daemon, empty)
        assert delivered(apns_standin_thread, cloud, ring(daemon)) == {static}
