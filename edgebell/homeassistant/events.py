"""The rings waiting for the home broker: kept until acknowledged, dropped once stale.

Pure: the caller passes the (monotonic) time. A doorbell that Home Assistant hears a
minute late would chime for nobody, so a ring older than ``max_age`` when the
broker is reachable again is counted and dropped, never sent in a burst.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from edgebell.rings import Ring

# A home broker down for a day must not grow memory without end: rings beyond this go.
QUEUE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Pending:
    """One ring and when it was queued (monotonic seconds: a clock step cannot age it)."""

    ring: Ring
    queued_at: float


class EventQueue:
    """Rings in order; ``head`` hands out fresh ones, ``done`` retires acknowledged ones."""

    def __init__(self, max_age: float, limit: int = QUEUE_LIMIT) -> None:
        self.max_age = max_age
        self._limit = limit
        self._items: deque[Pending] = deque()
        self.dropped_stale = 0
        self.dropped_full = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, ring: Ring, now: float) -> None:
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped_full += 1
        self._items.append(Pending(ring, now))

    def head(self, now: float, count: int) -> list[Pending]:
        """Up to ``count`` of the oldest events still fresh at ``now``; stale ones go first."""
        while self._items and now - self._items[0].queued_at > self.max_age:
            self._items.popleft()
            self.dropped_stale += 1
        return [self._items[i] for i in range(min(count, len(self._items)))]

    def done(self, batch: list[Pending]) -> None:
        """Retire ``batch`` (acknowledged by the broker), unless a drop already took it."""
        sent = {id(item) for item in batch}
        self._items = deque(item for item in self._items if id(item) not in sent)
