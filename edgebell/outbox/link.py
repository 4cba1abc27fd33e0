"""One environment's way to Apple, as a state machine: open, down, or probing; and how much.

A transport failure (connection refused, TLS, GOAWAY, reset, timeout) is a fact
about the connection, not about a notification, so it is handled here once: the
link goes down and asks to reconnect, at once the first time, then with full-jitter
backoff while every queued notification waits. A reconnect that works is not yet
proof: an APNs that accepts connections and answers PINGs may still never answer a
request. So the link first lets one push through as a probe; any answer from Apple
opens the gate for everyone, another transport failure puts the link down again,
backing off further. With no push waiting there is nothing to probe with: the
reconnect opens the link, and the next push is the test. A fresh ring skips the
backoff wait: a person at the door is worth one attempt now.

How much goes out at once is the link's too, per connection and environment:

- a window of requests in flight. After an abrupt loss (answers in flight died with
  the socket) the next connection starts with a few streams and widens the window
  by one per answer (slow start, up to half the window the loss happened at, then
  by one per window): a front end that drops every few dozen answers costs a few
  dozen resends per connection, not everything queued each time;
- a pause after 5xx answers (Apple overloaded): nothing new goes out for a jittered
  delay of up to ``retry_min``, which doubles only after several 5xx answers in a row
  without a success. While Apple answers at all, pushes keep going within a second or
  two; when it only answers 5xx, the pauses grow to ``retry_max``.

The link never sleeps, sends or connects itself: the engine (dispatcher) asks it
what is allowed now, tells it what happened, and keeps its timers.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Requests in flight on one connection at most: ample for a doorbell's fan-out, and it
# bounds h2's per-request bookkeeping, which walks every open stream.
MAX_WINDOW = 128
# Streams a connection starts with after an abrupt loss.
RESTART_WINDOW = 4


class LinkState(enum.Enum):
    UP = "up"  # pushes go out, within the window
    DOWN = "down"  # waiting to reconnect (or connecting); pushes wait
    PROBING = "probing"  # connected again: one push tests that Apple answers


class Link:
    """The gate every push of one environment passes before going on the wire."""

    def __init__(
        self,
        name: str,
        *,
        reconnect_delay: Callable[[int], float],
        pause_delay: Callable[[int], float],
    ) -> None:
        """``reconnect_delay(n)`` is the wait before reconnect attempt ``n`` (1-based);
        ``pause_delay(n)`` the pause after the ``n``-th 5xx in a row."""
        self.name = name
        self.state = LinkState.UP
        self.last_error: str | None = None
        self.window: float = MAX_WINDOW
        self.in_flight = 0  # requests of this link's current era (connection) on the wire
        self.connecting = False
        self.reconnect_at: float | None = None  # when to try connecting (DOWN only)
        self.paused_until = 0.0
        self._reconnect_delay = reconnect_delay
        self._pause_delay = pause_delay
        self._threshold: float = MAX_WINDOW  # slow start below it, one per window above
        self._failures = 0  # consecutive failed reconnects or probes since the link worked
        self._strikes = 0  # 5xx answers without a success in between
        self._probe_out = False
        self._seq = 0  # requests sent; a request's number tells which era it belongs to
        self._era = 0  # first request number sent since the link last went down

    # -- what may go out -----------------------------------------------------------------

    def may_send(self, now: float) -> bool:
        if self.state is LinkState.UP:
            return self.in_flight < int(self.window) and now >= self.paused_until
        return self.state is LinkState.PROBING and not self._probe_out

    def sent(self) -> tuple[int, bool]:
        """A request goes out now: its number and whether it is the probe."""
        self._seq += 1
        self.in_flight += 1
        probe = self.state is LinkState.PROBING
        if probe:
            self._probe_out = True
        return self._seq, probe

    # -- what happened ---------------------------------------------------------------------

    def answered(self, seq: int, *, probe: bool, overloaded: bool, now: float) -> None:
        """Apple answered request ``seq``; ``overloaded``: with a 5xx (or its JWT limits)."""
        self._landed(seq)
        if probe:
            self._probe_out = False
        if seq < self._era and not probe:
            return  # sent on a connection already given up: says nothing about this one
        if self.state is not LinkState.UP:
            self._set_up()
        self._failures = 0
        if overloaded:
            # Apple is busy, not the connection: nothing new goes out for a while. The window
            # stays (halving it per 5xx would make a storm of random 503s crawl, a few pushes
            # per round trip, and keep a visitor's phones waiting for minutes).
            self._strikes += 1
            self.paused_until = max(self.paused_until, now + self._pause_delay(self._strikes))
            return
        self._strikes = 0
        if self.window < self._threshold:
            self.window += 1  # slow start: doubles per round trip
        else:
            self.window += 1 / self.window
        self.window = min(self.window, MAX_WINDOW)

    def unanswered(
        self, seq: int, *, probe: bool, processed: bool, now: float, detail: str
    ) -> None:
        """Request ``seq`` got no answer (transport failure); ``processed``: Apple may have
        acted on it (it died in flight) rather than certainly not (GOAWAY, refused)."""
        self._landed(seq)
        self.last_error = detail
        if probe:
            self._probe_out = False
            self._failures += 1
        elif seq < self._era or self.state is not LinkState.UP:
            return  # a straggler of a connection already given up
        if processed:
            # Answers died with the connection: it took more than it could carry.
            self._threshold = max(float(RESTART_WINDOW), self.window / 2)
            self.window = float(RESTART_WINDOW)
        self._down(now, detail)

    def local_failure(self, seq: int, *, probe: bool) -> None:
        """The push never reached Apple for a local reason: it proves nothing either way."""
        self._landed(seq)
        if probe:
            self._probe_out = False

    def lost(self, now: float, detail: str, *, abrupt: bool) -> None:
        """The connection went away (the client says so before the requests on it fail);
        ``abrupt``: it died (reset, failed PING) rather than draining after a GOAWAY."""
        if self.state is not LinkState.UP:
            return
        if self.in_flight:
            # It went away under load: answers died with it (abrupt), or the requests above
            # the GOAWAY's last stream come back to be sent again. Either way the next
            # connection starts small, so a front end that goes away every few dozen
            # requests gets a few dozen resends each time, not the whole window.
            self._threshold = max(float(RESTART_WINDOW), self.window / 2)
            self.window = float(RESTART_WINDOW)
        self._down(now, detail)

    def connect_failed(self, now: float, detail: str) -> None:
        """A connect attempt failed (also the warm-up at start)."""
        self.connecting = False
        self.last_error = detail
        if self.state is LinkState.UP:
            self._down(now, detail)
            return
        self._failures += 1
        self.state = LinkState.DOWN
        self.reconnect_at = now + self._reconnect_delay(self._failures)

    def connected(self, *, waiting: bool) -> None:
        """A connect attempt worked; ``waiting``: pushes wait to go (one probes first)."""
        self.connecting = False
        if self.state is not LinkState.DOWN:
            return  # an answer opened the link meanwhile
        self.reconnect_at = None
        if not waiting:
            log.info("APNs %s connected again; no push waits", self.name)
            self._set_up(quiet=True)
            return
        log.info("APNs %s connected again: probing with one push", self.name)
        self.state = LinkState.PROBING
        self._probe_out = False

    def hurry(self, now: float) -> None:
        """A fresh ring waits: the next reconnect attempt goes now, not after the backoff."""
        if self.state is LinkState.DOWN and not self.connecting:
            self.reconnect_at = now

    def due_to_connect(self, now: float) -> bool:
        return (
            self.state is LinkState.DOWN
            and not self.connecting
            and self.reconnect_at is not None
            and self.reconnect_at <= now
        )

    # -- internals -------------------------------------------------------------------------

    def _landed(self, seq: int) -> None:
        if seq >= self._era:  # earlier ones were written off when the link went down
            self.in_flight -= 1

    def _down(self, now: float, detail: str) -> None:
        if self.state is LinkState.UP:
            log.warning("APNs %s unreachable (%s): pushes wait and retry", self.name, detail)
        self.state = LinkState.DOWN
        self._era = self._seq + 1
        self.in_flight = 0
        if not self.connecting:
            # The first attempt after a working link goes at once (a GOAWAY is routine).
            delay = self._reconnect_delay(self._failures) if self._failures else 0.0
            self.reconnect_at = now + delay

    def _set_up(self, *, quiet: bool = False) -> None:
        was = self.state
        self.state = LinkState.UP
        self._probe_out = False
        self.reconnect_at = None
        if was is not LinkState.UP and not quiet:
            log.info("APNs %s answers again: sending what waited", self.name)
