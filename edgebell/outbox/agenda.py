"""The engine's one clock: a heap of "look at this again at time t", one loop timer for all.

Ten thousand rows waiting out a backoff cost ten thousand heap entries (a tuple each),
not ten thousand tasks or timer handles. An entry is dropped lazily: each carries the
stamp its owner had when it was filed, and one whose owner has moved on since (sent,
settled, rescheduled) is skipped when it comes up; the heap is rebuilt when stale
entries outnumber live ones.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Stamped(Protocol):
    stamp: int  # bumped by the agenda whenever what was filed for the item is withdrawn
    filed: bool  # an entry for the item is live


T = TypeVar("T", bound=Stamped)


class Agenda(Generic[T]):
    """Calls ``on_due(item)`` once ``clock()`` reaches the time ``item`` was filed for."""

    def __init__(self, on_due: Callable[[T], None], clock: Callable[[], float]) -> None:
        self._on_due = on_due
        self._clock = clock
        self._heap: list[tuple[float, int, int, T]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._live = 0

    def __len__(self) -> int:
        return len(self._heap)

    def file(self, item: T, when: float) -> None:
        """Look at ``item`` again at ``when`` (seconds, as ``clock``), instead of any earlier
        time filed for it."""
        self.withdraw(item)
        item.filed = True
        heapq.heappush(self._heap, (when, next(self._order), item.stamp, item))
        self._live += 1
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [e for e in self._heap if e[3].stamp == e[2]]
            heapq.heapify(self._heap)
            self._live = len(self._heap)
        if when < self._timer_at:
            self._arm(when)

    def withdraw(self, item: T) -> None:
        """Forget the time filed for ``item``, if any."""
        if item.filed:
            item.stamp += 1
            item.filed = False
            self._live -= 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._live = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # The agenda keeps wall-clock times (rows expire by the wall clock); the loop's
        # timer wants its own clock: convert the delay.
        delay = max(0.0, when - self._clock())
        self._timer = loop.call_later(delay, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self._clock() + 0.001  # the loop's timer may fire a hair early by this clock
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            _, _, stamp, item = heapq.heappop(heap)
            if item.stamp == stamp and item.filed:
                item.filed = False
                self._live -= 1
                due.append(item)
        for item in due:
            self._on_due(item)
        # Skip stale heads so the timer is armed for a live entry.
        while heap and (heap[0][3].stamp != heap[0][2] or not heap[0][3].filed):
            heapq.heappop(heap)
        if heap and self._timer is None:
            self._arm(heap[0][0])
