"""The demo's home: a local Mosquitto as the home broker and a Home Assistant stand-in on it.

Used by ``scripts/demo`` when mosquitto is installed: the doorbell is discovered by
the stand-in as Home Assistant would, and each ring arrives there as an event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from testkit.gateway import GATEWAY_ID, DaemonProcess
from testkit.ha_peer import HomeAssistantPeer
from testkit.home_broker import GATEWAY_USER, HA_USER, HomeBroker
from testkit.mosquitto import mosquitto_binary

BASE = f"edgebell/{GATEWAY_ID}"
_TIMEOUT = 15.0


class LocalHome:
    """A home broker with password users and Home Assistant's side subscribed to it."""

    def __init__(self, broker: HomeBroker, ha: HomeAssistantPeer) -> None:
        self.broker = broker
        self.ha = ha

    @classmethod
    @contextlib.contextmanager
    def start_if_installed(cls, root: Path) -> Iterator[LocalHome | None]:
        """The running local home, or None when mosquitto is not installed."""
        if mosquitto_binary() is None:
            yield None
            return
        with (
            HomeBroker(root / "home-broker") as broker,
            HomeAssistantPeer(
                broker.host, broker.port, username=HA_USER, password=broker.users[HA_USER]
            ) as ha,
        ):
            yield cls(broker, ha)

    def introduce(self, say: Callable[[str], None]) -> None:
        say(f"      A second Mosquitto plays the home's own broker at {self.broker.url}")
        say("      (user and password, as Home Assistant's Mosquitto add-on), with a Home")
        say("      Assistant stand-in subscribed to it: nothing is configured on its side.")

    def config_section(self) -> dict[str, Any]:
        return {
            "url": self.broker.url,
            "username": GATEWAY_USER,
            "password_file": str(self.broker.password_files[GATEWAY_USER]),
        }

    def show_discovery(self, daemon: DaemonProcess, say: Callable[[str], None]) -> None:
        ha = self.ha
        ha.wait_until(lambda: len(ha.entities()) >= 5, _TIMEOUT)
        say("      Home Assistant discovered one device with these entities (MQTT discovery):")
        for entity in sorted(ha.entities(), key=lambda e: (e.component, e.unique_id)):
            config = entity.config
            kind = entity.component + (
                f" ({config['device_class']})" if config.get("device_class") else ""
            )
            say(f"        {config['default_entity_id']:<44} {kind:<28} {config['name']!r}")
        device = ha.entities()[0].config["device"]
        say(f"      device: {device['name']!r}, {device['manufacturer']} {device['sw_version']}")

    def show_events(self, say: Callable[[str], None]) -> None:
        ha = self.ha
        ha.wait_until(lambda: any(m.topic.endswith("/event") for m in ha.messages()), _TIMEOUT)
        say("      Rings as they reached Home Assistant (in parallel with the pushes above):")
        for message in ha.messages():
            if message.topic.endswith("/event") and not message.retain:
                event = message.json()
                say(
                    f"        {message.topic:<28} {event['event_type']} {event['ring_id'][:8]}…"
                    f" presses {event['presses']} at {event['at']}"
                )
