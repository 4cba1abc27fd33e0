"""No error on the way from a button to the phones loses the ring itself."""

from __future__ import annotations

import logging

import pytest

from edgebell.buttons import Button
from edgebell.config import load_config
from edgebell.daemon import Daemon
from edgebell.rings import Notification, Ring
from testkit.gateway import GatewayFiles


class Recorder:
    """Stands in for the dispatcher and the cloud sync: keeps what the daemon hands them."""

    def __init__(self) -> None:
        self.submitted: list[Notification] = []
        self.empty_rings: list[str] = []
        self.published: list[Ring] = []

    def submit(self, notifications: list[Notification]) -> None:
        self.submitted += notifications

    def open_ring(self, ring_id: str) -> None:
        self.empty_rings.append(ring_id)

    def ring(self, ring: Ring) -> None:
        self.published.append(ring)


def test_a_ring_whose_fan_out_fails_is_still_counted_published_and_logged(
    gateway_files: GatewayFiles,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = Daemon(load_config(gateway_files.config))
    recorder = Recorder()
    daemon.dispatcher = recorder  # type: ignore[assignment]
    daemon.cloud = recorder  # type: ignore[assignment]

    def broken(*args: object, **kwargs: object) -> list[Notification]:
        raise ValueError("payload limit of 4096 bytes leaves no room for the alert text")

    monkeypatch.setattr(daemon.notifier, "fan_out", broken)
    front = Button("front", "Front door", daemon.config.buttons[0].key)
    with caplog.at_level(logging.ERROR, logger="edgebell.daemon"):
        ring = daemon.ring(front)

    assert recorder.published == [ring]  # P/ring still goes to the cloud
    assert recorder.empty_rings == [ring.ring_id]  # and its (empty) delivery report
    assert daemon.rings["front"] == (ring.at, 1)  # status counts it
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "cannot push it to the phones" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
