"""The durable queue of messages for the cloud: kept on disk until the broker acknowledges them.

Rings, delivery reports, feedback and command replies go through it in the order
they were made, whether the broker is reachable or not; a message leaves only when
the broker has acknowledged it (QoS 1), so a crash or an outage can repeat a message
but never loses or reorders one. Topics are stored as suffixes of ``P``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 10_000  # a gateway offline for weeks keeps the newest this many


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message waiting for the broker."""

    seq: int
    suffix: str
    payload: bytes = field(repr=False)


class OutgoingStore(Protocol):
    """Where the queue is kept (the outbox database)."""

    def add_outgoing(self, seq: int, suffix: str, payload: bytes) -> None: ...

    def remove_outgoing(self, seqs: Iterable[int]) -> None: ...


class OutgoingQueue:
    """In memory for speed, mirrored on disk (written behind) for durability."""

    def __init__(self, store: OutgoingStore, *, limit: int = DEFAULT_LIMIT) -> None:
        self._store = store
        self._limit = limit
        self._items: deque[Outgoing] = deque()
        self._next_seq = 1
        self.dropped = 0

    def restore(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Messages left from the last run (read from disk at start), oldest first."""
        for seq, suffix, payload in sorted(rows):
            self._items.append(Outgoing(seq, suffix, payload))
            self._next_seq = max(self._next_seq, seq + 1)

    def put(self, suffix: str, payload: bytes) -> None:
        item = Outgoing(self._next_seq, suffix, payload)
        self._next_seq += 1
        self._items.append(item)
        self._store.add_outgoing(item.seq, item.suffix, item.payload)
        if len(self._items) > self._limit:
            oldest = self._items.popleft()
            self._store.remove_outgoing([oldest.seq])
            if self.dropped == 0:
                log.warning(
                    "more than %d messages wait for the cloud: dropping the oldest", self._limit
                )
            self.dropped += 1

    def head(self, count: int) -> list[Outgoing]:
        return [self._items[i] for i in range(min(count, len(self._items)))]

    def done(self, items: Sequence[Outgoing]) -> None:
        """The broker acknowledged ``items`` (the head of the queue)."""
        seqs = {item.seq for item in items}
        while self._items and self._items[0].seq in seqs:
            self._items.popleft()
        self._store.remove_outgoing(seqs)

    def __len__(self) -> int:
        return len(self._items)
