"""What edgebell announces to Home Assistant, checked against its documented discovery schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ha_schema import assert_valid, problems
from hypothesis import given
from hypothesis import strategies as st

from edgebell.homeassistant import discovery
from edgebell.homeassistant.discovery import Button, GatewayState, Layout
from edgebell.homeassistant.events import EventQueue
from edgebell.rings import Ring

LAYOUT = Layout("homeassistant", "edgebell_gw_0001", "edgebell/gw-0001")
BUTTONS = [Button("front", "Front door"), Button("back", "Back door")]


def configs(buttons: list[Button] = BUTTONS, layout: Layout = LAYOUT) -> dict[str, dict[str, Any]]:
    found = discovery.discovery(layout, gateway_id="gw-0001", version="1.2.3", buttons=buttons)
    return {topic: json.loads(payload) for topic, payload in found.items()}


def by_component(found: dict[str, dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [c for t, c in found.items() if t.split("/")[1] == component]


def test_every_config_follows_the_documented_schema() -> None:
    found = configs()
    assert len(found) == 5  # two doorbells, two sensors, one binary sensor
    for topic, payload in found.items():
        assert_valid(topic, payload)


def test_the_schema_check_can_fail() -> None:
    event = next(iter(by_component(configs(), "event")))
    assert problems("event", {k: v for k, v in event.items() if k != "event_types"})
    assert problems("event", {**event, "state_topc": "x"})
    assert problems("event", {**event, "device": {"name": "no identifiers"}})
    assert problems("sensor", {"state_topic": "s", "options": ["a"], "state_class": "measurement"})
    assert problems("binary_sensor", {"state_topic": "s", "device_class": "doorbell"})
    assert problems("event", {**event, "default_entity_id": "sensor.front"})


def test_one_doorbell_event_entity_per_button_on_the_contract_topic() -> None:
    events = {c["name"]: c for c in by_component(configs(), "event")}
    front = events["Front door"]
    assert front["device_class"] == "doorbell"
    assert front["event_types"] == ["ring"]
    assert front["state_topic"] == "edgebell/gw-0001/front/event"
    assert front["availability"] == [{"topic": "edgebell/gw-0001/availability"}]
    assert front["default_entity_id"] == "event.edgebell_gw_0001_front"
    assert front["device"] == {
        "identifiers": ["edgebell_gw-0001"],
        "name": "Doorbell gateway gw-0001",
        "manufacturer": "edgebell",
        "model": "Doorbell gateway",
        "sw_version": "1.2.3",
    }


def test_diagnostics_queue_apns_and_the_receiver() -> None:
    found = configs()
    sensors = {c["unique_id"]: c for c in by_component(found, "sensor")}
    assert set(sensors) == {"edgebell_gw-0001_queue", "edgebell_gw-0001_apns"}
    assert sensors["edgebell_gw-0001_apns"]["options"] == [
        "connected",
        "disconnected",
        "auth_error",
    ]
    (receiver,) = by_component(found, "binary_sensor")
    assert receiver["device_class"] == "connectivity"
    assert all(c["entity_category"] == "diagnostic" for c in [*sensors.values(), receiver])


def test_one_device_for_every_entity() -> None:
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs().values()}
    assert len(devices) == 1


def test_a_renamed_button_keeps_its_topic_and_unique_id() -> None:
    before = configs([Button("front", "Front door")])
    after = configs([Button("front", "Garden gate")])
    assert before.keys() == after.keys()
    topic = "homeassistant/event/edgebell_gw_0001/front/config"
    assert before[topic]["unique_id"] == after[topic]["unique_id"]
    assert after[topic]["name"] == "Garden gate"


def test_unique_ids_do_not_depend_on_the_topic_layout() -> None:
    other = Layout("ha", "my_node", "house/bell")
    a = {c["unique_id"] for c in configs().values()}
    b = {c["unique_id"] for c in configs(layout=other).values()}
    assert a == b


def test_button_ids_with_dots_get_distinct_valid_topics() -> None:
    found = configs([Button("gate.1", "Gate"), Button("gate_1", "Other gate")])
    topics = [t for t in found if "/event/" in t]
    assert len(set(topics)) == 2
    for topic, payload in found.items():
        assert_valid(topic, payload)
    gate = next(c for c in found.values() if c.get("name") == "Gate")
    assert gate["state_topic"] == "edgebell/gw-0001/gate.1/event"  # the contract keeps the id


def test_announcement_removes_first_then_publishes_what_is_configured() -> None:
    old = discovery.discovery(LAYOUT, gateway_id="gw-0001", version="1", buttons=BUTTONS)
    new = discovery.discovery(LAYOUT, gateway_id="gw-0001", version="1", buttons=BUTTONS[:1])
    messages = discovery.announcement(new, old)
    (removed,) = [m for m in messages if not m.payload]
    assert removed.topic == "homeassistant/event/edgebell_gw_0001/back/config"
    assert removed.retain
    assert messages[0] == removed
    assert [m.topic for m in messages[1:]] == list(new)
    assert all(m.retain for m in messages)


def test_event_payload_is_the_contract_and_never_retained() -> None:
    ring = Ring("8c0f", "front", "Front door", 1_700_000_000.25, presses=3)
    message = discovery.event_message(LAYOUT, ring)
    assert message.topic == "edgebell/gw-0001/front/event"
    assert not message.retain
    assert json.loads(message.payload) == {
        "event_type": "ring",
        "ring_id": "8c0f",
        "presses": 3,
        "at": "2023-11-14T22:13:20.250Z",
        "button": "front",
    }


def test_state_and_availability_are_retained() -> None:
    state = discovery.state_message(
        LAYOUT, GatewayState(4, "auth_error", "403 InvalidToken", False)
    )
    assert state.retain
    assert state.topic == "edgebell/gw-0001/state"
    assert json.loads(state.payload) == {
        "queue": 4,
        "apns": "auth_error",
        "apns_error": "403 InvalidToken",
        "receiver": "OFF",
    }
    assert discovery.availability(LAYOUT, online=False).payload == b"offline"
    assert discovery.availability(LAYOUT, online=True).retain


@pytest.mark.parametrize(
    ("connected", "auth", "state"),
    [(True, None, "connected"), (False, None, "disconnected"), (True, "403", "auth_error")],
)
def test_apns_state(connected: bool, auth: str | None, state: str) -> None:
    assert discovery.apns_state(connected=connected, auth_problem=auth) == state


def _message(n: int) -> Ring:
    return Ring(f"r{n}", "front", "Front door", 1_700_000_000.0 + n)


def test_queue_hands_out_fresh_rings_in_order_until_acknowledged() -> None:
    queue = EventQueue(max_age=60.0)
    for n in range(3):
        queue.put(_message(n), now=100.0 + n)
    batch = queue.head(now=110.0, count=2)
    assert [p.ring.ring_id for p in batch] == ["r0", "r1"]
    assert queue.head(now=110.0, count=2) == batch  # not acknowledged: offered again
    queue.done(batch)
    assert [p.ring.ring_id for p in queue.head(now=110.0, count=5)] == ["r2"]


def test_queue_drops_stale_rings_and_counts_them() -> None:
    queue = EventQueue(max_age=60.0)
    queue.put(_message(0), now=0.0)
    queue.put(_message(1), now=30.0)
    queue.put(_message(2), now=95.0)
    assert [p.ring.ring_id for p in queue.head(now=100.0, count=10)] == ["r2"]
    assert queue.dropped_stale == 2
    assert len(queue) == 1


def test_queue_is_bounded() -> None:
    queue = EventQueue(max_age=60.0, limit=2)
    for n in range(3):
        queue.put(_message(n), now=0.0)
    assert [p.ring.ring_id for p in queue.head(now=0.0, count=5)] == ["r1", "r2"]
    assert queue.dropped_full == 1


BUTTON_IDS = st.text(
    alphabet=st.sampled_from("abcXYZ019._-"), min_size=1, max_size=64
)  # the config's button id rule: [A-Za-z0-9_.-]{1,64}


@given(st.lists(BUTTON_IDS, min_size=1, max_size=8, unique=True))
def test_distinct_button_ids_get_distinct_valid_topics_and_unique_ids(ids: list[str]) -> None:
    found = configs([Button(i, f"Button {i}") for i in ids])
    events = [c for t, c in found.items() if t.split("/")[1] == "event"]
    assert len({c["unique_id"] for c in events}) == len(ids)
    assert len([t for t in found if t.split("/")[1] == "event"]) == len(ids)
    for topic, payload in found.items():
        assert_valid(topic, payload)


def test_leftover_configs_are_retained_ones_not_announced_now() -> None:
    current = {"homeassistant/event/n/front/config"}
    gone = "homeassistant/event/n/back/config"
    assert discovery.leftover(gone, b"{}", retained=True, current=current)
    assert not discovery.leftover(gone, b"", retained=True, current=current)  # already cleared
    assert not discovery.leftover(gone, b"{}", retained=False, current=current)  # live, ours
    assert not discovery.leftover(next(iter(current)), b"{}", retained=True, current=current)
    assert LAYOUT.own_configs == "homeassistant/+/edgebell_gw_0001/+/config"
