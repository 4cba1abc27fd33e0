"""Bounded logging from the event loop: a capped queue to the writer thread, repeats rate-limited.

Receiver noise at ``log_level: debug``, or a firmware that prints its banner in a
loop, makes records faster than journald takes them. Unbounded, the queue held
126 MB after 50 MB of noise; now it holds at most :data:`QUEUE_MAX` records, and a
line logged more than :data:`BURST` times a :data:`WINDOW` is counted instead of
written, so the noise never reaches the queue at all. Both counts are reported in
the log itself ("… dropped", "… more like this").
"""

from __future__ import annotations

import contextlib
import copy
import logging
import logging.handlers
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

QUEUE_MAX = 10_000  # records waiting for the writer thread
BURST = 20  # records of one kind let through per window
WINDOW = 60.0  # seconds
_MAX_KINDS = 1_000  # kinds tracked at once: the limiter's own memory is bounded too

log = logging.getLogger("edgebell.logs")


@dataclass(slots=True)
class _Kind:
    window_start: float
    count: int = 0
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """Lets through :data:`BURST` records of one kind (logger, level, message template) a window.

    Further ones are counted; the first record of the kind in a new window carries
    how many were held back (``… (and 312 more like this in the last 60 s)``).
    """

    def __init__(
        self,
        burst: int = BURST,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._window = window
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self.suppressed = 0  # since start, for every kind

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        kind = self._kinds.get(key)
        if kind is None or now - kind.window_start >= self._window:
            held = 0 if kind is None else kind.suppressed
            if kind is None and len(self._kinds) >= _MAX_KINDS:
                self._forget_old(now)
            self._kinds[key] = _Kind(now, 1)
            if held:
                _note_held_back(record, held, self._window)
            return True
        kind.count += 1
        if kind.count <= self._burst:
            return True
        kind.suppressed += 1
        self.suppressed += 1
        return False

    def _forget_old(self, now: float) -> None:
        expired = [k for k, v in self._kinds.items() if now - v.window_start >= self._window]
        for key in expired or list(self._kinds)[: _MAX_KINDS // 2]:
            del self._kinds[key]


def _note_held_back(record: logging.LogRecord, held: int, window: float) -> None:
    try:
        message = record.getMessage()
    except (TypeError, ValueError, KeyError):
        return  # the handler's filter words a record whose arguments do not fit
    record.msg = f"{message} (and {held} more like this in the last {window:.0f} s, not logged)"
    record.args = None


class BoundedQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that never blocks and never grows past its queue's ``maxsize``.

    A record that finds the queue full is dropped and counted; the next record that
    finds room is preceded by a warning that says how many were lost.
    """

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0  # since start
        self._unreported = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self._unreported:
                self.queue.put_nowait(self._drop_report())
                self._unreported = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._unreported += 1

    def _drop_report(self) -> logging.LogRecord:
        return log.makeRecord(
            log.name,
            logging.WARNING,
            __file__,
            0,
            "%d log records dropped: the log writer could not keep up",
            (self._unreported,),
            None,
        )

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The queue is in-process (nothing is pickled): keep the traceback apart from the
        # message, so the writer's filter can make the message one line and keep the
        # traceback's own lines (QueueHandler.prepare would glue them into the message).
        record = copy.copy(record)
        # Now, not in the writer thread: the arguments may change after this call. One that
        # does not fit is left for the writer's filter to word.
        with contextlib.suppress(TypeError, ValueError, KeyError):
            record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        return record
