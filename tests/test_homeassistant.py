"""The doorbell in Home Assistant: the daemon (subprocess), a real Mosquitto, Home Assistant's side.

Everything Home Assistant would see is checked where it would see it: the
retained discovery configs (against the documented schema), the availability
topic, and the events on each doorbell's state topic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fixtures_home_assistant import (
    AVAILABILITY,
    BASE,
    connect_home_assistant,
    home_assistant_section,
)
from fixtures_service import edit_config, reload
from ha_schema import assert_valid

from edgebell import control
from testkit.fake_receiver import FakeReceiver
from testkit.gateway import FRONT_FRAME, DaemonProcess, GatewayFiles
from testkit.ha_peer import HomeAssistantPeer
from testkit.home_broker import HA_USER, HomeBroker
from testkit.pki import TestPki
from testkit.standin_thread import StandInThread

FRONT_UID = "edgebell_gw-test_front_ring"
BACK_UID = "edgebell_gw-test_back_ring"
FRONT_EVENTS = f"{BASE}/front/event"


@pytest.fixture
def daemon(ha_gateway_files: GatewayFiles) -> Any:
    with DaemonProcess(ha_gateway_files) as d:
        yield d


def wait_entities(ha: HomeAssistantPeer, count: int) -> None:
    ha.wait_until(lambda: len(ha.entities()) == count and ha.last(AVAILABILITY) is not None)


def ring(daemon: DaemonProcess, button: str = "front") -> str:
    answer = control.request(daemon.files.control_socket, {"cmd": "ring", "button": button})
    assert answer.get("ok"), answer
    ring_id: str = answer["ring_id"]
    return ring_id


def events(ha: HomeAssistantPeer, topic: str = FRONT_EVENTS) -> list[dict[str, Any]]:
    return [m.json() for m in ha.events(topic)]


def pushes(standin: Any) -> list[Any]:
    """The stand-in's answered requests to a device (not edgebell's credentials check)."""
    return [r for r in standin.responses if r.to_device]


def wait_ha_connected(daemon: DaemonProcess, connected: bool = True) -> dict[str, Any]:
    return daemon.wait_status(lambda s: s["home_assistant"]["connected"] is connected, 15)


def test_discovery_is_valid_and_each_press_is_one_event(
    daemon: DaemonProcess,
    home_assistant: HomeAssistantPeer,
    rflink_receiver: FakeReceiver,
    apns_standin_thread: StandInThread,
) -> None:
    ha = home_assistant
    wait_entities(ha, 5)
    for entity in ha.entities():
        assert_valid(entity.topic, entity.config)
        assert ha.last(entity.topic).retain or ha.messages(entity.topic)  # type: ignore[union-attr]
    assert {e.unique_id for e in ha.entities("event")} == {FRONT_UID, BACK_UID}
    assert ha.last(AVAILABILITY).payload == b"online"  # type: ignore[union-attr]

    # One press: the transmitter repeats its frame; Home Assistant hears one ring.
    for n in range(3):
        rflink_receiver.write_line(FRONT_FRAME.format(n=n))
    ha.wait_until(lambda: len(ha.events(FRONT_EVENTS)) >= 1)
    apns_standin_thread.wait_for(lambda s: len(pushes(s)) >= 1)
    ring_id = apns_standin_thread.responses()[0].json()["edgebell"]["ring_id"]
    manual = ring(daemon)
    ha.wait_until(lambda: len(ha.events(FRONT_EVENTS)) >= 2)
    first, second = events(ha)
    assert first["event_type"] == "ring"
    assert first["ring_id"] == ring_id
    assert first["presses"] == 1
    assert first["at"].endswith("Z")
    assert second["ring_id"] == manual
    status = daemon.wait_status(lambda s: s["home_assistant"]["published"] == 2)
    home = status["home_assistant"]
    assert home["connected"] is True
    assert home["url"].startswith("mqtt://127.0.0.1:")
    assert home["dropped_stale"] == 0
    assert status["state"] == "healthy"
    # Events leave in order on one connection: a duplicate of a front ring would come
    # before this back ring does.
    back = ring(daemon, "back")
    ha.wait_until(lambda: len(ha.events(f"{BASE}/back/event")) == 1)
    assert [e["ring_id"] for e in events(ha)] == [ring_id, manual]
    assert [e["ring_id"] for e in events(ha, f"{BASE}/back/event")] == [back]

    human = daemon.cli("status")
    assert "home asst  connected to mqtt://127.0.0.1" in human.stdout
    assert "3 rings published" in human.stdout


def test_a_ring_reaches_home_assistant_while_apple_is_unreachable(
    ha_gateway_files: GatewayFiles,
    home_assistant: HomeAssistantPeer,
    apns_standin_thread: StandInThread,
) -> None:
    apns_standin_thread.set(refuse=True)  # the internet is down
    with DaemonProcess(ha_gateway_files) as daemon:
        wait_entities(home_assistant, 5)
        ring_id = ring(daemon)
        home_assistant.wait_until(lambda: len(home_assistant.events(FRONT_EVENTS)) == 1)
        assert events(home_assistant)[0]["ring_id"] == ring_id
        status = daemon.status()
        assert status["apns"]["connected"] is False
        state = home_assistant.last(f"{BASE}/state")
        assert state is not None
        assert state.json()["apns"] == "disconnected"


def test_home_assistant_restarting_gets_the_discovery_again(
    daemon: DaemonProcess, home_assistant: HomeAssistantPeer
) -> None:
    ha = home_assistant
    wait_entities(ha, 5)
    ha.clear()
    ha.birth()
    ha.wait_until(lambda: len([m for m in ha.messages() if m.topic.endswith("/config")]) >= 5)
    configs = {m.topic for m in ha.messages() if m.topic.endswith("/config") and m.payload}
    assert configs == {e.topic for e in ha.entities()}
    ha.wait_until(lambda: ha.last(f"{BASE}/state") is not None)
    assert ha.last(AVAILABILITY) is None or ha.last(AVAILABILITY).payload == b"online"  # type: ignore[union-attr]


def test_reload_adds_renames_and_removes_buttons_and_remembers_across_restarts(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer
) -> None:
    ha = home_assistant
    files = ha_gateway_files
    with DaemonProcess(files) as daemon:
        wait_entities(ha, 5)

        def change(data: dict[str, Any]) -> None:
            front, _back = data["buttons"]
            front["name"] = "Garden gate"
            data["buttons"] = [
                front,
                {"id": "side", "name": "Side door", "match": {"protocol": "X10", "id": "a1"}},
            ]

        edit_config(files, change)
        status = reload(daemon)  # SIGHUP, as systemctl reload does
        assert status["config"]["reload_error"] is None
        ha.wait_until(
            lambda: (
                {e.unique_id for e in ha.entities("event")}
                == {FRONT_UID, "edgebell_gw-test_side_ring"}
            )
        )
        front = ha.entity(FRONT_UID)
        assert front is not None
        assert front.config["name"] == "Garden gate"
        assert front.topic == "homeassistant/event/edgebell_gw_test/front/config"
        removed = ha.last("homeassistant/event/edgebell_gw_test/back/config")
        assert removed is not None
        assert removed.payload == b""
        for entity in ha.entities():
            assert_valid(entity.topic, entity.config)
        assert daemon.stop() == 0

    # A button removed while the daemon was stopped goes too: the state dir remembers.
    edit_config(files, lambda data: data.__setitem__("buttons", data["buttons"][:1]))
    with DaemonProcess(files) as daemon:
        ha.wait_until(lambda: {e.unique_id for e in ha.entities("event")} == {FRONT_UID})
        assert daemon.wait_status(lambda s: s["home_assistant"]["entities"] == 4)


def test_the_home_broker_going_away_and_coming_back(
    daemon: DaemonProcess, home_assistant: HomeAssistantPeer, home_broker: HomeBroker
) -> None:
    ha = home_assistant
    wait_entities(ha, 5)
    connects = ha.connects
    home_broker.stop()
    status = wait_ha_connected(daemon, False)
    assert any("Home Assistant broker" in p for p in status["problems"])
    assert status["state"] == "degraded"
    ring_id = ring(daemon)  # accepted while the home broker is down: still fresh at reconnect
    daemon.wait_status(lambda s: s["home_assistant"]["queued"] == 1)
    home_broker.start()
    ha.wait_subscribed(timeout=15, connects=connects + 1)
    ha.wait_until(lambda: len(ha.events(FRONT_EVENTS)) == 1, timeout=15)
    assert events(ha)[0]["ring_id"] == ring_id
    status = daemon.wait_status(
        lambda s: s["home_assistant"]["connected"] and s["state"] == "healthy", 15
    )
    assert status["home_assistant"]["queued"] == 0
    assert status["home_assistant"]["connects"] >= 2


def test_stale_rings_are_not_replayed(
    tmp_path: Path,
    ha_gateway_files: GatewayFiles,
    home_assistant: HomeAssistantPeer,
    home_broker: HomeBroker,
) -> None:
    ha = home_assistant
    edit_config(
        ha_gateway_files,
        lambda d: d["home_assistant"].update(max_event_age="1s"),
    )
    with DaemonProcess(ha_gateway_files) as daemon:
        wait_entities(ha, 5)
        connects = ha.connects
        home_broker.stop()
        wait_ha_connected(daemon, False)
        stale = ring(daemon)
        queued_at = time.monotonic()
        daemon.wait_status(lambda s: s["home_assistant"]["queued"] == 1)
        while time.monotonic() - queued_at < 1.5:  # the ring must age past max_event_age
            time.sleep(0.1)
        home_broker.start()
        ha.wait_subscribed(timeout=15, connects=connects + 1)
        wait_ha_connected(daemon, True)
        fresh = ring(daemon)
        ha.wait_until(lambda: len(ha.events(FRONT_EVENTS)) >= 1, timeout=15)
        status = daemon.wait_status(lambda s: s["home_assistant"]["published"] == 1)
        # The stale ring would have gone first: only the fresh one arrived.
        assert [e["ring_id"] for e in events(ha)] == [fresh]
        assert stale != fresh
        assert status["home_assistant"]["dropped_stale"] == 1


def test_sigterm_says_offline_and_the_last_will_covers_a_crash(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer, home_broker: HomeBroker
) -> None:
    ha = home_assistant
    daemon = DaemonProcess(ha_gateway_files).start()
    wait_entities(ha, 5)
    assert daemon.stop() == 0
    ha.wait_until(lambda: ha.last(AVAILABILITY).payload == b"offline")  # type: ignore[union-attr]
    # Retained: a Home Assistant that starts now still sees the doorbell as unavailable.
    late = connect_home_assistant(home_broker, client_id="late-ha")
    try:
        late.wait_until(lambda: late.last(AVAILABILITY) is not None)
        seen = late.last(AVAILABILITY)
        assert seen is not None
        assert seen.retain
        assert seen.payload == b"offline"
    finally:
        late.close()

    import signal

    daemon = DaemonProcess(ha_gateway_files).start()
    ha.wait_until(lambda: ha.last(AVAILABILITY).payload == b"online")  # type: ignore[union-attr]
    daemon.stop(signal.SIGKILL)
    ha.wait_until(lambda: ha.last(AVAILABILITY).payload == b"offline", timeout=20)  # type: ignore[union-attr]


def test_tls_with_the_home_ca(
    tmp_path: Path,
    pki: TestPki,
    apns_standin_thread: StandInThread,
    rflink_receiver: FakeReceiver,
    home_broker: HomeBroker,
    home_assistant: HomeAssistantPeer,
) -> None:
    from testkit.gateway import random_token, token_auth, write_config

    files = write_config(
        tmp_path,
        port=str(rflink_receiver.path),
        apns_url=apns_standin_thread.url,
        ca_file=pki.ca.cert,
        auth=token_auth(pki.auth_key),
        tokens=[random_token()],
        overrides={
            "home_assistant": home_assistant_section(
                home_broker, url=home_broker.tls_url, ca_file=str(pki.ca.cert)
            )
        },
    )
    checked = DaemonProcess(files).cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert f"home_assistant: {home_broker.tls_url} as edgebell;" in checked.stdout
    assert "events on edgebell/gw-test/<button>/event" in checked.stdout
    with DaemonProcess(files) as daemon:
        wait_entities(home_assistant, 5)
        status = wait_ha_connected(daemon)
        assert status["home_assistant"]["url"].startswith("mqtts://")


def test_wrong_password_is_named_in_status(
    ha_gateway_files: GatewayFiles, home_broker: HomeBroker
) -> None:
    secret = home_broker.password_files[HA_USER].with_name("wrong.password")
    secret.write_text("not-the-password\n")
    secret.chmod(0o600)
    edit_config(ha_gateway_files, lambda d: d["home_assistant"].update(password_file=str(secret)))
    with DaemonProcess(ha_gateway_files) as daemon:
        status = daemon.wait_status(lambda s: s["home_assistant"]["last_error"] is not None)
        problem = next(p for p in status["problems"] if "Home Assistant broker" in p)
        assert "credentials" in problem
        assert "not-the-password" not in json.dumps(status)
        assert ring(daemon)  # the ring path does not care


def test_reload_moves_to_another_base_topic_and_drops_the_section(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer
) -> None:
    ha = home_assistant
    with DaemonProcess(ha_gateway_files) as daemon:
        wait_entities(ha, 5)
        old_uids = {e.unique_id for e in ha.entities()}
        edit_config(
            ha_gateway_files,
            lambda d: d["home_assistant"].update(base_topic="house/bell", node_id="bell"),
        )
        reload(daemon)
        # The old link says offline and goes; the new one moves every entity, ids kept.
        ha.wait_until(
            lambda: (
                {e.topic.split("/")[2] for e in ha.entities()} == {"bell"}
                and len(ha.entities()) == 5
            )
        )
        assert {e.unique_id for e in ha.entities()} == old_uids
        assert ha.last(AVAILABILITY).payload == b"offline"  # type: ignore[union-attr]
        ha.wait_until(lambda: ha.last("house/bell/availability") is not None)
        for entity in ha.entities():
            assert_valid(entity.topic, entity.config)
            assert entity.config["availability"] == [{"topic": "house/bell/availability"}]
        status = daemon.wait_status(
            lambda s: (
                s["home_assistant"]["connected"]
                and s["home_assistant"]["base_topic"] == "house/bell"
            )
        )
        assert status["config"]["restart_needed"] == []
        ring_id = ring(daemon)
        ha.wait_until(lambda: len(ha.events("house/bell/front/event")) == 1)
        assert events(ha, "house/bell/front/event")[0]["ring_id"] == ring_id

        edit_config(ha_gateway_files, lambda d: d.pop("home_assistant"))
        reload(daemon)
        ha.wait_until(lambda: ha.last("house/bell/availability").payload == b"offline")  # type: ignore[union-attr]
        assert daemon.wait_status(lambda s: s["home_assistant"] is None)["state"] == "healthy"


def test_a_home_broker_that_never_answers_does_not_hold_up_the_pushes(
    ha_gateway_files: GatewayFiles, apns_standin_thread: StandInThread
) -> None:
    import socket

    # A black hole on loopback: TCP connects (the kernel's backlog), MQTT never answers.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"mqtt://127.0.0.1:{hole.getsockname()[1]}"
        edit_config(
            ha_gateway_files,
            lambda d: d["home_assistant"].update(url=url, connect_timeout="1s"),
        )
        with DaemonProcess(ha_gateway_files) as daemon:
            for n in range(3):
                ring_id = ring(daemon)
                apns_standin_thread.wait_for(lambda s, n=n: len(pushes(s)) == n + 1)
                assert apns_standin_thread.responses()[n].json()["edgebell"]["ring_id"] == ring_id
            status = daemon.wait_status(lambda s: s["home_assistant"]["last_error"] is not None)
            assert status["home_assistant"]["connected"] is False
            assert status["home_assistant"]["queued"] == 3
            assert any(url in p for p in status["problems"])


def test_apple_refusing_the_key_shows_as_auth_error_in_home_assistant(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer
) -> None:
    edit_config(ha_gateway_files, lambda d: d["apns"]["auth"].update(key_id="WRONGKEY01"))
    with DaemonProcess(ha_gateway_files):
        ha = home_assistant
        ha.wait_until(
            lambda: (
                (state := ha.last(f"{BASE}/state")) is not None
                and state.json()["apns"] == "auth_error"
            )
        )
        state = ha.last(f"{BASE}/state")
        assert state is not None
        assert "InvalidProviderToken" in state.json()["apns_error"]
        sensor = ha.entity("edgebell_gw-test_apns")
        assert sensor is not None
        assert "auth_error" in sensor.config["options"]


def test_a_wiped_state_dir_still_removes_the_entities_of_removed_buttons(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer
) -> None:
    ha = home_assistant
    with DaemonProcess(ha_gateway_files) as daemon:
        wait_entities(ha, 5)
        assert daemon.stop() == 0
    # Reinstalled: the state directory is gone, the broker still retains the old configs.
    (ha_gateway_files.state_dir / "home-assistant.json").unlink()
    edit_config(ha_gateway_files, lambda d: d.__setitem__("buttons", d["buttons"][:1]))
    with DaemonProcess(ha_gateway_files):
        ha.wait_until(lambda: {e.unique_id for e in ha.entities("event")} == {FRONT_UID})
        removed = ha.last("homeassistant/event/edgebell_gw_test/back/config")
        assert removed is not None
        assert removed.payload == b""
        assert len(ha.entities()) == 4


def test_a_gateway_with_many_buttons_announces_them_all_in_windows(
    ha_gateway_files: GatewayFiles, home_assistant: HomeAssistantPeer
) -> None:
    buttons = [
        {"id": f"b{n}", "name": f"Button {n}", "match": {"protocol": "X10", "id": f"a{n}"}}
        for n in range(16)
    ]
    edit_config(ha_gateway_files, lambda d: d.__setitem__("buttons", buttons))
    with DaemonProcess(ha_gateway_files) as daemon:
        wait_entities(home_assistant, 16 + 3)
        for entity in home_assistant.entities():
            assert_valid(entity.topic, entity.config)
        # aiomqtt warns above 10 calls in flight: the announcement goes a window at a time.
        assert "pending publish calls" not in daemon.log_text()
