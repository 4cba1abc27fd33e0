"""End to end: ``edgebell run`` as a subprocess, a pty receiver, the TLS HTTP/2 APNs stand-in."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgebell.privacy import short_token
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import BACK_FRAME, FRONT_FRAME, TOPIC, DaemonProcess, GatewayFiles
from testkit.standin_thread import StandInThread


@pytest.fixture
def daemon(gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(gateway_files) as d:
        yield d


def press(receiver: FakeReceiver, frame: str, repeats: int = 1, start: int = 1) -> None:
    for n in range(start, start + repeats):
        receiver.write_line(frame.format(n=n))


def test_a_press_pushes_once_to_every_phone_with_apples_headers_and_payload(
    daemon: DaemonProcess,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    before = time.time()
    press(rflink_receiver, FRONT_FRAME, repeats=3)  # one press: the transmitter repeats
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    # Frames are handled in order: a second ring from the repeats would be submitted before
    # the back door's, so once the back door's pushes are in, nothing more is coming.
    press(rflink_receiver, BACK_FRAME, start=4)
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 2 * len(phones), timeout=10)
    pushes = apns_standin_thread.received()
    assert len(pushes) == 2 * len(phones)

    front = [p for p in pushes if p.json()["edgebell"]["button"] == "front"]
    assert sorted(p.token for p in front) == sorted(phones)
    ring_ids = {p.json()["edgebell"]["ring_id"] for p in front}
    assert len(ring_ids) == 1
    collapse_ids = {p.headers["apns-collapse-id"] for p in front}
    assert len(collapse_ids) == 1
    assert len(next(iter(collapse_ids)).encode()) <= 64
    for p in front:
        assert p.status == 200
        h = p.headers
        assert h["apns-topic"] == TOPIC
        assert h["apns-push-type"] == "alert"
        assert h["apns-priority"] == "10"
        assert before + 15 * 60 - 5 <= int(h["apns-expiration"]) <= time.time() + 15 * 60 + 5
        uuid.UUID(h["apns-id"])
        assert h["authorization"].startswith("bearer ")
        body = p.json()
        assert body["aps"]["alert"] == {"title": "Doorbell", "body": "Someone is at the Front door"}
        assert body["aps"]["sound"] == "default"
        assert body["aps"]["interruption-level"] == "time-sensitive"
        assert body["aps"]["thread-id"] == "front"
        assert body["edgebell"]["at"].endswith("Z")
    assert len({p.headers["apns-id"] for p in pushes}) == len(pushes)
    back = [p for p in pushes if p.json()["edgebell"]["button"] == "back"]
    assert {p.json()["aps"]["alert"]["body"] for p in back} == {"Someone is at the Back door"}

    status = daemon.status()
    rings = {b["id"]: b["rings"] for b in status["buttons"]}
    assert rings == {"front": 1, "back": 1}
    assert status["apns"]["delivered"] == 2 * len(phones)
    assert status["radio"]["frames"] == 4


def test_one_warm_connection_carries_every_ring(
    daemon: DaemonProcess, rflink_receiver: FakeReceiver, apns_standin_thread: StandInThread
) -> None:
    press(rflink_receiver, FRONT_FRAME)
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 3, timeout=10)
    daemon.cli("ring", "back")
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 6, timeout=10)
    assert len({p.connection for p in apns_standin_thread.received()}) == 1


def test_cooldown_presses_are_counted_and_manual_ring_ignores_cooldown(
    daemon: DaemonProcess, rflink_receiver: FakeReceiver, apns_standin_thread: StandInThread
) -> None:
    press(rflink_receiver, FRONT_FRAME)
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 3, timeout=10)
    result = daemon.cli("ring", "front")
    assert result.returncode == 0, result.stderr
    assert "rang front" in result.stdout
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 6, timeout=10)
    assert {b["id"]: b["rings"] for b in daemon.status()["buttons"]}["front"] == 2


def test_ring_unknown_button_fails_clearly(daemon: DaemonProcess) -> None:
    result = daemon.cli("ring", "garage")
    assert result.returncode == 1
    assert "unknown button 'garage'" in result.stderr
    assert "front" in result.stderr


def test_test_push_reports_each_phone_and_fails_when_one_is_dead(
    daemon: DaemonProcess, apns_standin_thread: StandInThread, phones: list[str]
) -> None:
    result = daemon.cli("test-push")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("delivered") == len(phones)
    apns_standin_thread.set(token_errors={phones[1]: (410, "Unregistered")})
    result = daemon.cli("test-push", "--json")
    assert result.returncode == 1
    outcomes = {r["token"]: (r["outcome"], r["status"]) for r in json.loads(result.stdout)}
    assert outcomes[short_token(phones[1])] == ("token_dead", 410)
    assert phones[1] not in result.stdout  # only ever shortened
    # What the test push learnt holds for rings too: the dead phone is suppressed.
    status = daemon.status()
    assert status["tokens"]["count"] == len(phones) - 1
    assert status["tokens"]["suppressed"] == 1


def test_status_json_has_the_contract_fields(daemon: DaemonProcess) -> None:
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stdout
    data = json.loads(result.stdout)
    assert data["state"] == "healthy"
    assert set(data) >= {
        "state", "version", "uptime_s", "radio", "buttons", "tokens", "cloud", "apns", "outbox"
    }  # fmt: skip
    assert set(data["radio"]) >= {"connected", "port", "last_frame_at", "frames", "bad_frames"}
    assert set(data["tokens"]) >= {"count", "ver", "suppressed"}
    assert set(data["apns"]) >= {"connected", "auth", "sent", "delivered", "failed", "last_error"}
    assert set(data["outbox"]) >= {"pending", "oldest_age_s"}
    assert data["tokens"] == {"count": 3, "ver": None, "suppressed": 0}
    assert data["apns"]["auth"] == "token"
    assert data["apns"]["connected"] is True
    assert data["cloud"] is None


def test_status_when_no_daemon_runs_exits_3(gateway_files: GatewayFiles) -> None:
    result = DaemonProcess(gateway_files).cli("status")
    assert result.returncode == 3
    assert "not running" in result.stderr


def test_sigterm_exits_0_and_removes_the_socket(daemon: DaemonProcess) -> None:
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.files.control_socket.exists()
    assert "stopped" in daemon.log_text()


def test_bad_config_exits_2_naming_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "gateway:\n  id: gw-1\nradio:\n  port: /dev/null\n  protocol: rflink\n"
        "apns:\n  topic: t\n  environment: sandbox\n"
        "  auth:\n    mode: token\n    key_file: k.p8\n    team_id: DEF123GHIJ\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "edgebell", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{config}:10: apns.auth.key_id: required" in result.stderr


def test_logs_never_show_a_full_token_or_jwt(
    daemon: DaemonProcess,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    apns_standin_thread.set(token_errors={phones[0]: (410, "Unregistered")})
    press(rflink_receiver, FRONT_FRAME)
    apns_standin_thread.wait_for(lambda s: len(s.responses) >= 3, timeout=10)
    daemon.wait_status(lambda s: s["outbox"]["pending"] == 0)
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert short_token(phones[0]) in log  # the dead token is logged, shortened
    for token in phones:
        assert token not in log
        assert token[:16] not in log
    assert "eyJ" not in log  # no JWT (every JWT header starts so)
