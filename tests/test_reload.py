"""SIGHUP: a good new config is applied without dropping a connection, a bad one is refused."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_service import edit_config, reload

from testkit.fake_receiver import FakeReceiver
from testkit.gateway import BACK_FRAME, FRONT_FRAME, DaemonProcess, GatewayFiles
from testkit.standin_thread import StandInThread

GATE_FRAME = "20;{n:02X};Kaku;ID=41;SWITCH=1;CMD=ON;"  # a button the first config lacks


@pytest.fixture
def daemon(gateway_files: GatewayFiles) -> Iterator[DaemonProcess]:
    with DaemonProcess(gateway_files) as d:
        yield d


def pushes_for(standin: StandInThread, button: str) -> list[Any]:
    return [p for p in standin.received() if p.json()["edgebell"]["button"] == button]


def test_a_good_config_applies_in_place_and_names_what_needs_a_restart(
    daemon: DaemonProcess,
    gateway_files: GatewayFiles,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    rflink_receiver.write_line(FRONT_FRAME.format(n=1))
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    before = daemon.status()

    def change(data: dict[str, Any]) -> None:
        data["buttons"].append(
            {
                "id": "gate",
                "name": "Garden gate",
                "match": {"protocol": "Kaku", "id": "41", "switch": "1"},
            }
        )
        data["apns"]["notification"] = {"title": "Ding", "body": "Ding dong: {button_name}"}
        data["tokens"] = data["tokens"][:2]  # one phone was sold
        data["log_level"] = "info"
        data["radio"]["port"] = "/dev/serial/by-id/usb-other-receiver"  # needs a restart

    edit_config(gateway_files, change)
    status = reload(daemon)

    assert status["config"]["reload_error"] is None
    assert status["config"]["loaded_at"] > before["config"]["loaded_at"]
    assert status["config"]["restart_needed"] == ["radio.port"]
    assert status["state"] == "healthy"  # a pending restart is news, not a fault
    assert [b["id"] for b in status["buttons"]] == ["front", "back", "gate"]
    assert status["tokens"]["count"] == 2
    assert status["radio"]["port"] == str(rflink_receiver.path)  # still the running receiver
    assert status["radio"]["connected"] is True
    log = daemon.log_text()
    assert (
        "applied buttons, apns.notification.title, apns.notification.body, tokens, log_level" in log
    )
    assert "changed, but applied only at the next restart: radio.port" in log
    human = daemon.cli("status")
    assert "changed, applied at the next restart: radio.port" in human.stdout

    rflink_receiver.write_line(GATE_FRAME.format(n=2))
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones) + 2, timeout=10)
    gate = pushes_for(apns_standin_thread, "gate")
    assert sorted(p.token for p in gate) == sorted(phones[:2])
    assert {p.json()["aps"]["alert"]["body"] for p in gate} == {"Ding dong: Garden gate"}
    # The warm connection to Apple survived the reload: every push went over the first one.
    assert {p.connection for p in apns_standin_thread.received()} == {1}
    assert apns_standin_thread.call(lambda s: s.connections) == 1


def test_a_press_in_progress_is_not_rung_twice_across_a_reload(
    daemon: DaemonProcess,
    gateway_files: GatewayFiles,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    rflink_receiver.write_line(FRONT_FRAME.format(n=1))
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    edit_config(gateway_files, lambda d: d["apns"].update(notification={"title": "New title"}))
    reload(daemon)
    rflink_receiver.write_line(FRONT_FRAME.format(n=2))  # the same press, still repeating
    rflink_receiver.write_line(BACK_FRAME.format(n=3))
    apns_standin_thread.wait_for(lambda s: len(s.received) >= 2 * len(phones), timeout=10)
    # Frames are handled in order: the back door's pushes arrived, so front rang only once.
    assert len(pushes_for(apns_standin_thread, "front")) == len(phones)
    assert {b["id"]: b["rings"] for b in daemon.status()["buttons"]} == {"front": 1, "back": 1}


def test_a_broken_config_is_refused_and_the_old_one_keeps_ringing(
    daemon: DaemonProcess,
    gateway_files: GatewayFiles,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    good = gateway_files.config.read_text()
    gateway_files.config.write_text(good.replace("cooldown: 10s", "cooldown: ten seconds"))
    status = reload(daemon)

    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    error = status["config"]["reload_error"]
    assert error.startswith(f"{gateway_files.config}:")
    assert "radio.cooldown" in error
    assert status["state"] == "degraded"
    assert any("refused at reload" in p and "a restart would fail" in p for p in status["problems"])
    assert "reload refused, still running the previous configuration" in daemon.log_text()
    # `edgebell status` reads the same broken file to find the daemon: it warns and asks anyway.
    human = daemon.cli("status")
    assert human.returncode == 1
    assert "! config file refused at reload" in human.stdout
    assert "warning:" in human.stderr
    assert "radio.cooldown" in human.stderr

    assert daemon.cli("ring", "front").returncode == 0
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)
    assert {p.json()["aps"]["alert"]["title"] for p in apns_standin_thread.received()} == {
        "Doorbell"
    }

    # Fixed and reloaded: the refusal is forgotten.
    gateway_files.config.write_text(good)
    status = reload(daemon)
    assert status["config"]["reload_error"] is None
    assert status["state"] == "healthy"
    assert daemon.cli("status").returncode == 0


def test_a_key_file_others_may_read_is_refused_at_reload(
    daemon: DaemonProcess, gateway_files: GatewayFiles, tmp_path: Path
) -> None:
    exposed = tmp_path / "AuthKey-copy.p8"

    def change(data: dict[str, Any]) -> None:
        exposed.write_bytes(Path(data["apns"]["auth"]["key_file"]).read_bytes())
        exposed.chmod(0o644)
        data["apns"]["auth"]["key_file"] = str(exposed)

    edit_config(gateway_files, change)
    status = reload(daemon)
    assert "is open to other users" in status["config"]["reload_error"]
    assert f"chmod 600 {exposed}" in status["config"]["reload_error"]
    assert status["state"] == "degraded"
    assert daemon.stop(signal.SIGTERM) == 0


# -- edgebell reload (the unit's ExecReload=): the verdict as an exit code -----------------------


def test_reload_command_applies_and_exits_0(
    daemon: DaemonProcess, gateway_files: GatewayFiles, rflink_receiver: FakeReceiver
) -> None:
    def change(data: dict[str, Any]) -> None:
        data["buttons"][0]["name"] = "Main entrance"
        data["radio"]["port"] = "/dev/serial/by-id/usb-other-receiver"  # needs a restart

    edit_config(gateway_files, change)
    result = daemon.cli("reload")
    assert result.returncode == 0, result.stderr
    assert f"reloaded {gateway_files.config}" in result.stdout
    assert "applied only at the next restart (systemctl restart edgebell): radio.port" in (
        result.stdout
    )
    status = daemon.status()
    assert status["config"]["reload_error"] is None
    assert status["config"]["restart_needed"] == ["radio.port"]


def test_reload_command_refused_exits_1_with_the_reason(
    daemon: DaemonProcess,
    gateway_files: GatewayFiles,
    apns_standin_thread: StandInThread,
    phones: list[str],
) -> None:
    good = gateway_files.config.read_text()
    gateway_files.config.write_text(good.replace("cooldown: 10s", "cooldown: ten seconds"))
    result = daemon.cli("reload")
    assert result.returncode == 1
    assert "reload refused, still running the previous configuration:" in result.stderr
    assert "radio.cooldown" in result.stderr
    assert daemon.status()["state"] == "degraded"
    # The old configuration keeps ringing.
    assert daemon.cli("ring", "front").returncode == 0
    apns_standin_thread.wait_for(lambda s: len(s.received) >= len(phones), timeout=10)


def test_reload_command_without_a_daemon_exits_3(gateway_files: GatewayFiles) -> None:
    result = DaemonProcess(gateway_files).cli("reload")
    assert result.returncode == 3
    assert "not running" in result.stderr
