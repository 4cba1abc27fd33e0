"""Debounce and cooldown as the design describes them."""

from __future__ import annotations

import pytest

from edgebell.buttons import Button, ButtonTracker, Verdict
from edgebell.radio.keys import lines_key

FRONT = Button("front", "Front door", lines_key("A1"))
BACK = Button("back", "Back door", lines_key("B2"))


@pytest.fixture
def tracker() -> ButtonTracker:
    return ButtonTracker([FRONT, BACK], debounce=1.5, cooldown=10.0)


def test_first_frame_rings_at_once(tracker: ButtonTracker) -> None:
    press = tracker.on_frame(FRONT.key, 100.0)
    assert press.verdict is Verdict.RING
    assert press.button == FRONT
    assert press.presses == 1


def test_repeats_within_debounce_are_one_press(tracker: ButtonTracker) -> None:
    tracker.on_frame(FRONT.key, 100.0)
    # A transmitter repeating for 3 s: each frame within 1.5 s of the previous one.
    verdicts = [tracker.on_frame(FRONT.key, 100.0 + 0.5 * i).verdict for i in range(1, 7)]
    assert verdicts == [Verdict.REPEAT] * 6


def test_press_in_cooldown_is_counted_and_reported_with_next_ring(tracker: ButtonTracker) -> None:
    tracker.on_frame(FRONT.key, 100.0)
    assert tracker.on_frame(FRONT.key, 103.0).verdict is Verdict.COOLDOWN
    assert tracker.on_frame(FRONT.key, 106.0).verdict is Verdict.COOLDOWN
    press = tracker.on_frame(FRONT.key, 111.0)
    assert press.verdict is Verdict.RING
    assert press.presses == 3


def test_cooldown_counts_from_the_ring_not_from_the_last_frame(tracker: ButtonTracker) -> None:
    tracker.on_frame(FRONT.key, 100.0)
    tracker.on_frame(FRONT.key, 105.0)  # cooldown press
    assert tracker.on_frame(FRONT.key, 110.0).verdict is Verdict.RING


def test_buttons_are_independent(tracker: ButtonTracker) -> None:
    assert tracker.on_frame(FRONT.key, 100.0).verdict is Verdict.RING
    press = tracker.on_frame(BACK.key, 100.1)
    assert press.verdict is Verdict.RING
    assert press.button == BACK


def test_unknown_key(tracker: ButtonTracker) -> None:
    assert tracker.on_frame(lines_key("ZZ"), 1.0).verdict is Verdict.UNKNOWN


def test_manual_ring_ignores_debounce_and_cooldown(tracker: ButtonTracker) -> None:
    tracker.on_frame(FRONT.key, 100.0)
    assert tracker.on_frame(FRONT.key, 101.0).verdict is Verdict.REPEAT
    assert tracker.ring_now("front", 101.1).verdict is Verdict.RING
    assert tracker.ring_now("nope", 101.2).verdict is Verdict.UNKNOWN


def test_clock_going_backwards_does_not_swallow_presses(tracker: ButtonTracker) -> None:
    tracker.on_frame(FRONT.key, 100.0)
    # Negative gaps are not "within" a window: a press after a clock step still rings.
    assert tracker.on_frame(FRONT.key, 50.0).verdict is Verdict.RING


def test_ring_counts_are_kept_by_the_tracker_and_survive_a_reload_by_id(
    tracker: ButtonTracker,
) -> None:
    tracker.count_ring("front", 1000.0)
    tracker.count_ring("front", 1005.0)
    # The front button gets a new transmitter (another key): its presses start afresh,
    # its ring count goes on; a new button starts at zero.
    moved = Button("front", "Front door", lines_key("C3"))
    gate = Button("gate", "Garden gate", lines_key("D4"))
    again = tracker.reconfigured([moved, BACK, gate], debounce=1.5, cooldown=10.0)
    assert again.ring_counts() == [("front", 1005.0, 2), ("back", None, 0), ("gate", None, 0)]
