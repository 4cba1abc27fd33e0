"""``P/cmd`` round trips over a real Mosquitto: ping, ring, test-push, resync, and refusals."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import P, Signer, entry, publish_list, pushes_for, wait_list

from edgebell.privacy import short_token
from testkit.cloud_peer import CloudPeer
from testkit.gateway import DaemonProcess, GatewayFiles, random_token
from testkit.standin_thread import StandInThread

_ids = itertools.count(1)


@pytest.fixture
def daemon(cloud_gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(cloud_gateway_files) as d:
        yield d


@pytest.fixture
def phone(daemon: DaemonProcess, cloud: CloudPeer, signer: Signer) -> str:
    """The one phone on the gateway's list."""
    token = random_token()
    ver = signer.next_ver()
    publish_list(cloud, signer.sign([entry(token)], ver=ver))
    wait_list(daemon, ver)
    return token


def command(cloud: CloudPeer, **document: Any) -> dict[str, Any]:
    """Send a command; the reply that carries its id."""
    document.setdefault("id", f"cmd-{next(_ids)}")
    cloud.publish_json(f"{P}/cmd", document)
    reply: dict[str, Any] = cloud.wait_message(
        f"{P}/cmd/reply", lambda m: m["id"] == document["id"]
    ).json()
    return reply


def test_ping_answers_with_the_version(daemon: DaemonProcess, cloud: CloudPeer) -> None:
    reply = command(cloud, cmd="ping")
    assert reply["ok"] is True
    assert reply["detail"] == "pong"
    assert reply["version"] == daemon.status()["version"]


def test_ring_rings_at_once_ignoring_cooldown_and_the_reply_carries_the_ring_id(
    daemon: DaemonProcess, cloud: CloudPeer, phone: str, apns_standin_thread: StandInThread
) -> None:
    first = command(cloud, cmd="ring", button="front")
    second = command(cloud, cmd="ring", button="front")  # within cooldown: rings anyway
    for reply in (first, second):
        assert reply["ok"] is True
        ring_id = reply["detail"]
        assert reply["ring_id"] == ring_id
        apns_standin_thread.wait_for(
            lambda s, r=ring_id: any(p.json()["edgebell"]["ring_id"] == r for p in s.received),
            10,
        )
        assert [p.token for p in pushes_for(apns_standin_thread, ring_id)] == [phone]
        event = cloud.wait_message(f"{P}/ring", lambda m, r=ring_id: m["ring_id"] == r).json()
        assert event["manual"] is True
    assert {b["id"]: b["rings"] for b in daemon.status()["buttons"]}["front"] == 2
    unknown = command(cloud, cmd="ring", button="garage")
    assert unknown["ok"] is False
    assert "garage" in unknown["detail"]


def test_test_push_reports_each_phone_and_can_target_one_token(
    daemon: DaemonProcess, cloud: CloudPeer, phone: str, apns_standin_thread: StandInThread
) -> None:
    reply = command(cloud, cmd="test-push")
    assert reply["ok"] is True
    assert reply["detail"] == "1 of 1 delivered"
    assert [r["token"] for r in reply["results"]] == [short_token(phone)]
    other = random_token()
    apns_standin_thread.set(token_errors={other: (410, "Unregistered")})
    single = command(cloud, cmd="test-push", token=other)
    assert single["ok"] is False
    assert single["results"][0]["status"] == 410
    assert other not in str(single)  # replies shorten tokens like every other output


def test_resync_reads_the_retained_list_again(
    daemon: DaemonProcess, cloud: CloudPeer, signer: Signer, phone: str
) -> None:
    ver = daemon.status()["tokens"]["ver"]
    reply = command(cloud, cmd="resync")
    assert reply["ok"] is True
    assert f"list ver {ver} in use" in reply["detail"]
    assert daemon.status()["cloud"]["refused_lists"] == 0  # the same list again is current


def test_bad_commands_are_answered_not_run(
    daemon: DaemonProcess, cloud: CloudPeer, phone: str
) -> None:
    unknown = command(cloud, cmd="reboot")
    assert unknown["ok"] is False
    assert "unknown command" in unknown["detail"]
    cloud.publish(f"{P}/cmd", "nonsense")
    garbled = cloud.wait_message(f"{P}/cmd/reply", lambda m: m["id"] is None).json()
    assert garbled["ok"] is False
    assert command(cloud, cmd="ping")["ok"] is True  # and the gateway carries on


def test_a_command_nested_30000_deep_is_answered_with_id_null(
    daemon: DaemonProcess, cloud: CloudPeer
) -> None:
    # Issue 10: RecursionError killed the handler ("Task exception was never retrieved").
    cloud.publish(f"{P}/cmd", '{"id": "deep", "x": ' + "[" * 30_000 + "]" * 30_000 + "}")
    reply = cloud.wait_message(f"{P}/cmd/reply", lambda m: m["id"] is None).json()
    assert reply["ok"] is False
    assert "nested deeper than" in reply["detail"]
    assert command(cloud, cmd="ping")["ok"] is True
    assert "Traceback" not in daemon.log_text()
    assert "never retrieved" not in daemon.log_text()


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_50_mb_message_is_refused_before_it_is_buffered(
    daemon: DaemonProcess, cloud: CloudPeer
) -> None:
    # Issue 10: 50 MB on P/tokens or P/cmd was refused only after it was buffered whole
    # (RSS stayed at 196 MB). With MQTT 5's Maximum Packet Size the broker never sends it.
    assert daemon.proc is not None
    before = _memory_kib(daemon.proc.pid, "VmRSS")
    huge = b"[" * (50 * 1024 * 1024)
    cloud.publish(f"{P}/cmd", huge, timeout=120)
    cloud.publish(f"{P}/tokens", huge, timeout=120)
    assert command(cloud, cmd="ping")["ok"] is True  # after the huge one, in order
    peak = _memory_kib(daemon.proc.pid, "VmHWM")
    assert peak - before < 20 * 1024, (before, peak)
    assert daemon.status()["cloud"]["connected"] is True


def test_a_command_delivered_twice_rings_once_and_both_get_the_first_reply(
    daemon: DaemonProcess, cloud: CloudPeer, phone: str
) -> None:
    # QoS 1 may deliver a command again after a reconnect, and the cloud retries one whose
    # reply it missed: the same id must not ring the doorbell twice.
    first = command(cloud, id="twice-1", cmd="ring", button="front")
    cloud.publish_json(f"{P}/cmd", {"id": "twice-1", "cmd": "ring", "button": "front"})

    def replies(messages: list[Any]) -> list[dict[str, Any]]:
        return [
            r
            for r in (m.json() for m in messages if m.topic == f"{P}/cmd/reply")
            if r["id"] == "twice-1"
        ]

    both = replies(cloud.wait_for(lambda ms: len(replies(ms)) >= 2))
    assert [r["ring_id"] for r in both] == [first["ring_id"]] * 2
    assert {b["id"]: b["rings"] for b in daemon.status()["buttons"]}["front"] == 1
