"""No error on the way from a button to the phones loses the ring itself."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from edgebell.buttons import Button
from edgebell.config import load_config
from edgebell.outbox.store import OutboxStore
from edgebell.ringpath import RingPath, RingRules
from edgebell.rings import Notification, Ring
from edgebell.tokens import TokenBook
from testkit.gateway import GatewayFiles


class Recorder:
    """Stands in for the dispatcher and the cloud sync: keeps what the ring path hands them."""

    def __init__(self) -> None:
        self.submitted: list[Notification] = []
        self.empty_rings: list[str] = []
        self.published: list[Ring] = []

    def submit(self, notifications: Sequence[Notification], *, persist: bool = True) -> None:
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
    config = load_config(gateway_files.config)
    recorder = Recorder()
    rules = RingRules(config)
    path = RingPath(
        rules,
        store=OutboxStore(config.state_dir / "outbox.sqlite3"),
        tokens=TokenBook(topic=config.apns.topic),
        outbox=recorder,
        listeners=[recorder],
    )

    def broken(*args: object, **kwargs: object) -> list[Notification]:
        raise ValueError("payload limit of 4096 bytes leaves no room for the alert text")

    monkeypatch.setattr(rules.notifier, "fan_out", broken)
    front = Button("front", "Front door", config.buttons[0].key)
    with caplog.at_level(logging.ERROR, logger="edgebell.ringpath"):
        ring = path.ring(front)

    assert recorder.published == [ring]  # P/ring still goes to the cloud
    assert recorder.empty_rings == [ring.ring_id]  # and its (empty) delivery report
    assert ("front", ring.at, 1) in rules.tracker.ring_counts()  # status counts it
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "cannot push it to the phones" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
