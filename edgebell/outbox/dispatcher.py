"""Drives every outbox notification to a final answer from Apple: send, retry, expire.

Each notification gets one small task that loops until its fate is settled.
Transport failures take a whole environment's link down; one reconnect loop per
environment probes Apple with backoff while the rows wait for the link, so a
dead network is not hammered by every queued row at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgebell.apns.model import Environment, Outcome, PushRequest, PushResult
from edgebell.backoff import Backoff, full_jitter
from edgebell.outbox.store import OutboxStore, Suppressed
from edgebell.privacy import short_token
from edgebell.rings import Fate, Notification
from edgebell.tokens import Suppression, TokenBook

log = logging.getLogger(__name__)

# A ring whose pushes are not all settled after this long gets an interim report.
INTERIM_REPORT_AFTER = 30.0
# Answers that prove Apple took our credentials.
_ACCEPTED = frozenset({Outcome.DELIVERED, Outcome.TOKEN_DEAD, Outcome.FAILED})


class Sender(Protocol):
    """What the dispatcher needs of the APNs client."""

    async def send(self, request: PushRequest) -> PushResult: ...

    async def connect(self, env: Environment) -> None: ...


@dataclass(frozen=True, slots=True)
class Feedback:
    """A token Apple called dead: published on ``P/feedback``."""

    token: str = field(repr=False)
    status: int
    reason: str
    timestamp_ms: int | None
    ver: int | None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A ring's fan-out so far: published on ``P/delivery``."""

    ring_id: str
    delivered: int
    failed: int
    queued: int
    expired: int
    removed: int
    final: bool


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    oldest_age_s: float | None
    in_flight: int
    expired: int
    auth_problem: str | None
    links: dict[str, bool]


@dataclass(slots=True)
class _Ledger:
    total: int
    counts: dict[Fate, int] = field(default_factory=lambda: dict.fromkeys(Fate, 0))
    interim: asyncio.TimerHandle | None = None

    @property
    def settled(self) -> int:
        return sum(self.counts.values())


class _Link:
    """Whether an environment's connection to Apple is believed to work."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.up.set()
        self.reconnecting: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Row:
    notification: Notification
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


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
        self._on_feedback = on_feedback
        self._on_report = on_report
        self._clock = clock
        self._rng = rng or random.Random()
        self._interim_after = interim_after
        self._rows: dict[str, _Row] = {}
        self._ledgers: dict[str, _Ledger] = {}
        self._links: dict[str, _Link] = {}
        self._token_backoff: dict[str, tuple[int, float]] = {}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.expired_total = 0
        self.auth_problem: str | None = None

    # -- intake ------------------------------------------------------------------

    def submit(self, notifications: Sequence[Notification], *, persist: bool = True) -> None:
        """Start delivering a ring's notifications now; the disk write happens behind."""
        if not notifications:
            return
        if persist:
            self._store.add(notifications)
        for n in notifications:
            ledger = self._ledgers.get(n.ring_id)
            if ledger is None:
                ledger = self._ledgers[n.ring_id] = _Ledger(total=0)
                loop = asyncio.get_running_loop()
                ledger.interim = loop.call_later(self._interim_after, self._interim, n.ring_id)
            ledger.total += 1
            row = self._rows[n.apns_id] = _Row(n)
            row.task = asyncio.create_task(self._run(row), name=f"push {n.apns_id[:8]}")

    def resume(self, notifications: Iterable[Notification]) -> None:
        """Take over rows found in the database at start (already persisted)."""
        self.submit(list(notifications), persist=False)

    def purge_inactive(self) -> None:
        """Wake every row so that rows whose token left the list are dropped at once."""
        for row in self._rows.values():
            if not self._tokens.is_active(row.notification.token):
                row.wake.set()

    # -- one row's life ------------------------------------------------------------

    async def _run(self, row: _Row) -> None:
        n = row.notification
        attempts = n.attempts
        renewed = False
        try:
            while not self._closing:
                fate = self._doomed(n)
                if fate is not None:
                    self._settle(row, fate)
                    return
                link = self._link(n.env)
                if not link.up.is_set():
                    await self._wait(row, link.up.wait(), until=n.expires_at)
                    continue
                not_before = self._token_backoff.get(n.token, (0, 0.0))[1]
                if not_before > self._clock():
                    await self._sleep(row, not_before - self._clock(), until=n.expires_at)
                    continue
                result = await self._send(n)
                attempts += 1
                delay = self._handle(row, result, attempts, renewed)
                if delay is None:
                    return
                renewed = result.outcome is Outcome.AUTH_RENEW
                self._store.set_attempts(n.apns_id, attempts)
                if delay > 0:
                    await self._sleep(row, delay, until=n.expires_at)
        except asyncio.CancelledError:
            # Shutdown: the row stays in the database for the next start.
            self._rows.pop(n.apns_id, None)
            raise

    def _doomed(self, n: Notification) -> Fate | None:
        if not self._tokens.is_active(n.token):
            return Fate.REMOVED
        if self._clock() >= n.expires_at:
            return Fate.EXPIRED
        return None

    async def _send(self, n: Notification) -> PushResult:
        request = PushRequest(
            token=n.token,
            environment=Environment(n.env),
            topic=self._topic,
            payload=n.payload,
            apns_id=n.apns_id,
            collapse_id=n.collapse_id,
            expiration=int(n.expires_at),
        )
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._sender.send(request)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _handle(self, row: _Row, result: PushResult, attempts: int, renewed: bool) -> float | None:
        """Act on Apple's answer; the delay before the next attempt, or None when settled."""
        n = row.notification
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
                "APNs refused the push to %s for ring %s for good: %s %s",
                short_token(n.token),
                n.ring_id[:8],
                result.status,
                result.reason,
            )
            self._settle(row, Fate.FAILED)
            return None
        if outcome is Outcome.TRANSPORT:
            if result.unprocessed and attempts <= 3:
                return 0.0  # Apple never saw it: resend at once on a fresh connection
            self._link_down(Environment(n.env), result.detail or "connection failed")
            return 0.0
        if outcome is Outcome.RETRY_TOKEN:
            count = self._token_backoff.get(n.token, (0, 0.0))[0] + 1
            delay = self._delay(count)
            self._token_backoff[n.token] = (count, self._clock() + delay)
            return delay
        if outcome is Outcome.AUTH_RENEW and not renewed:
            return 0.0  # the client has minted a new JWT; try once more straight away
        if outcome is Outcome.AUTH_REFUSED:
            problem = f"APNs refused our credentials: {result.status} {result.reason}"
            if self.auth_problem != problem:
                log.error("%s; pushes stay queued until the configuration is fixed", problem)
            self.auth_problem = problem
            return self._retry_max
        return self._delay(attempts)

    def _dead_token(self, n: Notification, result: PushResult) -> None:
        status = result.status or 0
        reason = result.reason or "Unregistered"
        stamp = (
            result.timestamp_ms if result.timestamp_ms is not None else int(self._clock() * 1000)
        )
        self._tokens.suppress(n.token, Suppression(status, reason, stamp))
        self._store.suppress(Suppressed(n.token, status, reason, stamp))
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
        delay = max(0.0, min(delay, until - self._clock()))
        await self._wait(row, asyncio.sleep(delay), until=until)

    async def _wait(self, row: _Row, awaitable: Awaitable[object], *, until: float) -> None:
        """Wait for ``awaitable``, the row's wake-up call or its expiry, whichever comes first."""
        row.wake.clear()
        waiter = asyncio.ensure_future(awaitable)
        woken = asyncio.ensure_future(row.wake.wait())
        timeout = max(0.0, until - self._clock())
        try:
            await asyncio.wait({waiter, woken}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            for f in (waiter, woken):
                if not f.done():
                    f.cancel()

    # -- links ---------------------------------------------------------------------------

    def _link(self, env: str) -> _Link:
        link = self._links.get(env)
        if link is None:
            link = self._links[env] = _Link()
        return link

    def _link_down(self, env: Environment, detail: str) -> None:
        link = self._link(env)
        if not link.up.is_set() or self._closing:
            return
        link.up.clear()
        log.warning("APNs %s unreachable (%s): pushes wait and retry", env.value, detail)
        link.reconnecting = asyncio.create_task(self._reconnect(env, link), name=f"apns-{env}")

    def _delay(self, attempt: int) -> float:
        return full_jitter(attempt, self._retry_min, self._retry_max, self._rng.random)

    async def _reconnect(self, env: Environment, link: _Link) -> None:
        backoff = Backoff(self._retry_min, self._retry_max, self._rng.random)
        while True:
            await asyncio.sleep(backoff.next())
            try:
                await self._sender.connect(env)
            except Exception as exc:
                log.debug("APNs %s still unreachable: %s", env.value, exc)
                continue
            log.info("APNs %s reachable again: sending what waited", env.value)
            link.up.set()
            return

    # -- settling and reporting ------------------------------------------------------------

    def _settle(self, row: _Row, fate: Fate) -> None:
        n = row.notification
        self._rows.pop(n.apns_id, None)
        self._store.remove([n.apns_id])
        if fate is Fate.EXPIRED:
            self.expired_total += 1
            log.warning(
                "push to %s for ring %s expired undelivered", short_token(n.token), n.ring_id[:8]
            )
        ledger = self._ledgers.get(n.ring_id)
        if ledger is None:
            return
        ledger.counts[fate] += 1
        if ledger.settled >= ledger.total:
            if ledger.interim is not None:
                ledger.interim.cancel()
            del self._ledgers[n.ring_id]
            self._report(n.ring_id, ledger, final=True)

    def open_ring(self, ring_id: str) -> None:
        """A ring with nobody to notify still gets its (empty, final) delivery report."""
        self._on_report(DeliveryReport(ring_id, 0, 0, 0, 0, 0, final=True))

    def _interim(self, ring_id: str) -> None:
        ledger = self._ledgers.get(ring_id)
        if ledger is not None:
            ledger.interim = None
            self._report(ring_id, ledger, final=False)

    def _report(self, ring_id: str, ledger: _Ledger, *, final: bool) -> None:
        c = ledger.counts
        report = DeliveryReport(
            ring_id=ring_id,
            delivered=c[Fate.DELIVERED],
            failed=c[Fate.FAILED],
            queued=ledger.total - ledger.settled,
            expired=c[Fate.EXPIRED],
            removed=c[Fate.REMOVED],
            final=final,
        )
        log.info(
            "ring %s: %d delivered, %d failed, %d queued, %d expired, %d removed%s",
            ring_id[:8],
            report.delivered,
            report.failed,
            report.queued,
            report.expired,
            report.removed,
            "" if final else " (still trying)",
        )
        self._on_report(report)

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
            links={env: link.up.is_set() for env, link in self._links.items()},
        )

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 - a grace period, not a deadline
        """Let pushes already on the wire finish (up to ``timeout``), then stop every row."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        tasks = [r.task for r in self._rows.values() if r.task is not None]
        tasks += [link.reconnecting for link in self._links.values() if link.reconnecting]
        for ledger in self._ledgers.values():
            if ledger.interim is not None:
                ledger.interim.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
