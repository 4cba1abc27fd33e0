"""Per-ring tallies of how each push ended; the delivery report once a ring's fan-out settles."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from edgebell.rings import Fate

log = logging.getLogger(__name__)

# A ring whose pushes are not all settled after this long gets an interim report.
INTERIM_REPORT_AFTER = 30.0


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


@dataclass(slots=True)
class _Tally:
    total: int = 0
    counts: dict[Fate, int] = field(default_factory=lambda: dict.fromkeys(Fate, 0))
    interim: asyncio.TimerHandle | None = None

    @property
    def settled(self) -> int:
        return sum(self.counts.values())


class Ledger:
    """Counts each ring's pushes as they settle; reports when all have, and once after a while."""

    def __init__(
        self,
        on_report: Callable[[DeliveryReport], None],
        *,
        interim_after: float = INTERIM_REPORT_AFTER,
    ) -> None:
        self._on_report = on_report
        self._interim_after = interim_after
        self._tallies: dict[str, _Tally] = {}

    def expect(self, ring_id: str) -> None:
        """One more push of ``ring_id`` is on its way."""
        tally = self._tallies.get(ring_id)
        if tally is None:
            tally = self._tallies[ring_id] = _Tally()
            loop = asyncio.get_running_loop()
            tally.interim = loop.call_later(self._interim_after, self._interim, ring_id)
        tally.total += 1

    def record(self, ring_id: str, fate: Fate) -> None:
        tally = self._tallies.get(ring_id)
        if tally is None:
            return
        tally.counts[fate] += 1
        if tally.settled >= tally.total:
            if tally.interim is not None:
                tally.interim.cancel()
            del self._tallies[ring_id]
            self._report(ring_id, tally, final=True)

    def empty_ring(self, ring_id: str) -> None:
        """A ring with nobody to notify still gets its (empty, final) report."""
        self._on_report(DeliveryReport(ring_id, 0, 0, 0, 0, 0, final=True))

    def close(self) -> None:
        for tally in self._tallies.values():
            if tally.interim is not None:
                tally.interim.cancel()

    def _interim(self, ring_id: str) -> None:
        tally = self._tallies.get(ring_id)
        if tally is not None:
            tally.interim = None
            self._report(ring_id, tally, final=False)

    def _report(self, ring_id: str, tally: _Tally, *, final: bool) -> None:
        c = tally.counts
        report = DeliveryReport(
            ring_id=ring_id,
            delivered=c[Fate.DELIVERED],
            failed=c[Fate.FAILED],
            queued=tally.total - tally.settled,
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
