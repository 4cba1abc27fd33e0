"""One environment's way to Apple: open, down (one reconnect loop), or probing with one push.

A transport failure (connection refused, TLS, GOAWAY, reset, timeout) is a fact
about the connection, not about a notification, so it is handled here once: the
link goes down and a single loop reconnects with full-jitter backoff while every
queued notification waits. A reconnect that works is not yet proof: an APNs that
accepts connections and answers PINGs may still never answer a request. So the
link first lets one push through as a probe; any answer from Apple opens the gate
for everyone, another transport failure puts the link down again, backing off
further. With no push waiting there is nothing to probe with: the reconnect opens
the link, and the next push is the test. A fresh ring skips the backoff wait: a
person at the door is worth one attempt now, and rings are too rare to hammer
anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class LinkState(enum.Enum):
    UP = "up"  # pushes go straight out
    DOWN = "down"  # the reconnect loop runs; pushes wait
    PROBING = "probing"  # connected again: one push tests that Apple answers


Ticket = asyncio.Future[bool]
"""Permission to send: resolves to True when the holder is the probe."""


class Link:
    """The gate every push of one environment passes before going on the wire."""

    def __init__(
        self,
        name: str,
        *,
        connect: Callable[[], Awaitable[None]],
        delay: Callable[[int], float],
    ) -> None:
        """``connect`` opens or health-checks the connection (raising when it cannot);
        ``delay(n)`` is the wait before reconnect attempt ``n`` (1-based)."""
        self.name = name
        self.state = LinkState.UP
        self.last_error: str | None = None
        self.outages = 0  # times the link went down (status, tests)
        self._connect = connect
        self._delay = delay
        self._failures = 0  # consecutive failed reconnects or probes since the link last worked
        self._probe_out = False
        self._queue: collections.deque[Ticket] = collections.deque()
        self._loop_task: asyncio.Task[None] | None = None
        self._nudge = asyncio.Event()

    # -- pushes ask, and say how it went ---------------------------------------------

    def ticket(self, *, urgent: bool = False) -> Ticket:
        """Ask to send; ``urgent`` (a fresh ring) queues first and cuts the backoff short."""
        ticket: Ticket = asyncio.get_running_loop().create_future()
        if self.state is LinkState.UP:
            ticket.set_result(False)
        elif self.state is LinkState.PROBING and not self._probe_out:
            self._probe_out = True
            ticket.set_result(True)
        else:
            if urgent:
                self._queue.appendleft(ticket)
                self._nudge.set()
            else:
                self._queue.append(ticket)
        return ticket

    def give_back(self, ticket: Ticket) -> None:
        """The holder will not send after all (woken, expired, cancelled): pass the probe on."""
        if not ticket.done():
            ticket.cancel()  # skipped when its turn comes
        elif not ticket.cancelled() and ticket.result():
            self._probe_out = False
            self._next_probe()

    def answered(self, *, probe: bool) -> None:
        """Apple answered a push (any status): requests get through."""
        if probe:
            self._probe_out = False
        if self.state is not LinkState.UP:
            self._set_up()
        self._failures = 0

    def inconclusive(self, *, probe: bool) -> None:
        """The push never reached Apple for a local reason: it proves nothing either way."""
        if probe:
            self._probe_out = False
            self._next_probe()

    def failed(self, detail: str, *, probe: bool) -> None:
        """A push got no answer from Apple (transport failure)."""
        self.last_error = detail
        if probe:
            self._probe_out = False
            self._failures += 1
        elif self.state is not LinkState.UP:
            # A straggler sent before the link went down says nothing about the new connection.
            return
        if self.state is LinkState.UP:
            self.outages += 1
            log.warning("APNs %s unreachable (%s): pushes wait and retry", self.name, detail)
        self.state = LinkState.DOWN
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._reconnect(), name=f"link-{self.name}")

    def connect_failed(self, detail: str) -> None:
        """Connecting failed outside a push (the warm-up at start)."""
        self.failed(detail, probe=False)

    # -- the reconnect loop --------------------------------------------------------------

    async def _reconnect(self) -> None:
        while True:
            if self._failures > 0 and not self._nudge.is_set():
                # The first attempt after a working link goes at once (a GOAWAY is routine);
                # later ones back off, unless a fresh ring waits (the nudge stays set for it).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), self._delay(self._failures))
            self._nudge.clear()
            try:
                await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                self.last_error = str(exc)
                log.debug("APNs %s still unreachable: %s", self.name, exc)
                continue
            if self.state is not LinkState.DOWN:
                return  # an answer from Apple opened the link meanwhile
            if all(ticket.done() for ticket in self._queue):
                log.info("APNs %s connected again; no push waits", self.name)
                self._set_up(quiet=True)
                return
            log.info("APNs %s connected again: probing with one push", self.name)
            self.state = LinkState.PROBING
            self._next_probe()
            return

    def _next_probe(self) -> None:
        if self.state is not LinkState.PROBING or self._probe_out:
            return
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():
                self._probe_out = True
                ticket.set_result(True)
                return
        # Nobody waits: the next push to ask becomes the probe.

    def _set_up(self, *, quiet: bool = False) -> None:
        was = self.state
        self.state = LinkState.UP
        self._probe_out = False
        task, self._loop_task = self._loop_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if was is not LinkState.UP and not quiet:
            log.info("APNs %s answers again: sending what waited", self.name)
        queue, self._queue = self._queue, collections.deque()
        for ticket in queue:
            if not ticket.done():
                ticket.set_result(False)

    async def close(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for ticket in self._queue:
            ticket.cancel()
        self._queue.clear()
