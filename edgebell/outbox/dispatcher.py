"""The delivery engine: drives every outbox notification to a final answer from Apple.

It is the one owner of "when do we try again", per push, per phone and per
connection; the APNs client below it makes one attempt per call and only reports.

- Rows (outbox notifications) are plain slotted objects in queues, not tasks: per
  environment, fresh rings first, then everything that must go again, in the order
  it came back (a push that failed goes to the back, so the oldest cannot hog the
  head of the line). Rows that wait for a time (a phone's 429 backoff, refused
  credentials, expiry while Apple is away) are filed in one :class:`Agenda` heap.
- The environment's :class:`Link` decides what may go out now: down, probing or up,
  a window of requests in flight (slow start after an abrupt loss) and a pause after
  5xx answers. A task exists only per request on the wire and per connect attempt.
- What Apple answers decides the row's next step (docs/design.md's table): 429 backs
  off that phone, 410 suppresses the token, 5xx pauses the environment (the row
  itself goes again as soon as the link allows: no push is parked for a minute).
- A new ring for a phone that still has an undelivered push of the same button
  collapses into it ("3 rings at Front door"), so an outage leaves one push per phone
  and button, not a pile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from edgebell.backoff import full_jitter
from edgebell.outbox.agenda import Agenda
from edgebell.outbox.ledger import INTERIM_REPORT_AFTER, DeliveryReport, Ledger
from edgebell.outbox.link import Link, LinkState
from edgebell.outbox.store import OutboxStore
from edgebell.privacy import short_token
from edgebell.rings import Fate, Notification
from edgebell.tokens import Suppression, TokenBook

__all__ = ["DeliveryReport", "Dispatcher", "Feedback", "OutboxStatus", "Sender", "push_request"]

log = logging.getLogger(__name__)

# The longest wait between two attempts to reach Apple again after an outage.
LINK_RETRY_MAX = 10.0

# 5xx answers in a row (no success between) that still count as Apple answering some
# pushes: the pause after each stays at retry_min. Half of all requests answered 503 gives
# five in a row one time in 32; only beyond this does the pause double, up to retry_max.
PAUSE_PATIENCE = 4

# Answers that prove Apple took our credentials.
_ACCEPTED = frozenset({Outcome.DELIVERED, Outcome.TOKEN_DEAD, Outcome.FAILED})

Collapse = Callable[[Notification, Notification], Notification]
"""``(older, newer) -> older standing for both``: the notifier's collapsed push."""


class Sender(Protocol):
    """What the dispatcher needs of the APNs client: one attempt per call, no retries.

    ``send`` never raises for Apple's answers or transport trouble (it returns a
    ``PushResult``); ``connect`` opens or health-checks an environment's connection and
    raises ``ApnsTransportError`` when Apple cannot be reached."""

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
    """One queued push: a few words of state beside its notification (no task, no event)."""

    notification: Notification
    urgent: bool  # a fresh ring (never tried): first in line, and it hurries a reconnect
    attempts: int = 0
    renewed: bool = False  # retried once already after ExpiredProviderToken
    on_wire: bool = False
    settled: bool = False
    where: int = 0  # _FRESH or _AGAIN while in a link's queue, else 0
    rides: list[str] | None = None  # ring ids collapsed into this push
    same: _Row | None = None  # the next newer row to the same token (any button)
    stamp: int = 0  # for the agenda
    filed: bool = False


_FRESH, _AGAIN = 1, 2


@dataclass(slots=True, eq=False)
class _Lane:
    """One environment: its link, its queues, and its one connect attempt."""

    env: Environment
    link: Link
    fresh: collections.deque[_Row] = field(default_factory=collections.deque)
    again: collections.deque[_Row] = field(default_factory=collections.deque)
    connect: asyncio.Task[None] | None = None
    expiry: float | None = None  # the earliest expiry of a row queued while Apple is away
    stamp: int = 0  # for the agenda: the link's next reconnect, end of pause or expiry
    filed: bool = False

    def next_row(self) -> _Row | None:
        for queue, where in ((self.fresh, _FRESH), (self.again, _AGAIN)):
            while queue:
                row = queue.popleft()
                if row.where == where and not row.settled:
                    row.where = 0
                    return row
        return None

    def waiting(self) -> bool:
        return any(r.where and not r.settled for q in (self.fresh, self.again) for r in q)

    def queued(self) -> list[_Row]:
        return [r for q in (self.fresh, self.again) for r in q if r.where and not r.settled]


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
        self._agenda: Agenda[_Row | _Lane] = Agenda(self._due, clock)
        self._rows: dict[str, _Row] = {}
        # Per token, its oldest row; each row links to the next newer one (rarely more than
        # one: a dict of lists would cost more than the rows' own state).
        self._by_token: dict[str, _Row] = {}
        self._lanes: dict[str, _Lane] = {}
        self._token_backoff: dict[str, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # requests on the wire, connect attempts
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
            self._link_row(row)
            fresh.append(row)
        if persist and fresh:
            self._store.add([row.notification for row in fresh])
        lanes = set()
        for row in fresh:
            lane = self._enqueue(row)
            if lane is not None:
                lanes.add(lane.env)
        for env in lanes:
            self._pump(self._lanes[env])

    def resume(self, notifications: Iterable[Notification]) -> None:
        """Take over rows found in the database at start (already persisted), oldest first."""
        self.submit(sorted(notifications, key=lambda n: n.created_at), persist=False)

    def open_ring(self, ring_id: str) -> None:
        """A ring with nobody to notify still gets its (empty, final) delivery report."""
        self._ledger.empty_ring(ring_id)

    def purge_inactive(self) -> None:
        """Drop at once the waiting rows whose token left the list."""
        for row in list(self._rows.values()):
            if not row.on_wire and not self._tokens.is_active(row.notification.token):
                self._settle(row, Fate.REMOVED)

    def wake_all(self) -> None:
        """Something changed that may let waiting rows through now (a new provider JWT)."""
        lanes = set()
        for row in list(self._rows.values()):
            if row.filed and not row.where and not row.on_wire:
                self._agenda.withdraw(row)
                lane = self._enqueue(row)
                if lane is not None:
                    lanes.add(lane.env)
        for env in lanes:
            self._pump(self._lanes[env])

    def token_dead(self, n: Notification, result: PushResult) -> None:
        """Apple called a token dead outside the outbox (a test push): suppress and report it."""
        self._dead_token(n, result)

    def connect_failed(self, env: Environment, detail: str) -> None:
        """Apple could not be reached outside a push (at start): the link starts down."""
        lane = self._lane(env.value)
        lane.link.connect_failed(self._clock(), detail)
        self._pump(lane)

    def connection_lost(self, env: Environment, reason: str, abrupt: bool) -> None:
        """The client's connection to ``env`` went away (GOAWAY, failed PING, reset):
        reconnect now, so the next ring finds it warm; ``abrupt``: requests on it died."""
        lane = self._lane(env.value)
        lane.link.lost(self._clock(), reason, abrupt=abrupt)
        self._pump(lane)

    # -- offline collapse ----------------------------------------------------------------

    def _link_row(self, row: _Row) -> None:
        head = self._by_token.get(row.notification.token)
        if head is None:
            self._by_token[row.notification.token] = row
            return
        while head.same is not None:
            head = head.same
        head.same = row

    def _same_token(self, token: str) -> Iterator[_Row]:
        row = self._by_token.get(token)
        while row is not None:
            yield row
            row = row.same

    def _waiting(self, key: tuple[str, str], env: str) -> list[_Row]:
        """The rows of one phone and button that may collapse: not on the wire, not doomed.

        One on the wire may be on the phone right now, so it stays as it is (a later ring
        joins it only if that attempt fails, see _fold); an expired one must not come back.
        """
        return [
            row
            for row in self._same_token(key[0])
            if row.notification.button == key[1]
            and not row.on_wire
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
        target.rides = [*(target.rides or ()), n.ring_id]
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
        self._hurry(target)

    def _hurry(self, row: _Row) -> None:
        row.urgent = True
        if row.where != _FRESH:
            self._agenda.withdraw(row)
            row.where = 0
            lane = self._enqueue(row)
            if lane is not None:
                self._pump(lane)

    def _fold(self, row: _Row) -> None:
        """Back from an attempt that failed: the phone's other waiting pushes of this button
        (rings that came while it was on the wire) become one with the oldest."""
        if self._collapse is None:
            return
        waiting = self._waiting(
            (row.notification.token, row.notification.button), row.notification.env
        )
        if len(waiting) < 2:
            return
        target = waiting[0]
        urgent = False
        for other in waiting[1:]:
            merged = self._collapse(target.notification, other.notification)
            target.notification = merged
            target.rides = [
                *(target.rides or ()),
                other.notification.ring_id,
                *(other.rides or ()),
            ]
            other.settled = True  # dropped from its queue when it comes up; rides on target
            self._agenda.withdraw(other)
            self._forget(other)
            self._store.collapse(merged)
            self._store.remove([other.notification.apns_id])
            self.collapsed_total += other.notification.rings
            urgent = urgent or other.urgent
        log.info(
            "%d waiting pushes to %s for %s are now one (%d rings)",
            len(waiting),
            short_token(row.notification.token),
            row.notification.button,
            target.notification.rings,
        )
        if urgent:  # a ring never tried yet goes now, as it would have on its own
            self._hurry(target)

    def _doomed(self, n: Notification) -> Fate | None:
        if not self._tokens.is_active(n.token):
            return Fate.REMOVED
        if self._clock() >= n.expires_at:
            return Fate.EXPIRED
        return None

    # -- the schedule ----------------------------------------------------------------------

    def _enqueue(self, row: _Row) -> _Lane | None:
        """Put ``row`` where it waits now: settled, filed for later, or in its link's queue."""
        if self._closing or row.settled or row.on_wire or row.where:
            return None  # already on its way
        n = row.notification
        fate = self._doomed(n)
        if fate is not None:
            self._settle(row, fate)
            return None
        now = self._clock()
        not_before = self._token_backoff.get(n.token, (0, 0.0))[1]
        if not_before > now:
            self._agenda.file(row, min(not_before, n.expires_at))
            return None
        lane = self._lane(n.env)
        if row.urgent:
            row.where = _FRESH
            lane.fresh.append(row)
            lane.link.hurry(now)
        else:
            row.where = _AGAIN
            lane.again.append(row)
        if lane.link.state is not LinkState.UP and (
            lane.expiry is None or n.expires_at < lane.expiry
        ):
            lane.expiry = n.expires_at  # a sweep settles what expires while Apple is away
        return lane

    def _due(self, item: _Row | _Lane) -> None:
        """The agenda's call: a row's wait is over (or it expired), or a link's timer."""
        if isinstance(item, _Lane):
            if item.expiry is not None and item.expiry <= self._clock():
                self._sweep(item)
            self._pump(item)
            return
        lane = self._enqueue(item)
        if lane is not None:
            self._pump(lane)

    def _sweep(self, lane: _Lane) -> None:
        """Settle the queued rows that expired (or lost their token) while Apple was away."""
        lane.expiry = None
        for row in lane.queued():
            fate = self._doomed(row.notification)
            if fate is not None:
                self._settle(row, fate)
            elif lane.expiry is None or row.notification.expires_at < lane.expiry:
                lane.expiry = row.notification.expires_at

    def _pump(self, lane: _Lane) -> None:
        """Send what the link allows now; file the link's next timer."""
        if self._closing:
            return
        link = lane.link
        now = self._clock()
        if link.due_to_connect(now):
            self._connect(lane)
        while link.may_send(now):
            row = lane.next_row()
            if row is None:
                break
            self._agenda.withdraw(row)
            n = row.notification
            fate = self._doomed(n)
            if fate is not None:
                self._settle(row, fate)
                continue
            if self._token_backoff.get(n.token, (0, 0.0))[1] > now:
                self._enqueue(row)
                continue
            seq, probe = link.sent()
            row.on_wire = True
            row.urgent = False
            self._spawn(self._attempt(row, n, lane, seq, probe), f"push {n.apns_id}")
        if link.state is not LinkState.UP and lane.expiry is None:
            self._sweep(lane)  # rows queued while it was up wait now: watch their expiry
        wake = None
        if link.state is LinkState.DOWN and not link.connecting:
            wake = link.reconnect_at
        elif link.state is LinkState.UP and link.paused_until > now and lane.waiting():
            wake = link.paused_until
        if lane.expiry is not None:
            wake = lane.expiry if wake is None else min(wake, lane.expiry)
        if wake is not None:
            self._agenda.file(lane, wake)

    def _spawn(self, coro: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _connect(self, lane: _Lane) -> None:
        lane.link.connecting = True
        self._spawn(self._reconnect(lane), f"connect {lane.env.value}")

    async def _reconnect(self, lane: _Lane) -> None:
        try:
            await self._sender.connect(lane.env)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            lane.link.connect_failed(self._clock(), str(exc))
            log.debug("APNs %s still unreachable: %s", lane.env.value, exc)
        else:
            lane.link.connected(waiting=lane.waiting())
        self._pump(lane)

    # -- one attempt -----------------------------------------------------------------------

    async def _attempt(
        self, row: _Row, n: Notification, lane: _Lane, seq: int, probe: bool
    ) -> None:
        link = lane.link
        try:
            result = await self._send(n)
        except asyncio.CancelledError:
            raise  # shutdown: the row stays in the database for the next start
        except Exception:
            # A bug, not an answer: keep the row (and the link's probe slot) alive.
            log.exception("sending the push to %s failed unexpectedly", short_token(n.token))
            row.on_wire = False
            link.local_failure(seq, probe=probe)
            self._agenda.file(row, self._clock() + self._delay(row.attempts + 1))
            self._pump(lane)
            return
        row.on_wire = False
        row.attempts += 1
        now = self._clock()
        outcome = result.outcome
        if outcome is Outcome.TRANSPORT:
            link.unanswered(
                seq,
                probe=probe,
                processed=not result.unprocessed,
                now=now,
                detail=result.detail or "no answer",
            )
            if not self._closing:
                self.resent_total += 1
        elif result.status is None:
            link.local_failure(seq, probe=probe)
        else:
            link.answered(
                seq,
                probe=probe,
                overloaded=outcome in (Outcome.RETRY, Outcome.AUTH_BACKOFF),
                now=now,
            )
        delay = self._handle(row, n, result)
        if delay is not None:
            self._store.set_attempts(n.apns_id, row.attempts)
            if delay > 0:
                self._agenda.file(row, min(now + delay, row.notification.expires_at))
            else:
                self._enqueue(row)
            self._fold(row)
        self._pump(lane)

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
        """Act on Apple's answer: the row's wait before it may go again (0: as soon as its
        link allows), or None when settled."""
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
        if outcome in (Outcome.TRANSPORT, Outcome.RETRY, Outcome.AUTH_BACKOFF):
            # The link decides when: it reconnects, or pauses the environment after a 5xx.
            return 0.0
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
        # A JWT still refused after renewing: back off this row.
        return self._delay(row.attempts)

    def _dead_token(self, n: Notification, result: PushResult) -> None:
        status = result.status or 0
        reason = result.reason or "Unregistered"
        stamp = (
            result.timestamp_ms if result.timestamp_ms is not None else int(self._clock() * 1000)
        )
        suppression = Suppression(n.token, status, reason, stamp, n.env, self._topic)
        self._tokens.suppress(suppression)
        self._store.suppress(suppression)
        self._token_backoff.pop(n.token, None)
        log.warning(
            "APNs says token %s is dead (%s %s): no more pushes to it",
            short_token(n.token),
            status,
            reason,
        )
        self._on_feedback(Feedback(n.token, status, reason, result.timestamp_ms, n.ver))
        # The token's other waiting pushes are dropped now, as rows of a removed token.
        for other in list(self._same_token(n.token)):
            fate = self._doomed(other.notification)
            if other.notification is not n and not other.on_wire and fate is not None:
                self._settle(other, fate)

    # -- links ---------------------------------------------------------------------------

    def _lane(self, env: str) -> _Lane:
        lane = self._lanes.get(env)
        if lane is None:
            link = Link(env, reconnect_delay=self._link_delay, pause_delay=self._pause_delay)
            lane = self._lanes[env] = _Lane(Environment(env), link)
        return lane

    def _delay(self, attempt: int) -> float:
        return full_jitter(attempt, self._retry_min, self._retry_max, self._rng.random)

    def _link_delay(self, attempt: int) -> float:
        # A reconnect is one handshake, however many pushes wait: probing every few seconds
        # costs Apple nothing, and the pushes go out moments after the network is back
        # (while the visitor may still be at the door), not up to retry_max later.
        ceiling = min(self._retry_max, LINK_RETRY_MAX)
        return full_jitter(attempt, min(self._retry_min, ceiling), ceiling, self._rng.random)

    def _pause_delay(self, strikes: int) -> float:
        # Apple overloaded: pause the environment. Short while Apple still answers some pushes
        # (strikes reset on a success), doubling up to retry_max while it answers nothing else.
        attempt = max(1, strikes - PAUSE_PATIENCE)
        return full_jitter(attempt, self._retry_min, self._retry_max, self._rng.random)

    # -- settling ------------------------------------------------------------------------

    def _settle(self, row: _Row, fate: Fate) -> None:
        if row.settled:
            return
        n = row.notification
        row.settled = True
        self._agenda.withdraw(row)
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
        for ring_id in (n.ring_id, *(row.rides or ())):
            self._ledger.record(ring_id, fate)

    def _forget(self, row: _Row) -> None:
        n = row.notification
        self._rows.pop(n.apns_id, None)
        token = n.token
        head = self._by_token.get(token)
        if head is row:
            if row.same is None:
                del self._by_token[token]
            else:
                self._by_token[token] = row.same
        else:
            while head is not None and head.same is not row:
                head = head.same
            if head is not None:
                head.same = row.same
        row.same = None

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
            links={env: lane.link.state is LinkState.UP for env, lane in self._lanes.items()},
            collapsed=self.collapsed_total,
            resent=self.resent_total,
        )

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Let pushes already on the wire finish (up to ``timeout``), then stop."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._agenda.close()
        self._ledger.close()
