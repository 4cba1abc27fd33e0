"""Frames to rings: which button a frame belongs to, debounce and cooldown (sans-I/O)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from edgebell.radio.keys import ButtonKey


@dataclass(frozen=True, slots=True)
class Button:
    """A configured doorbell button."""

    id: str
    name: str
    key: ButtonKey


class Verdict(enum.Enum):
    """What a frame means for its button."""

    UNKNOWN = "unknown"  # matches no configured button (what `edgebell learn` shows)
    RING = "ring"  # the leading edge of a new press: ring now
    REPEAT = "repeat"  # another frame of a press already seen (transmitters repeat)
    COOLDOWN = "cooldown"  # a new press, but the button rang moments ago: counted, not rung


@dataclass(frozen=True, slots=True)
class Press:
    """The tracker's answer for one frame; ``presses`` counts what a RING stands for."""

    verdict: Verdict
    button: Button | None = None
    presses: int = 0


@dataclass(slots=True)
class _ButtonState:
    last_frame_at: float | None = None
    last_ring_at: float | None = None
    held_presses: int = 0  # presses swallowed by cooldown, reported with the next ring
    rings: int = 0  # rings accepted for this button since start (what status shows)
    rang_at: float | None = None  # epoch seconds of the last accepted ring (the ring's own)


class ButtonTracker:
    """Decides, frame by frame, when a button rings.

    Times are monotonic seconds passed in by the caller, so the rules are testable
    without a clock. The first frame of a press rings at once (leading edge);
    frames of the same button within ``debounce`` of the previous frame extend
    that press; a new press within ``cooldown`` of the last ring is only counted.
    """

    def __init__(self, buttons: Iterable[Button], *, debounce: float, cooldown: float) -> None:
        self._by_key = {b.key: b for b in buttons}
        self._by_id = {b.id: b for b in self._by_key.values()}
        self._state = {b.id: _ButtonState() for b in self._by_key.values()}
        self._debounce = debounce
        self._cooldown = cooldown

    @property
    def buttons(self) -> tuple[Button, ...]:
        return tuple(self._by_id.values())

    def button(self, button_id: str) -> Button | None:
        return self._by_id.get(button_id)

    def on_frame(self, key: ButtonKey, now: float) -> Press:
        button = self._by_key.get(key)
        if button is None:
            return Press(Verdict.UNKNOWN)
        state = self._state[button.id]
        previous, state.last_frame_at = state.last_frame_at, now
        if previous is not None and 0 <= now - previous <= self._debounce:
            return Press(Verdict.REPEAT, button)
        if state.last_ring_at is not None and 0 <= now - state.last_ring_at < self._cooldown:
            state.held_presses += 1
            return Press(Verdict.COOLDOWN, button)
        return self._ring(button, state, now)

    def reconfigured(
        self, buttons: Iterable[Button], *, debounce: float, cooldown: float
    ) -> ButtonTracker:
        """A tracker with new settings that remembers the presses of every unchanged button.

        A reload in the middle of a press must neither ring it twice nor forget the
        presses that cooldown is holding for the next ring.
        """
        tracker = ButtonTracker(buttons, debounce=debounce, cooldown=cooldown)
        for button in tracker.buttons:
            old = self._by_id.get(button.id)
            if old is None:
                continue
            state = self._state[button.id]
            if old.key == button.key:
                tracker._state[button.id] = state
            else:  # a new key is a new transmitter, but the button's ring count goes on
                new = tracker._state[button.id]
                new.rings, new.rang_at = state.rings, state.rang_at
        return tracker

    def count_ring(self, button_id: str, at: float) -> None:
        """Count an accepted ring of ``button_id`` (``at``: the ring's epoch seconds)."""
        state = self._state.get(button_id)
        if state is not None:
            state.rings += 1
            state.rang_at = at

    def ring_counts(self) -> list[tuple[str, float | None, int]]:
        """Per button: its id, when it last rang (epoch seconds) and how often since start."""
        return [(b.id, self._state[b.id].rang_at, self._state[b.id].rings) for b in self.buttons]

    def ring_now(self, button_id: str, now: float) -> Press:
        """A ring asked for by a person (CLI, cloud): ignores debounce and cooldown."""
        button = self._by_id.get(button_id)
        if button is None:
            return Press(Verdict.UNKNOWN)
        return self._ring(button, self._state[button.id], now)

    @staticmethod
    def _ring(button: Button, state: _ButtonState, now: float) -> Press:
        presses = state.held_presses + 1
        state.held_presses = 0
        state.last_ring_at = now
        return Press(Verdict.RING, button, presses)
