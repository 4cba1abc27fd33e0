"""The bounded log queue and the repeat limiter."""

from __future__ import annotations

import logging
import queue

from edgebell.logqueue import BURST, BoundedQueueHandler, RepeatLimiter


def record(msg: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.getLogger("edgebell.test").makeRecord(
        "edgebell.test", level, __file__, 1, msg, args, None
    )


def test_a_repeated_line_is_let_through_burst_times_a_window_then_counted() -> None:
    now = [0.0]
    limiter = RepeatLimiter(window=60.0, clock=lambda: now[0])
    passed = [limiter.filter(record("banner %s", n)) for n in range(50_000)]
    assert sum(passed) == BURST
    assert limiter.suppressed == 50_000 - BURST
    assert limiter.filter(record("another line"))  # other kinds are not held back
    now[0] = 61.0
    nxt = record("banner %s", "again")
    assert limiter.filter(nxt)
    assert nxt.getMessage() == (
        f"banner again (and {50_000 - BURST} more like this in the last 60 s, not logged)"
    )


def test_the_limiter_tracks_a_bounded_number_of_kinds() -> None:
    limiter = RepeatLimiter(clock=lambda: 0.0)
    for n in range(5_000):
        assert limiter.filter(record(f"distinct {n}"))
    assert len(limiter._kinds) <= 1_000


def test_a_full_queue_drops_and_counts_then_says_so() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(5)
    handler = BoundedQueueHandler(records)
    for n in range(100):
        handler.handle(record("line %d", n))  # never blocks, whatever the writer does
    assert records.qsize() == 5
    assert handler.dropped == 95
    while not records.empty():
        records.get_nowait()
    handler.handle(record("after"))
    report, after = records.get_nowait(), records.get_nowait()
    assert report.levelno == logging.WARNING
    assert report.getMessage() == "95 log records dropped: the log writer could not keep up"
    assert after.getMessage() == "after"
