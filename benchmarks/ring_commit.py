"""What accepting a ring costs the event loop: one ``OutboxStore.add`` commit (WAL, no fsync).

Times the commit of a ring's rows (1 and 20 phones) on a running store, the writer
thread up, each ring's rows deleted behind it as delivered rows would be.

    .venv/bin/python benchmarks/ring_commit.py [--rings 300]
"""

from __future__ import annotations

import argparse
import time

from common import scratch, summary

from edgebell.outbox.store import OutboxStore
from edgebell.rings import Notification, new_id


def _rows(count: int) -> list[Notification]:
    now = time.time()
    ring = new_id()
    return [
        Notification(
            new_id(), ring, "front", f"{i:02x}" * 32, "sandbox", ring, b"x" * 300, now, now + 900
        )
        for i in range(count)
    ]


def measure(rings: int, phones: int) -> dict[str, float]:
    store = OutboxStore(scratch("edgebell-commit-") / "outbox.sqlite3")
    store.open()
    store.start()
    samples = []
    try:
        for _ in range(rings):
            rows = _rows(phones)
            started = time.perf_counter_ns()
            store.add(rows)
            samples.append((time.perf_counter_ns() - started) / 1e6)
            store.remove(n.apns_id for n in rows)
            time.sleep(0.002)  # rings are apart; the writer deletes the last one meanwhile
    finally:
        store.close()
    return summary(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rings", type=int, default=300)
    args = parser.parse_args()
    for phones in (1, 20):
        result = measure(args.rings, phones)
        print(
            f"commit of one ring to {phones} phone(s): p50 {result['p50']} ms, "
            f"p99 {result['p99']} ms (min {result['min']}, max {result['max']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
