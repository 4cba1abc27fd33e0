"""Drives every outbox notification to a final answer from Apple: send, retry, collapse, expire.

Each notification (an outbox row) has one small task that loops until its fate is
settled. What Apple answers decides the row's next step (DESIGN.md's table): 5xx
backs off per row, 429 per token, 410 suppresses the token. No answer at all is a
fact about the connection, so it goes to the environment's :class:`Link`, whose
one reconnect loop probes Apple while the rows wait; a new ring for a phone that
still has an undelivered push of the same button collapses into it ("3 rings at
Front door"), so an outage leaves one push per phone and button, not a pile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from edgebell.backoff import full_jitter
from edgebell.outbox.ledger import INTERIM_REPORT_AFTER, DeliveryReport, Ledger
from edgebell.outbox.link import Link, LinkState, Ticket
from edgebell.outbox.store import OutboxStore, Suppressed
from edgebell.privacy import short_token
from edgebell.rings import Fate, Notification
from edgebell.tokens import Suppression, TokenBook

__all__ = ["DeliveryReport", "Dispatcher", "Feedback", "OutboxStatus", "Sender", "push_request"]

log = logging.getLogger(__name__)

# The longest wait between two attempts to reach Apple again after an outage.
LINK_RETRY_MAX = 10.0

# Answers that prove Apple took our credentials.
_ACCEPTED = frozenset({Outcome.DELIVERED, Outcome.TOKEN_DEAD, Outcome.FAILED})

Collapse = Callable[[Notification, Notification], Notification]
"""``(older, newer) -> older standing for both``: the notifier's collapsed push."""


class Sender(Protocol):
    """What the dispatcher needs of the APNs client."""

    async def send(self, request: PushRequest) -> PushResult: ...

    async def connect(self, env: Environment) -> None: ...


def push_request(n: Notification, topic: str) -> PushRequest:
    """The APNs request for ``n``: one place, so rings and test pushes reach Apple alike."""
    return PushRequest(
        token=n.token,
        environment=Environment(n.env),
        topic=topic,
        payload=n.payload,
        apns_id=n.apns_id,
        collapse_id=n.collapse_id,
        expiration=int(n.expires_at),
    )


@dataclass(frozen=True, slots=True)
class Feedback:
    """A token Apple called dead: published on ``P/feedback``."""

    token: str = field(repr=False)
    status: int
    reason: str
    timestamp_ms: int | None
    ver: int | None


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    oldest_age_s: float | None
    in_flight: int
    expired: int
    auth_problem: str | None
    links: dict[str, bool]  # environment -> Apple answers (False: down or probing)
    collapsed: int = 0  # rings folded into an earlier undelivered push of the same button
    resent: int = 0  # pushes sent again after a transport failure (GOAWAY, reset, timeout)


@dataclass(slots=True, eq=False)
class _Row:
    notification: Notification
    urgent: bool  # a fresh ring: first in line when the link comes back
    attempts: int = 0
    failures: int = 0  # Apple's 5xx answers so far: the row's own backoff
    renewed: bool = False  # retried once already after ExpiredProviderToken
    not_before: float = 0.0
    on_wire: bool = False
    settled: bool = False
    rides: list[str] = field(default_factory=list)  # ring ids collapsed into this push
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> tuple[str, str]:
        return self.notification.token, self.notification.button


class Dispatcher:
    """Sends, retries and settles notifications; reports fates to the ledger and the cloud."""

    def __init__(
        self,
        *,
        sender: Sender,
        store: OutboxStore,
        tokens: TokenBook,
        topic: str,
        retry_min: float,
        retry_max: float,
        collapse: Collapse | None = None,
        on_feedback: Callable[[Feedback], None] = lambda _: None,
        on_report: Callable[[DeliveryReport], None] = lambda _: None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        interim_after: float = INTERIM_REPORT_AFTER,
    ) -> None:
        self._sender = sender
        self._store = store
        self._tokens = tokens
        self._topic = topic
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._collapse = collapse
        self._on_feedback = on_feedback
        self._clock = clock
        self._rng = rng or random.Random()
        self._ledger = Ledger(on_report, interim_after=interim_after)
        self._rows: dict[str, _Row] = {}
        self._keyed: dict[tuple[str, str], list[_Row]] = {}  # per (token, button), oldest first
        self._links: dict[str, Link] = {}
        self._token_backoff: dict[str, tuple[int, float]] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.expired_total = 0
        self.collapsed_total = 0
        self.resent_total = 0
        self.auth_problem: str | None = None

    # -- intake ------------------------------------------------------------------

    def submit(self, notifications: Sequence[Notification], *, persist: bool = True) -> None:
        """Start delivering a ring's notifications now; the disk write happens behind."""
        fresh: list[_Row] = []
        for n in notifications:
            self._ledger.expect(n.ring_id)
            target = self._collapse_target(n)
            if target is not None:
                self._absorb(target, n, stored=not persist)
                continue
            row = _Row(n, urgent=persist, attempts=n.attempts)
            self._rows[n.apns_id] = row
            self._keyed.setdefault(row.key, []).append(row)
            fresh.append(row)
        if persist and fresh:
            self._store.add([row.notification for row in fresh])
        for row in fresh:
            row.task = asyncio.create_task(self._run(row), name=f"push {row.notification.apns_id}")

    def resume(self, notifications: Iterable[Notification]) -> None:
        """Take over rows found in the database at start (already persisted), oldest first."""
        self.submit(sorted(notifications, key=lambda n: n.created_at), persist=False)

    def open_ring(self, ring_id: str) -> None:
        """A ring with nobody to notify still gets its (empty, final) delivery report."""
        self._ledger.empty_ring(ring_id)

    def purge_inactive(self) -> None:
        """Wake every row so that rows whose token left the list are dropped at once."""
        for row in self._rows.values():
            if not self._tokens.is_active(row.notification.token):
                row.wake.set()

    def wake_all(self) -> None:
        """Something changed that may let waiting rows through now (a new provider JWT)."""
        for row in self._rows.values():
            row.wake.set()

    def token_dead(self, n: Notification, result: PushResult) -> None:
        """Apple called a token dead outside the outbox (a test push): suppress and report it."""
        self._dead_token(n, result)

    def connect_failed(self, env: Environment, detail: str) -> None:
        """Apple could not be reached outside a push (at start): the link starts down."""
        self._link(env.value).connect_failed(detail)

    # -- offline collapse ----------------------------------------------------------------

    def _waiting(self, key: tuple[str, str], env: str) -> list[_Row]:
        """The rows of one phone and button that may collapse: not on the wire, not doomed.

        One on the wire may be on the phone right now, so it stays as it is (a later ring
        joins it only if that attempt fails, see _fold); an expired one must not come back.
        """
        return [
            row
            for row in self._keyed.get(key, ())
            if not row.on_wire
            and not row.settled
            and row.notification.env == env
            and self._doomed(row.notification) is None
        ]

    def _collapse_target(self, n: Notification) -> _Row | None:
        if self._collapse is None:
            return None
        waiting = self._waiting((n.token, n.button), n.env)
        return waiting[0] if waiting else None

    def _absorb(self, target: _Row, n: Notification, *, stored: bool) -> None:
        assert self._collapse is not None
        merged = self._collapse(target.notification, n)
        target.notification = merged
        target.rides.append(n.ring_id)
        self._store.collapse(merged)
        if stored:
            self._store.remove([n.apns_id])
        self.collapsed_total += n.rings
        log.info(
            "ring %s for %s collapsed into the waiting push of ring %s (%d rings)",
            n.ring_id[:8],
            short_token(n.token),
            merged.ring_id[:8],
            merged.rings,
        )
        # The newest ring must not wait out the older push's backoff: it goes now (or first).
        target.urgent = True
        target.not_before = 0.0
        target.wake.set()

    # -- one row's life ------------------------------------------------------------

    async def _run(self, row: _Row) -> None:
        try:
            while not self._closing and not row.settled:
                n = row.notification
                fate = self._doomed(n)
                if fate is not None:
                    self._settle(row, fate)
                    return
                now = self._clock()
                not_before = max(row.not_before, self._token_backoff.get(n.token, (0, 0.0))[1])
                if not_before > now:
                    await self._sleep(row, not_before - now, until=n.expires_at)
                    continue
                link = self._link(n.env)
                ticket = link.ticket(urgent=row.urgent)
                sent = False
                try:
                    if not ticket.done():
                        await self._await_ticket(row, ticket, until=n.expires_at)
                        if not ticket.done() or ticket.cancelled():
                            continue  # woken or expired: look again
                    n = row.notification  # it may stand for more rings by now
                    if self._closing or row.settled or self._doomed(n) is not None:
                        continue
                    sent = True
                    await self._attempt(row, n, link, probe=ticket.result())
                finally:
                    if not sent:
                        link.give_back(ticket)  # a probe nobody sends would block the link
        except asyncio.CancelledError:
            # Shutdown: the row stays in the database for the next start.
            self._forget(row)
            raise

    async def _attempt(self, row: _Row, n: Notification, link: Link, *, probe: bool) -> None:
        row.urgent = False
        row.on_wire = True
        try:
            result = await self._send(n)
        except Exception:
            # A bug, not an answer: keep the row (and the link's probe slot) alive.
            log.exception("sending the push to %s failed unexpectedly", short_token(n.token))
            link.inconclusive(probe=probe)
            row.failures += 1
            row.not_before = self._clock() + self._delay(row.failures)
            return
        finally:
            row.on_wire = False
        row.attempts += 1
        if result.outcome is Outcome.TRANSPORT:
            link.failed(result.detail or "no answer", probe=probe)
            if not self._closing:
                self.resent_total += 1
        elif result.status is None:
            link.inconclusive(probe=probe)
        else:
            link.answered(probe=probe)
        delay = self._handle(row, n, result)
        if delay is None:
            return
        self._store.set_attempts(n.apns_id, row.attempts)
        row.not_before = self._clock() + delay if delay > 0 else 0.0
        self._fold(row)

    def _fold(self, row: _Row) -> None:
        """Back from an attempt that failed: the phone's other waiting pushes of this button
        (rings that came while it was on the wire) become one with the oldest."""
        if self._collapse is None:
            return
        waiting = self._waiting(row.key, row.notification.env)
        if len(waiting) < 2:
            return
        target = waiting[0]
        for other in waiting[1:]:
            merged = self._collapse(target.notification, other.notification)
            target.notification = merged
            target.rides += [other.notification.ring_id, *other.rides]
            other.settled = True  # its task sees this and ends; its rings ride on the target
            self._forget(other)
            other.wake.set()
            self._store.collapse(merged)
            self._store.remove([other.notification.apns_id])
            self.collapsed_total += other.notification.rings
            if other.urgent:  # a ring never tried yet goes now, as it would have on its own
                target.urgent = True
                target.not_before = 0.0
                target.wake.set()
        log.info(
            "%d waiting pushes to %s for %s are now one (%d rings)",
            len(waiting),
            short_token(row.notification.token),
            row.notification.button,
            target.notification.rings,
        )

    def _doomed(self, n: Notification) -> Fate | None:
        if not self._tokens.is_active(n.token):
            return Fate.REMOVED
        if self._clock() >= n.expires_at:
            return Fate.EXPIRED
        return None

    async def _send(self, n: Notification) -> PushResult:
        request = push_request(n, self._topic)
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._sender.send(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _handle(self, row: _Row, n: Notification, result: PushResult) -> float | None:
        """Act on Apple's answer; the delay before the next attempt, or None when settled."""
        outcome = result.outcome
        if self.auth_problem is not None and outcome in _ACCEPTED:
            log.warning("APNs accepts our credentials again")
            self.auth_problem = None
        if outcome is Outcome.DELIVERED:
            self._token_backoff.pop(n.token, None)
            self._settle(row, Fate.DELIVERED)
            return None
        if outcome is Outcome.TOKEN_DEAD:
            self._dead_token(n, result)
            self._settle(row, Fate.FAILED)
            return None
        if outcome is Outcome.FAILED:
            log.error(
                "APNs refused the push to %s for ring %s for good: %s",
                short_token(n.token),
                n.ring_id[:8],
                result.detail or f"{result.status} {result.reason}",
            )
            self._settle(row, Fate.FAILED)
            return None
        if outcome is Outcome.TRANSPORT:
            return 0.0  # the link decides when to go again; this row waits for it
        if outcome is Outcome.RETRY_TOKEN:
            count = self._token_backoff.get(n.token, (0, 0.0))[0] + 1
            delay = self._delay(count)
            self._token_backoff[n.token] = (count, self._clock() + delay)
            return delay
        if outcome is Outcome.AUTH_RENEW and not row.renewed:
            row.renewed = True
            return 0.0  # the client has made a new JWT: once more straight away, then wait
        if outcome is Outcome.AUTH_REFUSED:
            problem = f"APNs refused our credentials: {result.status} {result.reason}"
            if self.auth_problem != problem:
                log.error("%s; pushes stay queued until the configuration is fixed", problem)
            self.auth_problem = problem
            return self._retry_max
        # 5xx, a JWT still refused after renewing, too many JWT updates: back off this row.
        row.failures += 1
        return self._delay(row.failures)

    def _dead_token(self, n: Notification, result: PushResult) -> None:
        status = result.status or 0
        reason = result.reason or "Unregistered"
        stamp = (
            result.timestamp_ms if result.timestamp_ms is not None else int(self._clock() * 1000)
        )
        self._tokens.suppress(n.token, Suppression(status, reason, stamp, n.env, self._topic))
        self._store.suppress(Suppressed(n.token, status, reason, stamp, n.env, self._topic))
        self._token_backoff.pop(n.token, None)
        log.warning(
            "APNs says token %s is dead (%s %s): no more pushes to it",
            short_token(n.token),
            status,
            reason,
        )
        self._on_feedback(Feedback(n.token, status, reason, result.timestamp_ms, n.ver))
        # Other queued rows to the same token settle as soon as they wake.
        for other in self._rows.values():
            if other.notification.token == n.token:
                other.wake.set()

    # -- waiting ---------------------------------------------------------------------

    async def _sleep(self, row: _Row, delay: float, *, until: float) -> None:
        """Sleep ``delay`` (never past the row's expiry) unless the row is woken."""
        delay = max(0.0, min(delay, until - self._clock()))
        row.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(row.wake.wait(), delay)

    async def _await_ticket(self, row: _Row, ticket: Ticket, *, until: float) -> None:
        """Wait for the link to let the row send, its wake-up call or its expiry."""
        row.wake.clear()
        woken: asyncio.Future[object] = asyncio.ensure_future(row.wake.wait())
        waited: set[asyncio.Future[object]] = {ticket, woken}  # type: ignore[arg-type]
        try:
            await asyncio.wait(
                waited,
                timeout=max(0.0, until - self._clock()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            woken.cancel()

    # -- links ---------------------------------------------------------------------------

    def _link(self, env: str) -> Link:
        link = self._links.get(env)
        if link is None:
            environment = Environment(env)

            async def connect() -> None:
                await self._sender.connect(environment)

            link = self._links[env] = Link(env, connect=connect, delay=self._link_delay)
        return link

    def _delay(self, attempt: int) -> float:
        return full_jitter(attempt, self._retry_min, self._retry_max, self._rng.random)

    def _link_delay(self, attempt: int) -> float:
        # A reconnect is one handshake, however many pushes wait: probing every few seconds
        # costs Apple nothing, and the pushes go out moments after the network is back
        # (while the visitor may still be at the door), not up to retry_max later.
        ceiling = min(self._retry_max, LINK_RETRY_MAX)
        return full_jitter(attempt, min(self._retry_min, ceiling), ceiling, self._rng.random)

    # -- settling ------------------------------------------------------------------------

    def _settle(self, row: _Row, fate: Fate) -> None:
        n = row.notification
        row.settled = True
        self._forget(row)
        self._store.remove([n.apns_id])
        if fate is Fate.EXPIRED:
            self.expired_total += row.notification.rings
            log.warning(
                "push to %s for ring %s expired undelivered%s",
                short_token(n.token),
                n.ring_id[:8],
                f" ({n.rings} rings)" if n.rings > 1 else "",
            )
        for ring_id in (n.ring_id, *row.rides):
            self._ledger.record(ring_id, fate)

    def _forget(self, row: _Row) -> None:
        n = row.notification
        self._rows.pop(n.apns_id, None)
        same = self._keyed.get(row.key)
        if same is not None:
            if row in same:
                same.remove(row)
            if not same:
                del self._keyed[row.key]

    # -- status and shutdown -----------------------------------------------------------------

    def status(self) -> OutboxStatus:
        now = self._clock()
        oldest = min((r.notification.created_at for r in self._rows.values()), default=None)
        return OutboxStatus(
            pending=len(self._rows),
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            in_flight=self._in_flight,
            expired=self.expired_total,
            auth_problem=self.auth_problem,
            links={env: link.state is LinkState.UP for env, link in self._links.items()},
            collapsed=self.collapsed_total,
            resent=self.resent_total,
        )

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Let pushes already on the wire finish (up to ``timeout``), then stop every row."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        tasks = [r.task for r in self._rows.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._links.values():
            await link.close()
        self._ledger.close()
