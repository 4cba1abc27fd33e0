"""The ring path: a frame or a command becomes a ring, its rows committed, then acknowledged.

Top to bottom: the receiver's frame goes to the button tracker (debounce, cooldown);
a RING fans out to one notification per phone (the notifier); the rows are committed
to the outbox and handed to the dispatcher; only then is the ring acknowledged: the
log line, ``P/ring`` to the cloud and the Home Assistant event. Start-up and reload
both build the tracker and the notifier here (:class:`RingRules`), so a reload cannot
build them differently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from edgebell.buttons import Button, ButtonTracker, Verdict
from edgebell.config import Config
from edgebell.notifier import Notifier, Template
from edgebell.outbox.store import OutboxStore
from edgebell.radio.events import BadFrame, Banner, Frame, RadioEvent
from edgebell.rings import Notification, Ring, new_id
from edgebell.tokens import TokenBook

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """What the ring path hands the dispatcher (the narrow end of the delivery engine)."""

    def submit(self, notifications: Sequence[Notification], *, persist: bool = True) -> None: ...

    def open_ring(self, ring_id: str) -> None: ...


class RingListener(Protocol):
    """Told of every accepted ring: the cloud sync (``P/ring``), the Home Assistant link."""

    def ring(self, ring: Ring) -> None: ...


class RingRules:
    """What a frame means and what a push says: the tracker and the notifier of one config.

    Built here at start and rebuilt here on reload; the tracker carries its presses
    and ring counts over (see :meth:`ButtonTracker.reconfigured`).
    """

    def __init__(self, config: Config) -> None:
        self.tracker = ButtonTracker(
            _buttons(config), debounce=config.radio.debounce, cooldown=config.radio.cooldown
        )
        self.notifier = _notifier(config)

    def reconfigure(self, config: Config) -> None:
        self.tracker = self.tracker.reconfigured(
            _buttons(config), debounce=config.radio.debounce, cooldown=config.radio.cooldown
        )
        self.notifier = _notifier(config)

    def collapse(self, older: Notification, newer: Notification) -> Notification:
        """One push for two rings of one button that waited for Apple (see Notifier.collapsed)."""
        button = self.tracker.button(newer.button)
        return self.notifier.collapsed(
            older, newer, newer.button if button is None else button.name
        )


def _buttons(config: Config) -> list[Button]:
    return [Button(b.id, b.name, b.key) for b in config.buttons]


def _notifier(config: Config) -> Notifier:
    n = config.apns.notification
    return Notifier(
        Template(n.title, n.body, n.sound, n.collapsed),
        expiration=config.apns.expiration,
        default_env=config.apns.environment,
    )


class RingPath:
    """Accepts rings: from the receiver's frames and from people (CLI, cloud)."""

    def __init__(
        self,
        rules: RingRules,
        *,
        store: OutboxStore,
        tokens: TokenBook,
        outbox: Outbox,
        listeners: Sequence[RingListener] = (),
        on_unknown: Callable[[Frame], None] = lambda _: None,
    ) -> None:
        self.rules = rules
        self._store = store
        self._tokens = tokens
        self._outbox = outbox
        # Replaced as a whole on reload (the Home Assistant link may be a new one).
        self.listeners: Sequence[RingListener] = listeners
        self.on_unknown = on_unknown  # set by whoever listens (the `learn` command)

    def on_radio_event(self, event: RadioEvent) -> None:
        if isinstance(event, Frame):
            press = self.rules.tracker.on_frame(event.key, time.monotonic())
            if press.verdict is Verdict.RING and press.button is not None:
                self.ring(press.button, press.presses)
            elif press.verdict is Verdict.UNKNOWN:
                self.on_unknown(event)
            elif press.verdict is Verdict.COOLDOWN and press.button is not None:
                log.info("button %s pressed again within cooldown: counted", press.button.id)
        elif isinstance(event, Banner):
            log.info("receiver announced itself: %s", event.text)
        elif isinstance(event, BadFrame):
            log.debug("undecodable receiver output (%s)", event.reason)

    def ring_button(self, button_id: str) -> Ring | None:
        """Ring ``button_id`` now, as ``edgebell ring`` does (no debounce, no cooldown)."""
        press = self.rules.tracker.ring_now(button_id, time.monotonic())
        if press.button is None:
            return None
        return self.ring(press.button, press.presses, manual=True)

    def ring(self, button: Button, presses: int = 1, *, manual: bool = False) -> Ring:
        """Accept a ring: fan out to every authorised phone at once."""
        ring = Ring(new_id(), button.id, button.name, time.time(), presses, manual)
        notifications: list[Notification] = []
        try:
            notifications = self.rules.notifier.fan_out(ring, self._tokens.for_button(button.id))
            # Accepted: every phone's row in one commit, before anything else happens (no
            # log line, no push); the dispatcher may then fold them into waiting pushes.
            self._store.add(notifications)
            with self._store.transaction():
                self._outbox.submit(notifications)
        except Exception:
            # A bug in the fan-out must not lose the ring: it is still counted and published.
            log.exception("ring %s: cannot push it to the phones", ring.ring_id[:8])
            notifications = []
        # Everything below acknowledges the ring: store.add has committed its rows, or
        # they wait in memory for a failing disk and the log line says so.
        durable = self._store.is_durable(ring.ring_id)
        for listener in self.listeners:
            listener.ring(ring)  # a queue append each: published by the link's own task
        self.rules.tracker.count_ring(button.id, ring.at)
        log.info(
            "ring %s: %s (%s)%s, pushing to %d phone%s%s",
            ring.ring_id[:8],
            button.id,
            button.name,
            f", {presses} presses" if presses > 1 else "",
            len(notifications),
            "" if len(notifications) == 1 else "s",
            "" if durable else f"; NOT on disk yet ({self._store.health().last_error})",
        )
        if not notifications:
            self._outbox.open_ring(ring.ring_id)
        return ring
