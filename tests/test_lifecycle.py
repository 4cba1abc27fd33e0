"""Start and stop of `edgebell run` as a subprocess: one instance, rings while starting, SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_mqtt import cloud_section
from fixtures_service import NotifyListener

from edgebell import control
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import (
    FRONT_FRAME,
    DaemonProcess,
    GatewayFiles,
    token_auth,
    write_config,
)
from testkit.mosquitto import MosquittoBroker
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread
from testkit.waiting import wait_until


def gateway(
    root: Path,
    pki: TestPki,
    receiver: FakeReceiver,
    apns_url: str,
    phones: list[str],
    **overrides: Any,
) -> GatewayFiles:
    return write_config(
        root,
        port=str(receiver.path),
        apns_url=apns_url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=phones,
        overrides=overrides,
    )


def outbox_rows(files: GatewayFiles) -> int:
    """Rows in the daemon's outbox database, read as another process would."""
    conn = sqlite3.connect(f"file:{files.state_dir / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0])
    finally:
        conn.close()


def ring(files: GatewayFiles, button: str = "front") -> str:
    answer = control.request(files.control_socket, {"cmd": "ring", "button": button}, timeout=5.0)
    assert answer["ok"], answer
    return str(answer["ring_id"])


@pytest.fixture
def blackhole() -> Iterator[str]:
    """An APNs address that accepts TCP and never answers the TLS handshake."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"https://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop(signal.SIGKILL)


def test_a_ring_while_starting_is_pushed_once_and_stays_in_the_outbox(
    tmp_path: Path,
    pki: TestPki,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
    blackhole: str,
    daemons: list[DaemonProcess],
) -> None:
    # Apple's address hangs the handshake: start-up waits connect_timeout for it.
    files = gateway(
        tmp_path, pki, rflink_receiver, blackhole, phones, apns={"connect_timeout": "3s"}
    )
    first = DaemonProcess(files)
    daemons.append(first)
    first.start(wait_ready=False)

    def answer() -> dict[str, Any] | None:
        try:
            return first.status()
        except control.ControlError:
            return None  # not listening yet

    assert "starting" in wait_until(answer, 10, first.log_text)["problems"]
    ring_id = ring(files)
    assert "starting" in first.status()["problems"], "the ring came too late to test this"
    status = first.wait_ready()
    assert status["outbox"]["pending"] == len(phones)
    assert status["outbox"]["collapsed"] == 0  # not folded into a copy of itself
    assert first.stop() == 0
    assert outbox_rows(files) == len(phones)  # still there for the next start

    files = gateway(tmp_path, pki, rflink_receiver, apns_standin_thread.url, phones)
    second = DaemonProcess(files)
    daemons.append(second)
    second.start()
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    second.wait_status(lambda s: s["outbox"]["pending"] == 0)
    assert second.stop() == 0
    pushes = apns_standin_thread.received()
    assert sorted(p.token for p in pushes) == sorted(phones)
    for p in pushes:
        assert p.json()["edgebell"]["ring_id"] == ring_id
        assert "rings" not in p.json()["edgebell"]  # one ring, not "2 rings"
        assert p.headers["apns-collapse-id"] == ring_id
    assert outbox_rows(files) == 0


def test_sigterm_with_apple_and_the_broker_hung_exits_in_time_and_keeps_the_rows(
    tmp_path: Path,
    pki: TestPki,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    mqtt_broker: MosquittoBroker,
    phones: list[str],
    daemons: list[DaemonProcess],
) -> None:
    files = gateway(
        tmp_path,
        pki,
        rflink_receiver,
        apns_standin_thread.url,
        phones,
        cloud=cloud_section(mqtt_broker, pki),
    )
    daemon = DaemonProcess(files)
    daemons.append(daemon)
    daemon.start()
    daemon.wait_status(lambda s: s["cloud"]["connected"])
    apns_standin_thread.set(hang=True)
    rflink_receiver.write_line(FRONT_FRAME.format(n=1))
    apns_standin_thread.wait_for(lambda s: s.requests_received >= len(phones), timeout=10)
    assert mqtt_broker._proc is not None
    broker_pid = mqtt_broker._proc.pid  # the real broker, paused: the goodbye hangs too
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        assert daemon.proc is not None
        sent = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(20)
        took = time.monotonic() - sent
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    daemon.stop()
    print(f"stopped {took:.2f} s after SIGTERM")
    assert code == 0
    # DESIGN: SIGTERM drains in-flight pushes (<= 5 s) then exits; 1 s for the interpreter.
    assert took <= 6.0, f"stopping took {took:.1f} s:\n{daemon.log_text()[-3000:]}"
    assert outbox_rows(files) == len(phones)  # unanswered: still queued

    apns_standin_thread.set(hang=False)
    again = DaemonProcess(files)
    daemons.append(again)
    again.start()
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    again.wait_status(lambda s: s["outbox"]["pending"] == 0)
    assert sorted(p.token for p in apns_standin_thread.received()) == sorted(phones)


def test_a_second_run_stops_at_the_control_socket_and_leaves_the_first_alone(
    gateway_files: GatewayFiles,
    apns_standin_thread: StandInThread,
    phones: list[str],
    daemons: list[DaemonProcess],
) -> None:
    first = DaemonProcess(gateway_files)
    daemons.append(first)
    first.start()
    database = gateway_files.state_dir / "outbox.sqlite3"
    inode = database.stat().st_ino
    # The first daemon's writer in mid-transaction: a second one that opened the database
    # would find it locked.
    busy = sqlite3.connect(database, isolation_level=None)
    busy.execute("BEGIN IMMEDIATE")
    try:
        second = first.cli("run", timeout=15)
    finally:
        busy.execute("ROLLBACK")
        busy.close()
    assert second.returncode == 1, second.stderr
    assert "already running" in second.stderr
    assert database.stat().st_ino == inode
    assert [p.name for p in database.parent.iterdir() if "corrupt" in p.name] == []
    assert first.status()["outbox"]["moved_aside"] is None
    ring(gateway_files)
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    assert first.stop() == 0


def test_a_file_at_the_control_socket_path_is_not_deleted(
    gateway_files: GatewayFiles, daemons: list[DaemonProcess]
) -> None:
    gateway_files.control_socket.write_text("not a socket\n")
    daemon = DaemonProcess(gateway_files)
    result = daemon.cli("run", timeout=15)
    assert result.returncode == 1
    assert "is not a socket" in result.stderr
    assert str(gateway_files.control_socket) in result.stderr
    assert gateway_files.control_socket.read_text() == "not a socket\n"
    assert not gateway_files.state_dir.exists()  # stopped before anything else started


def test_sigterm_while_waiting_for_the_receiver_stops_without_announcing_ready(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    phones: list[str],
    notify_socket: NotifyListener,
    daemons: list[DaemonProcess],
) -> None:
    # The receiver is not plugged in: start-up waits up to 10 s for it before READY=1.
    files = write_config(
        tmp_path,
        port=str(tmp_path / "no-receiver"),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=phones,
    )
    daemon = DaemonProcess(files, env=notify_socket.env)
    daemons.append(daemon)
    daemon.start(wait_ready=False)
    notify_socket.wait_for(
        lambda ms: any("receiver not connected" in m.fields.get("STATUS", "") for m in ms),
        "STATUS= naming the missing receiver",
    )
    assert daemon.stop(signal.SIGTERM) == 0
    # Stopped while starting: it never claimed to be ready (it used to wait out the grace,
    # announce READY=1, and only then stop).
    assert notify_socket.count("READY") == 0
    assert notify_socket.count("STOPPING") == 1
